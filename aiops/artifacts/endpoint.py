"""`aiops deploy --model`: turn what the user names into the s3:// URI of the endpoint's model.

Accepted: an ``s3://bucket/key`` URI (deployed as it is); ``job:NAME`` (a SageMaker training job: its
model.tar.gz repacked with the job's ``sourcedir.tar.gz`` in ``code/``, as ``estimator.deploy()`` does,
uploaded under its content hash; see ``aiops.artifacts.repack``);
a local ``model.tar.gz`` or a local run folder holding one (``model.tar.gz`` or
``output/model.tar.gz``), which is uploaded to the stack's bucket under its content hash
(``aiops.artifacts.upload``).
AWS calls go through ``aiops.aws`` (standard retries, one-line errors).
Uncompressed: an ``s3://bucket/prefix/`` (ending in '/'; ``aiops.artifacts.s3prefix``), or a local
folder of model files (weights, no model.tar.gz), uploaded as a content-addressed prefix
(``aiops.artifacts.upload``).
A local run's name is accepted too (looked up in the runs folder; a remote run's record without a
downloaded archive stands for its ``job:NAME``).
On a stack whose container is an LLM container (``tgi``, ``lmi``), which loads a Hugging Face folder
and runs no ``code/``, a ``model.tar.gz`` (a job's or a local one) is unpacked and deployed as that
uncompressed folder instead, and a folder must hold ``config.json`` (`resolve_for_endpoint`).

A model.tar.gz cannot record its ``SAGEMAKER_PROGRAM``, so `choose` also works out the handler
script from the training code by the one rule (`aiops.artifacts.programs`): a job's ``sourcedir.tar.gz``
(its ``sagemaker_program`` / ``sagemaker_submit_directory`` hyperparameters), the archive's own
``code/``, else a run's source dir (its run.json). An s3:// URI, a prefix or a folder of model
files says nothing: the stack's ``endpoint.program`` is kept.

The GPU-fit check that comes first reads the stack's configuration, so it stays in infra
(``aiops.infra.fitcheck``: ``precheck``, ``resolve_for_endpoint``) and calls this.
"""

from __future__ import annotations

import gzip
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiops import names
from aiops.artifacts import programs
from aiops.artifacts.upload import is_weights_folder, upload
from aiops.errors import UsageError
from aiops.names import S3_URI
from aiops.run_folder import RunFolder
from aiops.runs import find_run, read_record
from aiops.stack import StackOutputs

#: a boto3 client by service name (``aws.client(service, region)`` unless a caller hands its own)
ClientFactory = Callable[[str], Any]

FORMS = (
    "an s3://bucket/key URI, an s3://bucket/prefix/ of model files, job:TRAINING_JOB_NAME, a local "
    "model.tar.gz, a run folder holding one, or a folder of model files"
)


def local_archive(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    if path.is_dir():
        found = RunFolder(path).local_model_archive()  # the SDK's output_path layout, as a run folder's
        if found is not None:
            return found
        if is_weights_folder(path):
            return None  # a folder of model files: deployed uncompressed (classify says 'folder')
        raise UsageError(
            f"--model {spec}: no model.tar.gz in that folder (looked for model.tar.gz, output/model.tar.gz) "
            f"and no weights (*.safetensors, *.bin, *.pt, *.pth) to deploy uncompressed"
        )
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                raise UsageError(f"--model {spec}: not a gzip archive; expected a model.tar.gz")
        return path
    return None


@dataclass
class ModelChoice:
    """What `aiops deploy --model` puts in the stack: the model's URI and, when the training code
    says, the handler script (``SAGEMAKER_PROGRAM``; None: keep the stack's ``endpoint.program``)."""

    uri: str
    program: str | None = None
    program_source: str | None = None  # where the program was read from, for the user
    warnings: list[str] = field(default_factory=list)
    note: str = ""  # what was done to the model (a job's model repacked with its code)
    size_bytes: int | None = None  # the model.tar.gz's size, when it was read


def classify(spec: str, *, runs_dir: Path | None = None) -> tuple[str, str]:
    """('s3', uri) | ('prefix', uri) | ('job', name) | ('local', path) | ('folder', path);
    UsageError for anything else. No cloud calls.

    With ``runs_dir``, a run's name is accepted too (a remote run without a local archive is its job)."""
    run = find_run(spec, runs_dir)  # a folder holding a run record, or a run's name
    if run is not None:
        info = read_record(run, strict=False)
        if info is not None and info.remote and run.local_model_archive() is None:
            return "job", info.job_name or run.name
        spec = str(run.root)
    if spec.startswith("s3://") and spec.endswith("/"):
        if not S3_URI.match(spec):
            raise UsageError(f"--model {spec!r}: malformed S3 prefix; expected s3://bucket/prefix/")
        return "prefix", spec
    if spec.startswith("s3://"):
        if not S3_URI.match(spec):
            raise UsageError(f"--model {spec!r}: malformed S3 URI; expected s3://bucket/key")
        return "s3", spec
    if spec.startswith("job:"):
        name = spec[4:]
        if not names.is_sagemaker_name(name):
            raise UsageError(f"--model {spec!r}: not a training job name")
        return "job", name
    path = local_archive(spec)
    if path is not None:
        return "local", str(path)
    if Path(spec).expanduser().is_dir():
        return "folder", str(Path(spec).expanduser())
    raise UsageError(f"--model {spec!r}: no such file or folder; expected {FORMS}")


def training_job_model(name: str, *, sagemaker: Any) -> str:
    from aiops import aws

    with aws.translate_errors(f"--model job:{name}: cannot describe that training job"):
        job = sagemaker.describe_training_job(TrainingJobName=name)
    status = job.get("TrainingJobStatus")
    uri = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if status != "Completed" or not uri:
        raise UsageError(f"--model job:{name}: the job is {status}; it has no model.tar.gz yet")
    return uri


def _hyperparameter(job: dict[str, Any], name: str) -> str | None:
    """A job's hyperparameter as the SDK encodes it (JSON strings: '"train.py"'), decoded."""
    raw = (job.get("HyperParameters") or {}).get(name)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


def training_job_program(
    name: str, *, sagemaker: Any, s3: Any, outputs: StackOutputs | None = None, stack: str | None = None
) -> ModelChoice:
    """A job's model URI and program, read from the code bundle the job ran (its sourcedir.tar.gz).

    With the stack's ``outputs``, the model is repacked with that bundle in its ``code/`` (as
    ``estimator.deploy()`` does) and the result uploaded to the stack's bucket under its content
    hash; the URI is then the repacked one. Without them only the program is read."""
    from aiops import aws

    uri = training_job_model(name, sagemaker=sagemaker)
    job = sagemaker.describe_training_job(TrainingJobName=name)
    entry = _hyperparameter(job, "sagemaker_program")
    bundle = _hyperparameter(job, "sagemaker_submit_directory")
    if not entry or not bundle or not S3_URI.match(bundle):
        return ModelChoice(
            uri,
            warnings=[
                f"job {name} has no sagemaker_program/sagemaker_submit_directory "
                "hyperparameters; the endpoint keeps the stack's endpoint.program"
            ],
        )
    bucket, key = names.split_s3_uri(bundle)  # matched S3_URI above
    try:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as err:
        if type(err).__module__.startswith(("botocore", "boto3")):
            described = aws.describe_aws_error(
                err,
                action=f"reading job {name}'s code bundle {bundle} "
                "(it names the endpoint's SAGEMAKER_PROGRAM)",
            )
            raise type(described)(
                str(described), hint=f"Or deploy {uri} and set aiops:endpoint.program."
            ) from None
        raise
    if outputs is not None:
        return repack_job_model(name, uri, data, entry, bundle, outputs=outputs, stack=stack, s3=s3)
    try:
        program = programs.program_in_tar(data, entry)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UsageError(
            f"--model job:{name}: its code bundle {bundle} is not a readable tar.gz ({err})"
        ) from None
    return ModelChoice(uri, program, bundle)


def repack_job_model(
    name: str,
    uri: str,
    bundle_data: bytes,
    entry: str,
    bundle: str,
    *,
    outputs: StackOutputs,
    stack: str | None,
    s3: Any,
) -> ModelChoice:
    """The job's model.tar.gz with its sourcedir.tar.gz unpacked into ``code/`` (`aiops.artifacts.repack`),
    uploaded under its content hash; the program is chosen over the resulting ``code/``. A model
    whose ``code/`` already holds the bundle is deployed as it is (no upload)."""
    import tempfile

    from aiops import aws
    from aiops.artifacts import repack

    stack_bucket = outputs.required(
        "bucket", stack=stack, needed_for=f"repacking --model job:{name} with its code"
    )
    code = repack.bundle_files(bundle_data, what=f"--model job:{name}: its code bundle {bundle}")
    bucket, key = names.split_s3_uri(uri)  # a training job's S3ModelArtifacts
    with tempfile.TemporaryDirectory(prefix="aiops-repack-") as tmp:
        model = Path(tmp) / "model.tar.gz"
        with aws.translate_errors(
            f"downloading job {name}'s model {uri} to repack it with its code",
            hint=f"Or deploy {uri} as it is (--model {uri}): nothing is repacked then.",
        ):
            s3.download_file(bucket, key, str(model))
        out = Path(tmp) / "repacked.tar.gz"
        result = repack.repack(model, code, out, what=f"--model job:{name}: {uri}")

        def read(rel: str) -> str | None:
            return code[rel].data.decode("utf-8", errors="replace") if rel in code else None

        program = programs.choose_program(set(result.code_files), entry, read)
        if not result.changed:
            return ModelChoice(
                uri,
                program,
                bundle,
                note=f"its code/ already holds job {name}'s code",
                size_bytes=model.stat().st_size,
            )
        new_uri = upload(out, bucket=stack_bucket, kms_key_arn=outputs.kms_key_arn, s3=s3)
        changes = f"{len(result.added)} file(s) added" + (
            f", {len(result.replaced)} replaced ({', '.join(result.replaced[:3])})" if result.replaced else ""
        )
        return ModelChoice(
            new_uri,
            program,
            bundle,
            size_bytes=out.stat().st_size,
            note=f"{uri} repacked with job {name}'s code into code/ ({changes}), as estimator.deploy() does",
        )


def _local_program(archive: Path, run: RunFolder | None) -> ModelChoice:
    """The program of a local archive: its own code/ decides; else the run's source dir (its record)."""
    info = read_record(run, strict=False) if run is not None else None
    entry = (
        info.script_name if info is not None else None
    )  # a single-script run: the script beside its folder
    source_dir = info.source_dir if info is not None else None
    choice = ModelChoice(uri="")
    try:
        in_archive = programs.scan_tar(archive, entry, prefix=programs.CODE_DIR + "/")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UsageError(f"--model {archive}: not a readable model.tar.gz ({err})") from None
    if in_archive.has_prefix:  # the code the endpoint will have decides
        choice.program = in_archive.program
        choice.program_source = f"{archive}:code/"
    elif source_dir and Path(source_dir).is_dir():
        choice.program = programs.program_in_dir(Path(source_dir), entry)
        choice.program_source = source_dir
        if choice.program is not None:
            choice.warnings.append(
                f"{archive} has no code/ folder, so the endpoint cannot find {choice.program} "
                "in it and serves with the container's default handlers; `aiops model "
                f"package {run.name if run else ''}` ships the code in the archive"
            )
    return choice


def choose(
    spec: str,
    *,
    outputs: StackOutputs | dict[str, Any],
    region: str,
    stack: str | None = None,
    clients: ClientFactory | None = None,
    runs_dir: Path | None = None,
) -> ModelChoice:
    """The model's s3:// URI and its program; uploads a local archive to the stack's bucket first.

    ``clients(service)`` returns a boto3 client (default: ``aiops.aws.client(service, region)``).
    """
    from aiops import aws

    kind, value = classify(spec, runs_dir=runs_dir)
    if kind in ("s3", "prefix"):
        return ModelChoice(value)
    if kind == "folder":
        raise UsageError(f"--model {spec}: a folder of model files is uploaded by `resolve_for_endpoint`")
    if not isinstance(outputs, StackOutputs):
        outputs = StackOutputs.model_validate(outputs)
    client = clients or (lambda service: aws.client(service, region))
    if kind == "job":
        return training_job_program(
            value, sagemaker=client("sagemaker"), s3=client("s3"), outputs=outputs, stack=stack
        )
    archive = Path(value)
    _check_local(spec, archive, outputs=outputs, stack=stack)
    choice = _local_program(archive, find_run(spec, runs_dir))
    bucket = outputs.required("bucket", stack=stack, needed_for=f"uploading --model {spec}")
    choice.uri = upload(archive, bucket=bucket, kms_key_arn=outputs.kms_key_arn, s3=client("s3"))
    return choice


def resolve(
    spec: str,
    *,
    outputs: StackOutputs | dict[str, Any],
    region: str,
    stack: str | None = None,
    clients: ClientFactory | None = None,
    runs_dir: Path | None = None,
) -> str:
    """The model's s3:// URI (see `choose`, which also gives its program)."""
    return choose(spec, outputs=outputs, region=region, stack=stack, clients=clients, runs_dir=runs_dir).uri


def _check_local(spec: str, value: Path, *, outputs: StackOutputs, stack: str | None) -> None:
    outputs.require("bucket", stack=stack, needed_for=f"uploading --model {spec}")
    with gzip.open(value, "rb") as fh:  # a truncated archive fails here, not at endpoint start
        try:
            fh.read(512)
        except (OSError, EOFError) as err:
            raise UsageError(f"--model {spec}: broken gzip archive: {err}") from None


def size_gb(n_bytes: int) -> float:
    """Decimal GB, rounded up to 0.1 (what endpoint.modelSizeGb holds)."""
    return max(0.1, -(-n_bytes // 100_000_000) / 10)
