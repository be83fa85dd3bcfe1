"""The GPU-fit check of a stack's endpoint, before anything is created (`aiops preview --offline
--model`, `aiops deploy --model`): the model's tensor sizes against the instance type's GPUs; and the
model a deploy sets, resolved by `aiops.artifacts` once it passes (``precheck``, ``resolve_for_endpoint``).

The KV-cache budget comes from the endpoint's LLM settings when the model says its shape (a
Hugging Face ``config.json`` beside the weights): ``llm.maxTotalTokens`` x ``llm.maxBatchSize``
(1 when unset) tokens, in the serving dtype. The weights count in ``llm.dtype`` when set, else as
stored. One copy of the model spans the tensor-parallel GPUs (LMI, TGI: all by default), one GPU
with the PyTorch container (its model server runs a copy per GPU), all GPUs with a custom image.
A refusal is one ``UsageError`` line: need vs have, and the cheapest types that fit.

On a stack whose container is an LLM container (``tgi``, ``lmi``), which loads a Hugging Face folder
and runs no ``code/``, a ``model.tar.gz`` (a job's or a local one) is unpacked and deployed as that
uncompressed folder instead, and a folder must hold ``config.json`` (`resolve_for_endpoint`).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiops.infra.config import StackConfig

from aiops.errors import UsageError
from aiops.gpufit import Fit, KvCache, check_inference, inference_need, kv_shape_from_config
from aiops.stack import StackOutputs
from aiops.tensorstats import TensorStats, model_stats

if TYPE_CHECKING:
    from aiops.artifacts.endpoint import ClientFactory, ModelChoice

MAX_CONFIG_BYTES = 1 << 20  # a Hugging Face config.json is a few kB; a bigger one is not read


def local_config_json(path: Path) -> dict | None:
    """The model's ``config.json`` (at most MAX_CONFIG_BYTES): in the folder, or at the root of the
    archive; None when there is none, it is bigger, or it is not a JSON object."""
    path = Path(path)
    try:
        if path.is_dir() and (path / "config.json").is_file():
            with open(path / "config.json", "rb") as fh:
                return _config(fh.read(MAX_CONFIG_BYTES + 1))
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(path, "r:*") as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.removeprefix("./") == "config.json":
                        member_file = tar.extractfile(member)
                        return _config(member_file.read(MAX_CONFIG_BYTES + 1)) if member_file else None
    except (ValueError, OSError, tarfile.TarError, RecursionError):
        return None
    return None


def _config(data: bytes) -> dict | None:
    if len(data) > MAX_CONFIG_BYTES:
        return None
    config = json.loads(data)
    return config if isinstance(config, dict) else None


def endpoint_fit(cfg: StackConfig, stats: TensorStats, model_config: dict | None = None) -> Fit:
    ep = cfg.endpoint
    kv = None
    shape = kv_shape_from_config(model_config) if model_config else None
    if shape and ep.llm.max_total_tokens:
        layers, kv_heads, head_dim = shape
        kv = KvCache(
            layers=layers,
            kv_heads=kv_heads,
            head_dim=head_dim,
            max_tokens=ep.llm.max_total_tokens,
            batch=ep.llm.max_batch_size or 1,
            dtype=ep.llm.dtype or "fp16",
        )
    need = inference_need(stats, dtype=ep.llm.dtype, kv=kv, overhead=ep.gpu_fit.overhead)
    # LMI/TGI spread one copy over the tensor-parallel GPUs; the PyTorch and Hugging Face containers'
    # model servers load one copy per GPU; a custom image: all GPUs (its own business). An inference
    # component's copy sees only its acceleratorsPerCopy.
    ic = ep.inference_components
    per_copy = ic.accelerators_per_copy if ic.enabled else None
    gpus_used = {
        "pytorch": 1,
        "huggingface": 1,
        "lmi": ep.llm.tensor_parallel_degree or per_copy,
        "tgi": ep.llm.tensor_parallel_degree or per_copy,
    }.get(ep.container, per_copy)
    return check_inference(need, ep.instance_type, region=cfg.region, gpus_used=gpus_used)


def require_fit(cfg: StackConfig, stats: TensorStats, model_config: dict | None = None) -> Fit | None:
    """None when the check does not apply (off, serverless, no endpoint); else the fit, or
    UsageError (exit 2) with the one-line refusal."""
    ep = cfg.endpoint
    if not ep.enabled or not ep.gpu_fit.enabled or ep.serverless.enabled:
        return None
    fit = endpoint_fit(cfg, stats, model_config)
    if not fit.fits:
        raise UsageError(
            f"the model does not fit: it {fit.line()} (or set aiops:endpoint.gpuFit.enabled: false)"
        )
    return fit


def check_local_model(cfg: StackConfig, path: Path) -> Fit | None:
    """The fit of a local model (weights file, folder or model.tar.gz), read without its weights."""
    return require_fit(cfg, model_stats(Path(path)), local_config_json(Path(path)))


def precheck(
    spec: str,
    *,
    cfg: StackConfig,
    region: str,
    clients: ClientFactory | None = None,
    runs_dir: Path | None = None,
) -> Fit | None:
    """What `deploy --model` checks before anything is created (not even the stack's state): a
    local model's GPU fit; an S3 prefix's weights (empty or none: one line) and fit. Returns the
    Fit (or None when the check does not apply or cannot be made without a download)."""
    from aiops import aws
    from aiops.artifacts import s3prefix
    from aiops.artifacts.endpoint import classify

    kind, value = classify(spec, runs_dir=runs_dir)
    if kind in ("local", "folder"):
        return check_local_model(cfg, Path(value))
    if kind == "prefix":
        s3 = (clients or (lambda service: aws.client(service, region)))("s3")
        listing = s3prefix.list_prefix(s3, value)
        return require_fit(cfg, s3prefix.prefix_stats(s3, listing), s3prefix.prefix_config_json(s3, listing))
    return None


@dataclass(frozen=True)
class ResolvedModel:
    """What `deploy --model` resolved: the URI, the model's size (sets the start-up timeouts and
    the volume), and the GPU-fit verdict when the weights could be read (None otherwise)."""

    uri: str
    size_gb: float | None = None
    fit: Fit | None = None
    note: str = ""
    program: str | None = None  # SAGEMAKER_PROGRAM from the training code (None: keep the stack's)
    program_source: str | None = None
    warnings: tuple[str, ...] = ()


def resolve_for_endpoint(
    spec: str,
    *,
    cfg: StackConfig,
    outputs: StackOutputs | dict[str, Any],
    region: str,
    stack: str | None = None,
    clients: ClientFactory | None = None,
    runs_dir: Path | None = None,
) -> ResolvedModel:
    """Like `aiops.artifacts.endpoint.resolve`, for every form, with the GPU-fit check before anything
    is uploaded: a model that cannot fit stops here (UsageError, exit 2), nothing created or uploaded."""
    from aiops import aws
    from aiops.artifacts import s3prefix
    from aiops.artifacts.endpoint import choose, classify, size_gb

    kind, value = classify(spec, runs_dir=runs_dir)
    if not isinstance(outputs, StackOutputs):
        outputs = StackOutputs.model_validate(outputs)
    client = clients or (lambda service: aws.client(service, region))

    def with_program(choice: ModelChoice, gb: float | None, fit: Any, note: str = "") -> ResolvedModel:
        return ResolvedModel(
            choice.uri, gb, fit, note, choice.program, choice.program_source, tuple(choice.warnings)
        )

    container = cfg.endpoint.container
    if container in LLM_CONTAINERS and kind in ("job", "local"):
        return _unpacked_for_llm(spec, kind, value, cfg=cfg, outputs=outputs, stack=stack, client=client)
    if kind == "folder":
        if container in LLM_CONTAINERS:
            _require_hf_folder(spec, Path(value), container, what="that folder")
        return _upload_folder(spec, Path(value), cfg=cfg, outputs=outputs, stack=stack, s3=client("s3"))
    if kind == "local":
        path = Path(value)
        fit = check_local_model(cfg, path)  # refuses before the upload
        choice = choose(spec, outputs=outputs, region=region, stack=stack, clients=clients, runs_dir=runs_dir)
        return with_program(choice, size_gb(path.stat().st_size), fit)
    if kind == "prefix":
        s3 = client("s3")
        listing = s3prefix.list_prefix(s3, value)
        stats = s3prefix.prefix_stats(s3, listing)
        fit = require_fit(cfg, stats, s3prefix.prefix_config_json(s3, listing))
        return ResolvedModel(value, size_gb(listing.total_bytes), fit)
    choice = choose(spec, outputs=outputs, region=region, stack=stack, clients=clients, runs_dir=runs_dir)
    size = size_gb(choice.size_bytes) if choice.size_bytes is not None else None
    skipped = "GPU-fit check skipped: a remote model.tar.gz is not read"
    return with_program(choice, size, None, f"{choice.note}; {skipped}" if choice.note else skipped)


#: containers that load a Hugging Face folder from /opt/ml/model (HF_MODEL_ID) and run no code/
LLM_CONTAINERS = ("tgi", "lmi")


def _require_hf_folder(spec: str, folder: Path, container: str, *, what: str) -> None:
    if not (folder / "config.json").is_file():
        raise UsageError(
            f"--model {spec}: {what} holds no config.json; the {container} container serves a Hugging "
            "Face model folder (save_pretrained's output)",
            hint="Deploy a folder with config.json, the tokenizer and the weights, or serve this model "
            "with container: pytorch and a handler.",
        )


def _unpacked_for_llm(
    spec: str,
    kind: str,
    value: str,
    *,
    cfg: StackConfig,
    outputs: StackOutputs,
    stack: str | None,
    client: ClientFactory,
) -> ResolvedModel:
    """A model.tar.gz (a training job's output, or a local archive) for an LLM container: unpacked
    here and deployed as its files under their content hash (``ModelDataSource`` S3Prefix,
    ``CompressionType: None``), the SDK's uncompressed ``model_data``. TGI and LMI load the folder
    from ``HF_MODEL_ID=/opt/ml/model`` and run no ``code/``, so nothing is repacked; uncompressed,
    the endpoint downloads the files as they are instead of untarring the whole model at start."""
    import tempfile

    from aiops import aws, names
    from aiops.archive import ArchiveError, safe_extract
    from aiops.artifacts.endpoint import training_job_model

    container = cfg.endpoint.container
    with tempfile.TemporaryDirectory(prefix="aiops-llm-model-") as tmp:
        if kind == "job":
            source = training_job_model(value, sagemaker=client("sagemaker"))
            archive = Path(tmp) / "model.tar.gz"
            bucket, key = names.split_s3_uri(source)  # a training job's S3ModelArtifacts
            with aws.translate_errors(
                f"downloading job {value}'s model {source} to deploy its files uncompressed"
            ):
                client("s3").download_file(bucket, key, str(archive))
        else:
            archive, source = Path(value), value
        folder = Path(tmp) / "model"
        folder.mkdir()
        try:
            safe_extract(archive, folder)
        except (ArchiveError, tarfile.TarError, OSError, EOFError) as err:
            raise UsageError(f"--model {spec}: {source} is not a readable model.tar.gz ({err})") from None
        _require_hf_folder(spec, folder, container, what=source)
        resolved = _upload_folder(spec, folder, cfg=cfg, outputs=outputs, stack=stack, s3=client("s3"))
    note = f"{source} unpacked and deployed uncompressed for the {container} container (no code/ repack): "
    return replace(resolved, note=note + resolved.note)


def _upload_folder(
    spec: str, folder: Path, *, cfg: StackConfig, outputs: StackOutputs, stack: str | None, s3: Any
) -> ResolvedModel:
    """A folder of model files under its content-addressed prefix, after the GPU-fit check."""
    from aiops.artifacts import upload
    from aiops.artifacts.endpoint import size_gb

    fit = check_local_model(cfg, folder)  # refuses before the upload
    up = upload.upload_folder(
        folder,
        bucket=outputs.required("bucket", stack=stack, needed_for=f"uploading --model {spec}"),
        kms_key_arn=outputs.kms_key_arn,
        s3=s3,
        previous_uri=outputs.model_data_url,
    )
    note = f"{up.uploaded} file(s) uploaded, {up.copied} copied inside S3, {up.present} already there"
    return ResolvedModel(up.uri, size_gb(up.total_bytes), fit, note)
