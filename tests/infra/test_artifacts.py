"""`deploy --model`: resolving artifacts, uploads under the content hash (real moto server)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest

from aiops.artifacts import endpoint
from aiops.errors import UsageError


def make_archive(path, payload=b"weights"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("model.pt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def test_classify(tmp_path):
    assert endpoint.classify("s3://my-bucket/models/model.tar.gz") == (
        "s3",
        "s3://my-bucket/models/model.tar.gz",
    )
    assert endpoint.classify("job:train-2026-01") == ("job", "train-2026-01")
    archive = make_archive(tmp_path / "model.tar.gz")
    assert endpoint.classify(str(archive)) == ("local", str(archive))
    run = tmp_path / "run"
    (run / "output").mkdir(parents=True)
    make_archive(run / "output" / "model.tar.gz")
    assert endpoint.classify(str(run)) == ("local", str(run / "output" / "model.tar.gz"))
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(UsageError, match="not a gzip archive"):
        endpoint.classify(str(tmp_path / "plain.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no model.tar.gz in that folder .* and no weights"):
        endpoint.classify(str(tmp_path / "empty"))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"x")
    assert endpoint.classify(str(tmp_path / "weights")) == ("folder", str(tmp_path / "weights"))
    assert endpoint.classify("s3://my-bucket/models/llama/") == ("prefix", "s3://my-bucket/models/llama/")
    with pytest.raises(UsageError, match="expected an s3://bucket/key URI"):
        endpoint.classify("nothing-here")


def test_local_model_needs_the_stack_bucket(tmp_path):
    archive = make_archive(tmp_path / "model.tar.gz")
    with pytest.raises(
        UsageError, match=r"stack 'prod' has no output 'bucket'.*aiops deploy --stack prod"
    ) as err:
        endpoint.resolve(str(archive), outputs={}, region="us-east-1", stack="prod", clients=object())
    assert err.value.exit_code == 2


def test_upload_under_content_hash(aws_env, tmp_path):
    import boto3

    session = boto3.session.Session(region_name="us-east-1")
    s3 = session.client("s3")
    kms = session.client("kms")
    key_arn = kms.create_key()["KeyMetadata"]["Arn"]
    s3.create_bucket(Bucket="stack-bucket")
    archive = make_archive(tmp_path / "model.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    outputs = {"bucket": "stack-bucket", "kmsKeyArn": key_arn}

    uri = endpoint.resolve(str(archive), outputs=outputs, region="us-east-1", clients=session.client)
    assert uri == f"s3://stack-bucket/models/sha256/{digest}/model.tar.gz"
    head = s3.head_object(Bucket="stack-bucket", Key=f"models/sha256/{digest}/model.tar.gz")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_arn
    etag = head["ETag"]
    # the same content again: same key, no second upload
    assert endpoint.resolve(str(archive), outputs=outputs, region="us-east-1", clients=session.client) == uri
    versions = s3.list_objects_v2(Bucket="stack-bucket")["KeyCount"]
    assert versions == 1 and s3.head_object(Bucket="stack-bucket", Key=uri.split("/", 3)[3])["ETag"] == etag


def test_training_job_model(aws_env):
    import boto3

    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.create_training_job(
        TrainingJobName="job-1",
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        RoleArn="arn:aws:iam::123456789012:role/r",
        OutputDataConfig={"S3OutputPath": "s3://out-bucket/jobs"},
        ResourceConfig={"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )
    uri = endpoint.training_job_model("job-1", sagemaker=sm)
    assert uri.startswith("s3://out-bucket/jobs") and uri.endswith("model.tar.gz")
    with pytest.raises(UsageError, match="cannot describe"):
        endpoint.training_job_model("no-such-job", sagemaker=sm)
