"""`aiops deploy --model RUN_OR_JOB` sets the endpoint's SAGEMAKER_PROGRAM from the training code
(a model.tar.gz cannot record it): a job's sourcedir.tar.gz, a run's source dir, an archive's code/.
Real moto server; the resulting stack file planned under the Pulumi mocks, field by field."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from aiops.infra import fitcheck
from aiops.infra.automation import model_config
from aiops.infra.stack_file import load_stack_file

from aiops.artifacts import endpoint, programs
from aiops.errors import AiopsError, UsageError

from .conftest import merged

BUCKET = "stack-bucket"
TRAIN_WITH_MODEL_FN = (
    "import util\n\ndef model_fn(model_dir):\n    return util.load(model_dir)\n\n"
    "if __name__ == '__main__':\n    pass\n"
)
TRAIN_ONLY = "print('epoch=0; loss=1.0;')\n"


def _tar(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text if isinstance(text, bytes) else text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def account(aws_env):
    import boto3

    session = boto3.session.Session(region_name="us-east-1")
    s3 = session.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    key_arn = session.client("kms").create_key()["KeyMetadata"]["Arn"]
    return session, {"bucket": BUCKET, "kmsKeyArn": key_arn, "region": "us-east-1"}


MODEL = {"model.pt": b"weights"}  # what a job writes to /opt/ml/model (no code/)


def _job(
    session,
    name: str,
    bundle: dict[str, str],
    entry: str = "train.py",
    model: dict[str, str | bytes] | None = None,
) -> None:
    key = f"code/sha256/{name}/sourcedir.tar.gz"
    session.client("s3").put_object(Bucket=BUCKET, Key=key, Body=_tar(bundle))
    # the job's model.tar.gz where moto's ModelArtifacts names it (the platform writes it on SageMaker)
    session.client("s3").put_object(
        Bucket=BUCKET, Key=f"jobs/{name}/output/model.tar.gz", Body=_tar(model or MODEL)
    )
    session.client("sagemaker").create_training_job(
        TrainingJobName=name,
        HyperParameters={
            "sagemaker_program": json.dumps(entry),
            "sagemaker_submit_directory": json.dumps(f"s3://{BUCKET}/{key}"),
            "epochs": "3",
        },
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        RoleArn="arn:aws:iam::123456789012:role/r",
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/jobs"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )


def _planned_container(tmp_path: Path, choice: endpoint.ModelChoice) -> dict:
    """Write the stack file, apply what `deploy --model` sets, plan it: the model's container."""
    from aiops.infra.offline import plan

    path = tmp_path / "Pulumi.test.yaml"
    path.write_text(yaml.safe_dump({"config": merged()}))
    cfg = load_stack_file(path, overrides=model_config(choice.uri, program=choice.program))
    model = plan(cfg).one("aws:sagemaker/model:Model")
    return model.inputs["primaryContainer"]


def test_job_whose_training_script_defines_model_fn(account, tmp_path) -> None:
    session, outputs = account
    _job(session, "job-fn", {"train.py": TRAIN_WITH_MODEL_FN, "util.py": "def load(d):\n    return d\n"})
    choice = endpoint.choose("job:job-fn", outputs=outputs, region="us-east-1", clients=session.client)
    assert choice.program == "train.py" and choice.warnings == []
    assert choice.program_source == f"s3://{BUCKET}/code/sha256/job-fn/sourcedir.tar.gz"
    # repacked with the job's code (as estimator.deploy()), under its content hash
    assert choice.uri.startswith(f"s3://{BUCKET}/models/sha256/") and choice.uri.endswith("/model.tar.gz")
    assert model_config(choice.uri, program=choice.program) == {
        "aiops:endpoint.modelDataUrl": choice.uri,
        "aiops:endpoint.program": "train.py",
    }
    container = _planned_container(tmp_path, choice)
    assert container["modelDataUrl"] == choice.uri
    assert (
        container["image"] == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5.1-gpu-py311"
    )
    assert container["environment"] == {
        "SAGEMAKER_PROGRAM": "train.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": programs.SUBMIT_DIRECTORY,
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": "us-east-1",
    }
    assert programs.SUBMIT_DIRECTORY == "/opt/ml/model/code"


def test_job_with_inference_py_and_job_with_neither(account, tmp_path) -> None:
    session, outputs = account
    _job(
        session, "job-inf", {"train.py": TRAIN_WITH_MODEL_FN, "inference.py": "def model_fn(d):\n    pass\n"}
    )
    _job(session, "job-none", {"train.py": TRAIN_ONLY, "serve.py": "def model_fn(d):\n    pass\n"})
    with_inference = endpoint.choose(
        "job:job-inf", outputs=outputs, region="us-east-1", clients=session.client
    )
    assert with_inference.program == "inference.py"
    neither = endpoint.choose("job:job-none", outputs=outputs, region="us-east-1", clients=session.client)
    assert neither.program is None  # the training script has no model_fn: the stack's program stays
    assert model_config(neither.uri, program=None) == {"aiops:endpoint.modelDataUrl": neither.uri}
    assert _planned_container(tmp_path, neither)["environment"]["SAGEMAKER_PROGRAM"] == "inference.py"


def test_job_whose_code_bundle_is_gone_fails_naming_it(account) -> None:
    session, outputs = account
    _job(session, "job-gone", {"train.py": TRAIN_WITH_MODEL_FN})
    session.client("s3").delete_object(Bucket=BUCKET, Key="code/sha256/job-gone/sourcedir.tar.gz")
    with pytest.raises(
        AiopsError, match=r"code bundle s3://stack-bucket/code/sha256/job-gone/sourcedir.tar.gz"
    ) as err:
        endpoint.choose("job:job-gone", outputs=outputs, region="us-east-1", clients=session.client)
    assert "aiops:endpoint.program" in str(err.value) and "\n" not in str(err.value)


def _safetensors() -> bytes:
    """A real (tiny) safetensors file: the GPU-fit check reads its header."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return len(header).to_bytes(8, "little") + header + bytes(8)


def _run(
    runs: Path, name: str, source: Path, archive: dict[str, str | bytes], *, single: bool = False
) -> Path:
    run = runs / name
    (run / "output").mkdir(parents=True)
    (run / "output" / "model.tar.gz").write_bytes(_tar(archive))
    config = (
        {"entry_point": str(source / "train.py"), "source_dir": None}
        if single
        else {"entry_point": "train.py", "source_dir": str(source)}
    )
    (run / "run.json").write_text(
        json.dumps(
            {
                "job_name": name,
                "status": "Completed",
                "entry_point": "train.py",
                "source_dir": str(source),
                "config": config,
            }
        )
    )
    return run


def test_local_run_by_name_program_from_its_archive_code_or_its_source(account, tmp_path) -> None:
    session, outputs = account
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(TRAIN_WITH_MODEL_FN)
    runs = tmp_path / "runs"
    # packaged with its code (as `aiops model package RUN` writes it): the archive's code/ decides
    _run(
        runs,
        "run-packaged",
        source,
        {"model.pt": "w", "code/train.py": TRAIN_WITH_MODEL_FN, "code/util.py": ""},
    )
    packaged = endpoint.choose(
        "run-packaged", outputs=outputs, region="us-east-1", clients=session.client, runs_dir=runs
    )
    assert packaged.program == "train.py" and packaged.warnings == []
    assert packaged.uri.startswith(f"s3://{BUCKET}/models/sha256/")
    assert _planned_container(tmp_path, packaged)["environment"]["SAGEMAKER_PROGRAM"] == "train.py"
    # the bare model.tar.gz of a run: the run's source names the program, with a warning that the
    # archive does not carry the code
    _run(runs, "run-bare", source, {"model.pt": "w"}, single=True)
    bare = endpoint.choose(
        str(runs / "run-bare"), outputs=outputs, region="us-east-1", clients=session.client
    )
    assert bare.program == "train.py" and bare.program_source == str(source)
    (warning,) = bare.warnings
    assert "no code/ folder" in warning and "aiops model package run-bare" in warning
    # a remote run whose archive was not downloaded stands for its job (its folder is its job's name)
    remote = runs / "train-remote-1"
    remote.mkdir()
    (remote / "run.json").write_text(json.dumps({"job_name": "train-remote-1", "remote": True}))
    assert (
        endpoint.classify("train-remote-1", runs_dir=runs)
        == endpoint.classify(str(remote))
        == ("job", "train-remote-1")
    )
    # a plain archive with an inference.py in code/
    plain = tmp_path / "model.tar.gz"
    plain.write_bytes(_tar({"model.pt": "w", "code/inference.py": "def model_fn(d):\n    pass\n"}))
    assert (
        endpoint.choose(str(plain), outputs=outputs, region="us-east-1", clients=session.client).program
        == "inference.py"
    )


def test_the_rule_is_one_for_serve_and_deploy(tmp_path) -> None:
    (tmp_path / "train.py").write_text(TRAIN_WITH_MODEL_FN)
    bundle = _tar({"train.py": TRAIN_WITH_MODEL_FN})
    assert (
        programs.program_in_dir(tmp_path, "train.py")
        == programs.program_in_tar(bundle, "train.py")
        == "train.py"
    )
    (tmp_path / "train.py").write_text(
        "def model_fn_not(d):\n    pass\nclass X:\n    def model_fn(self):\n        pass\n"
    )
    assert programs.program_in_dir(tmp_path, "train.py") is None  # only a top-level function counts
    (tmp_path / "inference.py").write_text("")
    assert programs.program_in_dir(tmp_path, "train.py") == "inference.py"


def test_infra_reads_the_rule_without_inference_or_training_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import aiops.artifacts.endpoint, aiops.infra.fitcheck, aiops.infra.automation; "
        "print([m for m in sys.modules if m.split('.')[:2] in (['aiops', 'inference'], ['aiops', 'training'])"
        " or m.split('.')[0] == 'torch'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_deploy_path_resolve_model_carries_the_program_and_size(account, tmp_path, make_config) -> None:
    """What `aiops deploy --model RUN` runs: precheck (by run name), resolve_for_endpoint, the stack keys."""
    session, outputs = account
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(TRAIN_WITH_MODEL_FN)
    runs = tmp_path / "runs"
    _run(runs, "run-1", source, {"model.safetensors": _safetensors(), "code/train.py": TRAIN_WITH_MODEL_FN})
    cfg = make_config()
    fitcheck.precheck("run-1", cfg=cfg, region="us-east-1", clients=session.client, runs_dir=runs)
    resolved = fitcheck.resolve_for_endpoint(
        "run-1", cfg=cfg, outputs=outputs, region="us-east-1", clients=session.client, runs_dir=runs
    )
    assert resolved.program == "train.py" and resolved.uri.startswith(f"s3://{BUCKET}/models/sha256/")
    keys = model_config(resolved.uri, resolved.size_gb, resolved.program)
    assert (
        keys["aiops:endpoint.program"] == "train.py" and keys["aiops:endpoint.modelDataUrl"] == resolved.uri
    )
    _job(session, "job-2", {"train.py": TRAIN_WITH_MODEL_FN})
    by_job = fitcheck.resolve_for_endpoint(
        "job:job-2", cfg=cfg, outputs=outputs, region="us-east-1", clients=session.client
    )
    assert (
        by_job.program == "train.py" and by_job.size_gb == 0.1
    )  # the repacked archive, read: 0.1 GB minimum
    assert "repacked with job job-2's code into code/ (1 file(s) added)" in by_job.note
    with pytest.raises(UsageError, match="no such file or folder"):
        endpoint.classify("run-1")  # a run's name needs the runs folder


def _members(session, uri: str) -> dict[str, bytes]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    body = session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def _model_keys(session) -> list[str]:
    listed = session.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="models/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_job_model_is_repacked_with_the_jobs_code(account, tmp_path) -> None:
    """estimator.deploy(): the job's sourcedir.tar.gz unpacked into the model's code/, same-named
    files replaced, the rest of the model untouched; uploaded once under its content hash."""
    import hashlib

    session, outputs = account
    bundle = {
        "inference.py": "import util\n\ndef model_fn(d):\n    return util.load(d)\n",
        "util.py": "def load(d):\n    return d\n",
        "lib/extra.py": "X = 1\n",
        "train.py": TRAIN_ONLY,
    }
    model = {
        "model.pt": b"\x00weights\x01",
        "code/inference.py": "def model_fn(d):\n    return 'old'\n",
        "code/notes.txt": "written by the training script\n",
    }
    _job(session, "job-repack", bundle, model=model)
    choice = endpoint.choose("job:job-repack", outputs=outputs, region="us-east-1", clients=session.client)
    members = _members(session, choice.uri)
    assert members == {
        "model.pt": b"\x00weights\x01",  # the weights, byte for byte
        "code/notes.txt": b"written by the training script\n",  # the model's own code/ files stay
        "code/inference.py": bundle["inference.py"].encode(),  # the bundle's version wins, as the SDK's
        "code/util.py": bundle["util.py"].encode(),
        "code/lib/extra.py": b"X = 1\n",
        "code/train.py": TRAIN_ONLY.encode(),
    }
    bucket, _, key = choice.uri[len("s3://") :].partition("/")
    body = session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert key == f"models/sha256/{hashlib.sha256(body).hexdigest()}/model.tar.gz"
    head = session.client("s3").head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == outputs["kmsKeyArn"]
    assert choice.program == "inference.py"
    assert "3 file(s) added, 1 replaced (inference.py)" in choice.note and "estimator.deploy()" in choice.note
    container = _planned_container(tmp_path, choice)
    assert container["modelDataUrl"] == choice.uri
    assert container["environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert (
        container["environment"]["SAGEMAKER_SUBMIT_DIRECTORY"]
        == programs.SUBMIT_DIRECTORY
        == "/opt/ml/model/code"
    )
    # deploying the same job again: the same bytes, the same key, nothing uploaded twice
    again = endpoint.choose("job:job-repack", outputs=outputs, region="us-east-1", clients=session.client)
    assert again.uri == choice.uri and _model_keys(session) == [key]


def test_job_model_that_already_holds_its_code_is_deployed_as_is(account) -> None:
    session, outputs = account
    bundle = {"train.py": TRAIN_WITH_MODEL_FN, "util.py": "def load(d):\n    return d\n"}
    _job(session, "job-same", bundle, model={"model.pt": b"w", **{f"code/{k}": v for k, v in bundle.items()}})
    choice = endpoint.choose("job:job-same", outputs=outputs, region="us-east-1", clients=session.client)
    assert choice.uri == f"s3://{BUCKET}/jobs/job-same/output/model.tar.gz" and choice.program == "train.py"
    assert "already holds" in choice.note and _model_keys(session) == []


def test_repack_refusals_are_one_line_and_upload_nothing(account) -> None:
    session, outputs = account
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../outside.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    _job(
        session, "job-evil", {"train.py": TRAIN_WITH_MODEL_FN}
    )  # then its bundle swapped for one with a ../ entry
    session.client("s3").put_object(
        Bucket=BUCKET, Key="code/sha256/job-evil/sourcedir.tar.gz", Body=evil.getvalue()
    )
    with pytest.raises(
        UsageError, match=r"entry '../outside.py' leaves the code folder; not repacked"
    ) as err:
        endpoint.choose("job:job-evil", outputs=outputs, region="us-east-1", clients=session.client)
    assert "\n" not in str(err.value)
    _job(session, "job-no-model", {"train.py": TRAIN_WITH_MODEL_FN})
    session.client("s3").delete_object(Bucket=BUCKET, Key="jobs/job-no-model/output/model.tar.gz")
    with pytest.raises(
        AiopsError, match=r"downloading job job-no-model's model s3://stack-bucket/jobs/job-no-model"
    ):
        endpoint.choose("job:job-no-model", outputs=outputs, region="us-east-1", clients=session.client)
    with pytest.raises(AiopsError, match=r"no output 'bucket'.*aiops deploy --stack prod"):
        endpoint.choose(
            "job:job-no-model",
            outputs={"region": "us-east-1"},
            region="us-east-1",
            stack="prod",
            clients=session.client,
        )
    assert _model_keys(session) == []


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
def test_a_link_member_of_a_jobs_model_is_refused_not_repacked(account, kind) -> None:
    """A model.tar.gz whose tokenizer.json is a link to the host's AWS credentials: copied as it is,
    the endpoint would unpack the link. One line; nothing uploaded."""
    session, outputs = account
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        weights = tarfile.TarInfo("model.pt")
        weights.size = 1
        tar.addfile(weights, io.BytesIO(b"w"))
        link = tarfile.TarInfo("tokenizer.json")
        link.type, link.linkname = kind, "/root/.aws/credentials"
        tar.addfile(link)
    _job(session, "job-link", {"train.py": TRAIN_WITH_MODEL_FN})  # then its model swapped for one with a link
    session.client("s3").put_object(
        Bucket=BUCKET, Key="jobs/job-link/output/model.tar.gz", Body=evil.getvalue()
    )
    refusal = r"entry 'tokenizer.json' is a link, device or sparse file; not repacked"
    with pytest.raises(UsageError, match=refusal) as err:
        endpoint.choose("job:job-link", outputs=outputs, region="us-east-1", clients=session.client)
    assert "\n" not in str(err.value)
    assert _model_keys(session) == []
