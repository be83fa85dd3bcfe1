"""The GPU-fit check of a stack's endpoint, before anything is created (`aiops preview --offline
--model`, `aiops deploy --model`): the model's tensor sizes against the instance type's GPUs.

The KV-cache budget comes from the endpoint's LLM settings when the model says its shape (a
Hugging Face ``config.json`` beside the weights): ``llm.maxTotalTokens`` x ``llm.maxBatchSize``
(1 when unset) tokens, in the serving dtype. The weights count in ``llm.dtype`` when set, else as
stored. One copy of the model spans the tensor-parallel GPUs (LMI, TGI: all by default), one GPU
with the PyTorch container (its model server runs a copy per GPU), all GPUs with a custom image.
A refusal is one ``UsageError`` line: need vs have, and the cheapest types that fit.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from aiops.infra.config import StackConfig

from aiops.errors import UsageError
from aiops.gpufit import Fit, KvCache, check_inference, inference_need, kv_shape_from_config
from aiops.tensorstats import TensorStats, model_stats

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
    # LMI/TGI spread one copy over the tensor-parallel GPUs; the PyTorch container's model server
    # loads one copy per GPU; a custom image: all GPUs (its own business)
    gpus_used = {
        "pytorch": 1,
        "lmi": ep.llm.tensor_parallel_degree,
        "tgi": ep.llm.tensor_parallel_degree,
    }.get(ep.container)
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
