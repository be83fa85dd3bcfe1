"""`aiops deploy --model`: turn what the user names into the s3:// URI of the endpoint's model.

Accepted: an ``s3://bucket/key`` URI; ``job:NAME`` (a SageMaker training job: its model.tar.gz);
a local ``model.tar.gz`` or a local run folder holding one (``model.tar.gz`` or
``output/model.tar.gz``), which is uploaded to the stack's bucket under its content hash
(``aiops.stack.S3Layout.model_key``: same content, same key, so uploads are idempotent).
AWS calls go through ``aiops.aws`` (standard retries, one-line errors).
Uncompressed (``infra/model_data.py``): an ``s3://bucket/prefix/`` (ending in '/'), or a local
folder of model files (weights, no model.tar.gz), uploaded as a content-addressed prefix.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiops.archive import file_sha256
from aiops.errors import UsageError
from aiops.s3objects import upload_once
from aiops.stack import LAYOUT, StackOutputs

S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(\S+)$")
FORMS = ("an s3://bucket/key URI, an s3://bucket/prefix/ of model files, job:TRAINING_JOB_NAME, a local "
         "model.tar.gz, a run folder holding one, or a folder of model files")


def model_key(digest: str) -> str:
    return LAYOUT.model_key(digest)


def local_archive(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in (path / "model.tar.gz", path / "output" / "model.tar.gz"):
            if candidate.is_file():
                return candidate
        from aiops.infra.model_data import is_weights_folder

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


def classify(spec: str) -> tuple[str, str]:
    """('s3', uri) | ('prefix', uri) | ('job', name) | ('local', path) | ('folder', path);
    UsageError for anything else. No cloud calls."""
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
        if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name):
            raise UsageError(f"--model {spec!r}: not a training job name")
        return "job", name
    path = local_archive(spec)
    if path is not None:
        return "local", str(path)
    if Path(spec).expanduser().is_dir():
        return "folder", str(Path(spec).expanduser())
    raise UsageError(f"--model {spec!r}: no such file or folder; expected {FORMS}")


def upload(path: Path, *, bucket: str, kms_key_arn: str | None, s3: Any) -> str:
    """Upload under the content hash (skipped when that key exists); SSE-KMS with the stack's key."""
    from aiops import aws

    key = model_key(file_sha256(path))
    try:
        return upload_once(s3, bucket, key, Path(path), kms_key=kms_key_arn, label="model").uri
    except Exception as err:  # 403, 5xx: one line naming the object and the fix
        if type(err).__module__.startswith(("botocore", "boto3", "s3transfer")):
            raise aws.describe_aws_error(err, action=f"uploading s3://{bucket}/{key}") from None
        raise


def training_job_model(name: str, *, sagemaker: Any) -> str:
    try:
        job = sagemaker.describe_training_job(TrainingJobName=name)
    except Exception as err:
        raise UsageError(f"--model job:{name}: cannot describe that training job: {err}") from None
    status = job.get("TrainingJobStatus")
    uri = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if status != "Completed" or not uri:
        raise UsageError(f"--model job:{name}: the job is {status}; it has no model.tar.gz yet")
    return uri


def resolve(spec: str, *, outputs: StackOutputs | dict[str, Any], region: str, stack: str | None = None,
            clients: Any | None = None) -> str:
    """The model's s3:// URI; uploads a local archive to the stack's bucket first.

    ``clients(service)`` returns a boto3 client (default: ``aiops.aws.client(service, region)``).
    """
    from aiops import aws

    kind, value = classify(spec)
    if kind == "s3":
        return value
    if not isinstance(outputs, StackOutputs):
        outputs = StackOutputs.model_validate(outputs)
    client = clients or (lambda service: aws.client(service, region))
    if kind == "job":
        return training_job_model(value, sagemaker=client("sagemaker"))
    outputs.require("bucket", stack=stack, needed_for=f"uploading --model {spec}")
    with gzip.open(value, "rb") as fh:  # a truncated archive fails here, not at endpoint start
        try:
            fh.read(512)
        except (OSError, EOFError) as err:
            raise UsageError(f"--model {spec}: broken gzip archive: {err}") from None
    return upload(Path(value), bucket=outputs.bucket, kms_key_arn=outputs.kms_key_arn, s3=client("s3"))


def precheck(spec: str, *, cfg: Any, region: str, clients: Any | None = None) -> Any:
    """What `deploy --model` checks before anything is created (not even the stack's state): a
    local model's GPU fit; an S3 prefix's weights (empty or none: one line) and fit. Returns the
    Fit (or None when the check does not apply or cannot be made without a download)."""
    from aiops import aws
    from aiops.infra import fitcheck, model_data

    kind, value = classify(spec)
    if kind in ("local", "folder"):
        return fitcheck.check_local_model(cfg, Path(value))
    if kind == "prefix":
        s3 = (clients or (lambda service: aws.client(service, region)))("s3")
        listing = model_data.list_prefix(s3, value)
        return fitcheck.require_fit(cfg, model_data.prefix_stats(s3, listing), model_data.prefix_config_json(s3, listing))
    return None


@dataclass(frozen=True)
class ResolvedModel:
    """What `deploy --model` resolved: the URI, the model's size (sets the start-up timeouts and
    the volume), and the GPU-fit verdict when the weights could be read (None otherwise)."""

    uri: str
    size_gb: float | None = None
    fit: Any = None
    note: str = ""


def resolve_model(spec: str, *, cfg: Any, outputs: StackOutputs | dict[str, Any], region: str,
                  stack: str | None = None, clients: Any | None = None) -> ResolvedModel:
    """Like ``resolve``, for every form, with the GPU-fit check before anything is uploaded:
    a model that cannot fit stops here (UsageError, exit 2), nothing created or uploaded."""
    from aiops import aws
    from aiops.infra import fitcheck, model_data

    kind, value = classify(spec)
    if not isinstance(outputs, StackOutputs):
        outputs = StackOutputs.model_validate(outputs)
    client = clients or (lambda service: aws.client(service, region))
    if kind in ("local", "folder"):
        path = Path(value)
        fit = fitcheck.check_local_model(cfg, path)  # refuses before the upload
        if kind == "local":
            uri = resolve(spec, outputs=outputs, region=region, stack=stack, clients=clients)
            return ResolvedModel(uri, model_data.size_gb(path.stat().st_size), fit)
        outputs.require("bucket", stack=stack, needed_for=f"uploading --model {spec}")
        up = model_data.upload_folder(path, bucket=outputs.bucket, kms_key_arn=outputs.kms_key_arn,
                                      s3=client("s3"), previous_uri=outputs.model_data_url)
        note = f"{up.uploaded} file(s) uploaded, {up.copied} copied inside S3, {up.present} already there"
        return ResolvedModel(up.uri, model_data.size_gb(up.total_bytes), fit, note)
    if kind == "prefix":
        s3 = client("s3")
        listing = model_data.list_prefix(s3, value)
        stats = model_data.prefix_stats(s3, listing)
        fit = fitcheck.require_fit(cfg, stats, model_data.prefix_config_json(s3, listing))
        return ResolvedModel(value, model_data.size_gb(listing.total_bytes), fit)
    uri = resolve(spec, outputs=outputs, region=region, stack=stack, clients=clients)
    return ResolvedModel(uri, None, None, "GPU-fit check skipped: a remote model.tar.gz is not read")
