"""Uncompressed model data against a real moto server: a folder uploaded under its tree digest,
unchanged files skipped or copied inside S3, prefixes checked for weights, safetensors headers
read with ranged GETs."""

from __future__ import annotations

import json
import struct

import pytest

from aiops.archive import file_sha256
from aiops.artifacts import s3prefix, upload
from aiops.artifacts.endpoint import size_gb
from aiops.errors import UsageError


def safetensors_bytes(shapes: dict[str, list[int]]) -> bytes:
    """A complete, valid safetensors file of zeros (F16)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + bytes(offset)


@pytest.fixture
def s3(aws_env):
    import boto3

    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="stack-bucket")
    return client


def make_folder(path, weights=b""):
    path.mkdir()
    (path / "model.safetensors").write_bytes(weights or safetensors_bytes({"w": [64, 32], "b": [32]}))
    (path / "config.json").write_text('{"num_hidden_layers": 2}')
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return path


def test_folder_upload_is_content_addressed_and_skips_unchanged_files(s3, tmp_path):
    folder = make_folder(tmp_path / "m")
    first = upload.upload_folder(folder, bucket="stack-bucket", kms_key_arn=None, s3=s3)
    assert first.uri.startswith("s3://stack-bucket/models/sha256/") and first.uri.endswith("/")
    assert (first.uploaded, first.copied, first.present) == (3, 0, 0)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="stack-bucket")["Contents"])
    prefix = first.uri.removeprefix("s3://stack-bucket/")
    assert keys == [prefix + "config.json", prefix + "model.safetensors", prefix + "tokenizer/vocab.txt"]
    head = s3.head_object(Bucket="stack-bucket", Key=prefix + "config.json")
    assert head["Metadata"]["sha256"] == file_sha256(folder / "config.json")
    # the same folder again: same prefix, nothing moves
    again = upload.upload_folder(folder, bucket="stack-bucket", kms_key_arn=None, s3=s3)
    assert again.uri == first.uri and (again.uploaded, again.copied, again.present, again.bytes_uploaded) == (
        0,
        0,
        3,
        0,
    )
    # one file changed: a new prefix; the weights and the tokenizer are copied inside S3, not uploaded
    (folder / "config.json").write_text('{"num_hidden_layers": 3}')
    changed = upload.upload_folder(
        folder, bucket="stack-bucket", kms_key_arn=None, s3=s3, previous_uri=first.uri
    )
    assert changed.uri != first.uri
    assert (changed.uploaded, changed.copied, changed.present) == (1, 2, 0)
    assert changed.bytes_uploaded == (folder / "config.json").stat().st_size
    new_prefix = changed.uri.removeprefix("s3://stack-bucket/")
    body = s3.get_object(Bucket="stack-bucket", Key=new_prefix + "model.safetensors")["Body"].read()
    assert body == (folder / "model.safetensors").read_bytes()
    copied_head = s3.head_object(Bucket="stack-bucket", Key=new_prefix + "model.safetensors")
    assert copied_head["Metadata"]["sha256"] == file_sha256(folder / "model.safetensors")


def test_uploads_use_the_stack_key(s3, tmp_path):
    import boto3

    kms = boto3.client("kms", region_name="us-east-1")
    key_arn = kms.create_key()["KeyMetadata"]["Arn"]
    up = upload.upload_folder(make_folder(tmp_path / "m"), bucket="stack-bucket", kms_key_arn=key_arn, s3=s3)
    head = s3.head_object(
        Bucket="stack-bucket", Key=up.uri.removeprefix("s3://stack-bucket/") + "model.safetensors"
    )
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_arn


def test_prefix_listing_and_ranged_header_reads(s3, tmp_path):
    up = upload.upload_folder(make_folder(tmp_path / "m"), bucket="stack-bucket", kms_key_arn=None, s3=s3)
    listing = s3prefix.list_prefix(s3, up.uri)
    assert len(listing.objects) == 3 and len(listing.weights) == 1 and listing.total_bytes == up.total_bytes
    stats = s3prefix.prefix_stats(s3, listing)
    assert stats.parameters == 64 * 32 + 32 and stats.bytes == 2 * stats.parameters
    assert size_gb(listing.total_bytes) == 0.1
    assert size_gb(13_476_831_232) == 13.5


def test_empty_prefix_and_prefix_without_weights_are_one_line(s3, tmp_path):
    with pytest.raises(UsageError, match=r"s3://stack-bucket/nothing/: the prefix is empty"):
        s3prefix.list_prefix(s3, "s3://stack-bucket/nothing/")
    s3.put_object(Bucket="stack-bucket", Key="models/x/config.json", Body=b"{}")
    with pytest.raises(UsageError, match="no weights under that prefix .* found 1 other file"):
        s3prefix.list_prefix(s3, "s3://stack-bucket/models/x/")
    folder = tmp_path / "nw"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="no weights in that folder"):
        upload.upload_folder(folder, bucket="stack-bucket", kms_key_arn=None, s3=s3)
    assert "Contents" not in s3.list_objects_v2(
        Bucket="stack-bucket", Prefix="models/sha256/"
    )  # nothing uploaded


def test_tree_digest_depends_on_paths_and_contents():
    a = upload.tree_digest([("a", "1"), ("b", "2")])
    assert a == upload.tree_digest([("b", "2"), ("a", "1")])
    assert a != upload.tree_digest([("a", "1"), ("c", "2")]) != upload.tree_digest([("a", "1"), ("b", "3")])


def test_deploy_model_resolution_checks_the_fit_before_uploading(s3, tmp_path, make_config):
    from aiops.infra import fitcheck
    from test_gpufit import llama7b_shapes, write_header_only

    outputs = {"bucket": "stack-bucket"}
    small = make_folder(tmp_path / "small")
    cfg = make_config(endpoint={"container": "lmi"})
    resolved = fitcheck.resolve_for_endpoint(str(small), cfg=cfg, outputs=outputs, region="us-east-1")
    assert resolved.uri.startswith("s3://stack-bucket/models/sha256/") and resolved.uri.endswith("/")
    assert resolved.size_gb == 0.1 and resolved.fit.fits and "3 file(s) uploaded" in resolved.note
    # the prefix it made is itself a valid --model, and reads the same sizes back
    again = fitcheck.resolve_for_endpoint(resolved.uri, cfg=cfg, outputs=outputs, region="us-east-1")
    assert again.uri == resolved.uri and again.fit.need.weights == resolved.fit.need.weights

    big = tmp_path / "big"
    big.mkdir()
    write_header_only(big / "model.safetensors", llama7b_shapes(), dtype="F32")  # 25.1 GiB x 1.2 > 24
    (big / "config.json").write_text("{}")  # an LLM container serves a Hugging Face folder
    before = s3.list_objects_v2(Bucket="stack-bucket")["KeyCount"]
    with pytest.raises(UsageError, match="the model does not fit: it needs 30.1 GiB"):
        fitcheck.resolve_for_endpoint(str(big), cfg=cfg, outputs=outputs, region="us-east-1")
    assert s3.list_objects_v2(Bucket="stack-bucket")["KeyCount"] == before  # nothing uploaded
    with pytest.raises(UsageError, match="the prefix is empty"):
        fitcheck.resolve_for_endpoint("s3://stack-bucket/none/", cfg=cfg, outputs=outputs, region="us-east-1")


def test_set_model_records_uri_and_size_in_the_stack_file(tmp_path, make_config):
    """What `deploy --model` writes (as `pulumi config set --path` does) validates as the endpoint's."""
    from aiops.infra.automation import set_model

    class Recorder:
        def __init__(self) -> None:
            self.values: dict[str, str] = {}

        def set_config(self, key, value, path=False):
            assert path is True
            self.values[key] = value.value

    stack = Recorder()
    set_model(stack, "s3://stack-bucket/models/sha256/abc/", size_gb=13.5)
    assert stack.values == {
        "aiops:endpoint.modelDataUrl": "s3://stack-bucket/models/sha256/abc/",
        "aiops:endpoint.modelSizeGb": "13.5",
    }
    cfg = make_config(
        endpoint={
            "modelDataUrl": stack.values["aiops:endpoint.modelDataUrl"],
            "modelSizeGb": stack.values["aiops:endpoint.modelSizeGb"],
        }
    )
    assert cfg.endpoint.model_size_gb == 13.5 and cfg.endpoint.uncompressed


def test_state_dict_sizes_read_from_s3_without_the_tensor_data(s3, tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 256)).half()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    size = (tmp_path / "pytorch_model.bin").stat().st_size
    s3.upload_file(str(tmp_path / "pytorch_model.bin"), "stack-bucket", "models/sd/pytorch_model.bin")
    s3.put_object(Bucket="stack-bucket", Key="models/sd/config.json", Body=b'{"num_hidden_layers": 2}')
    listing = s3prefix.list_prefix(s3, "s3://stack-bucket/models/sd/")
    stats = s3prefix.prefix_stats(s3, listing)
    assert stats.parameters == sum(p.numel() for p in model.parameters()) and stats.by_dtype == {
        "F16": stats.parameters
    }
    assert s3prefix.prefix_config_json(s3, listing) == {"num_hidden_layers": 2}
    # what the range reader fetched: the zip directory and the pickle, far less than the file
    reader = s3prefix.S3RangeFile(s3, "stack-bucket", "models/sd/pytorch_model.bin", size)
    import io
    import zipfile

    with zipfile.ZipFile(io.BufferedReader(reader, buffer_size=4096)) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")][0]
        archive.read(pkl)
    assert reader.requests <= 6 and size > 500_000


def test_precheck_refuses_empty_prefixes_and_models_that_do_not_fit(s3, tmp_path, make_config):
    from aiops.infra import fitcheck

    cfg = make_config(endpoint={"container": "tgi"})
    with pytest.raises(UsageError, match="the prefix is empty"):
        fitcheck.precheck("s3://stack-bucket/empty/", cfg=cfg, region="us-east-1")
    up = upload.upload_folder(make_folder(tmp_path / "m"), bucket="stack-bucket", kms_key_arn=None, s3=s3)
    assert fitcheck.precheck(up.uri, cfg=cfg, region="us-east-1").fits
    assert fitcheck.precheck("s3://stack-bucket/models/model.tar.gz", cfg=cfg, region="us-east-1") is None


def test_folder_upload_refuses_a_link_out_of_the_folder_and_uploads_nothing(s3, tmp_path):
    """`deploy --model FOLDER` chooses its files by the model-folder policy (`aiops.files`): a
    tokenizer.json linking to the host's AWS credentials is one line, and nothing reaches S3."""
    secret = tmp_path / ".aws" / "credentials"
    secret.parent.mkdir()
    secret.write_text("[default]\naws_secret_access_key = hunter2\n")
    folder = make_folder(tmp_path / "m")
    (folder / "tokenizer.json").symlink_to(secret)
    refusal = "tokenizer.json is a symlink to .*outside the --model folder"
    with pytest.raises(UsageError, match=refusal) as err:
        upload.upload_folder(folder, bucket="stack-bucket", kms_key_arn=None, s3=s3)
    assert "\n" not in str(err.value)
    assert s3.list_objects_v2(Bucket="stack-bucket").get("KeyCount") == 0


def test_an_llm_container_gets_a_model_tar_gz_unpacked_into_a_prefix(s3, tmp_path, make_config):
    """`deploy --model ARCHIVE` (or job:NAME) on a tgi|lmi stack: the archive's HF folder is deployed as
    its files under their content hash (the folder's own prefix), never as the tarball; an archive
    with no config.json is refused in one line before anything is uploaded."""
    import tarfile

    from aiops.infra import fitcheck

    outputs = {"bucket": "stack-bucket"}
    folder = make_folder(tmp_path / "hf")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    tgi = make_config(endpoint={"container": "tgi"})
    resolved = fitcheck.resolve_for_endpoint(str(archive), cfg=tgi, outputs=outputs, region="us-east-1")
    from_folder = fitcheck.resolve_for_endpoint(str(folder), cfg=tgi, outputs=outputs, region="us-east-1")
    assert resolved.uri.endswith("/") and resolved.uri == from_folder.uri
    assert "unpacked and deployed uncompressed for the tgi container" in resolved.note
    assert "3 file(s) uploaded" in resolved.note and "3 already there" in from_folder.note
    assert resolved.fit is not None and resolved.program is None
    # the handler container keeps the tarball (its code/ and handler contract)
    pytorch = make_config(endpoint={"container": "pytorch", "instanceType": "ml.g5.xlarge"})
    kept = fitcheck.resolve_for_endpoint(str(archive), cfg=pytorch, outputs=outputs, region="us-east-1")
    assert kept.uri.endswith("/model.tar.gz")

    (folder / "config.json").unlink()
    bare = tmp_path / "bare.tar.gz"
    with tarfile.open(bare, "w:gz") as tar:
        tar.add(folder / "model.safetensors", arcname="model.safetensors")
    before = s3.list_objects_v2(Bucket="stack-bucket")["KeyCount"]
    for spec in (bare, folder):
        with pytest.raises(UsageError, match="holds no config.json; the tgi container serves a Hugging Face"):
            fitcheck.resolve_for_endpoint(str(spec), cfg=tgi, outputs=outputs, region="us-east-1")
    assert s3.list_objects_v2(Bucket="stack-bucket")["KeyCount"] == before
