"""Will the model fit the instance's GPU memory? Answered before anything is created.

Pure functions over the model's tensor sizes (``aiops.tensorstats``, read from its files without
loading them) and two shipped tables (``data/gpus.json``: GPUs and memory per SageMaker instance
type; ``data/prices.json`` through ``aiops.pricing``). Nothing here loads weights, imports torch,
or calls AWS.

The estimate (all in GiB = 2**30 bytes):

- inference: ``(weights + kv_cache) * (1 + overhead)`` compared with the memory of the GPUs one
  copy of the model spans: all of them (or the tensor-parallel degree) for LMI/TGI, which spread
  weights and cache over them; one for the PyTorch container, whose model server loads a copy per GPU.
  weights = parameters x bytes of the serving dtype (default: as stored); kv_cache = layers x 2 x
  kv_heads x head_dim x max_tokens x batch x dtype bytes; overhead (default 20 %) covers the CUDA
  context, activations and allocator fragmentation.
- training, per GPU: parameters x (weights + grads in the training dtype, + fp32 master weights
  when that dtype is not fp32, + Adam's two fp32 moments) = 16 bytes/parameter for bf16 or fp32;
  sharded over all GPUs of all hosts with FSDP (``--distribution``), a full copy per GPU
  otherwise (DDP); times (1 + overhead). Activations are not estimated: the overhead stands in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from aiops.errors import UsageError
from aiops.pricing import DatedTable
from aiops.tensorstats import TensorStats, dtype_bytes, dtype_name, short_repr

GIB = 1 << 30
DEFAULT_OVERHEAD = 0.20
MAX_CONFIG_SIZE = 1 << 24  # a layer, head or hidden size in config.json


def gib(n_bytes: float) -> float:
    return n_bytes / GIB


# --------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class KvCache:
    """A KV-cache budget: 2 (K and V) x layers x kv_heads x head_dim x tokens x batch x dtype bytes."""

    layers: int
    kv_heads: int
    head_dim: int
    max_tokens: int
    batch: int = 1
    dtype: str = "fp16"

    @property
    def bytes(self) -> int:
        return (
            self.layers
            * 2
            * self.kv_heads
            * self.head_dim
            * self.max_tokens
            * self.batch
            * dtype_bytes(self.dtype)
        )


def kv_shape_from_config(config: dict[str, Any]) -> tuple[int, int, int] | None:
    """(layers, kv_heads, head_dim) from a Hugging Face ``config.json``; None when it lacks them."""

    def size(*keys: str) -> int | None:
        for key in keys:
            value = config.get(key)
            if value is None:
                continue
            if type(value) is not int or not 0 < value <= MAX_CONFIG_SIZE:
                raise UsageError(
                    f"config.json: {key}={short_repr(value)} is not a whole number "
                    f"from 1 to {MAX_CONFIG_SIZE}; fix the model's config.json"
                )
            return value
        return None

    layers = size("num_hidden_layers", "n_layer", "num_layers")
    heads = size("num_attention_heads", "n_head")
    kv_heads = size("num_key_value_heads") or heads
    hidden = size("hidden_size", "n_embd")
    head_dim = size("head_dim") or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        return None
    return layers, kv_heads, head_dim


@dataclass(frozen=True)
class Need:
    """GPU memory needed, in bytes, and how it was computed (for the one-line answer)."""

    weights: int
    kv_cache: int = 0
    optimizer: int = 0  # training: grads + master weights + Adam moments
    overhead: float = DEFAULT_OVERHEAD
    per_gpu: bool = False  # training: the need of each GPU; inference: of the whole model
    note: str = ""

    @property
    def total(self) -> int:
        return math.ceil((self.weights + self.kv_cache + self.optimizer) * (1.0 + self.overhead))

    @property
    def total_gib(self) -> float:
        return gib(self.total)


def inference_need(
    stats: TensorStats,
    *,
    dtype: str | None = None,
    kv: KvCache | None = None,
    overhead: float = DEFAULT_OVERHEAD,
) -> Need:
    weights = stats.parameters * dtype_bytes(dtype) if dtype else stats.bytes
    parts = [f"{stats.parameters / 1e9:.2f}B parameters as {dtype_name(dtype) if dtype else 'stored'}"]
    if kv:
        parts.append(f"KV cache {kv.max_tokens} tokens x batch {kv.batch}")
    return Need(weights=weights, kv_cache=kv.bytes if kv else 0, overhead=overhead, note=", ".join(parts))


def training_need(
    parameters: int, *, dtype: str = "bf16", shards: int = 1, overhead: float = DEFAULT_OVERHEAD
) -> Need:
    """Per GPU: weights + grads (training dtype), fp32 master copy unless fp32, 2 Adam moments (fp32),
    divided over ``shards`` GPUs (FSDP full sharding; 1 = every GPU holds everything)."""
    b = dtype_bytes(dtype)
    master = 0 if dtype_name(dtype) == "F32" else 4
    weights = parameters * b
    rest = parameters * (b + master + 8)
    shards = max(1, shards)
    return Need(
        weights=math.ceil(weights / shards),
        optimizer=math.ceil(rest / shards),
        overhead=overhead,
        per_gpu=True,
        note=f"{parameters / 1e9:.2f}B parameters x {b + b + master + 8} bytes (weights, grads, "
        f"{'fp32 master, ' if master else ''}Adam) / {shards} shard{'s' if shards != 1 else ''}",
    )


# --------------------------------------------------------------------------- the GPU table and the verdict


@dataclass(frozen=True)
class GpuSpec:
    instance_type: str
    gpus: int
    gpu_model: str
    gpu_memory_gib: float

    @property
    def total_gib(self) -> float:
        return self.gpus * self.gpu_memory_gib

    def describe(self) -> str:
        return f"{self.gpus} x {self.gpu_model} {self.gpu_memory_gib:g} GiB"


@dataclass(frozen=True)
class GpuTable(DatedTable):
    def get(self, instance_type: str) -> GpuSpec | None:
        entry = self.data["instance_types"].get(instance_type)
        if entry is None:
            return None
        return GpuSpec(instance_type, int(entry["gpus"]), entry["gpu_model"], float(entry["gpu_memory_gib"]))

    def all(self) -> list[GpuSpec]:
        return [s for s in (self.get(t) for t in self.data["instance_types"]) if s is not None]


@lru_cache(maxsize=1)
def load_gpus() -> GpuTable:
    return GpuTable(json.loads(resources.files("aiops").joinpath("data/gpus.json").read_text()))


def gpu_count(instance_type: str) -> int | None:
    spec = load_gpus().get(instance_type)
    return spec.gpus if spec else None


@dataclass(frozen=True)
class Suggestion:
    instance_type: str
    spec: GpuSpec
    hourly: float | None  # None: no known price in the region


@dataclass(frozen=True)
class Fit:
    instance_type: str
    need: Need
    spec: GpuSpec | None  # None: not a GPU type of the table (the check does not apply)
    hosts: int = 1
    suggestions: tuple[Suggestion, ...] = ()
    gpus_used: int | None = None  # inference: the GPUs one model copy spans (None: all of them)

    def _used(self, spec: GpuSpec) -> int:
        return 1 if self.need.per_gpu else min(spec.gpus, self.gpus_used or spec.gpus)

    @property
    def have_gib(self) -> float | None:
        if self.spec is None:
            return None
        return self._used(self.spec) * self.spec.gpu_memory_gib

    @property
    def checked(self) -> bool:
        return self.spec is not None

    @property
    def fits(self) -> bool:
        return self.spec is None or self.need.total_gib <= (self.have_gib or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_type": self.instance_type,
            "checked": self.checked,
            "fits": self.fits,
            "need_gib": round(self.need.total_gib, 3),
            "have_gib": self.have_gib,
            "per_gpu": self.need.per_gpu,
            "weights_bytes": self.need.weights,
            "kv_cache_bytes": self.need.kv_cache,
            "optimizer_bytes": self.need.optimizer,
            "overhead": self.need.overhead,
            "note": self.need.note,
            "suggestions": [{"instance_type": s.instance_type, "hourly": s.hourly} for s in self.suggestions],
            "line": self.line(),
        }

    def line(self) -> str:
        """One line: need vs have, and (refused) the cheapest types that fit with their $/h."""
        what = "per GPU" if self.need.per_gpu else "of GPU memory"
        if self.spec is None:
            return f"{self.instance_type}: no GPU in the table; the GPU-fit check does not apply"
        used = self._used(self.spec)
        if self.need.per_gpu:
            detail = f"{self.spec.describe()} per GPU"
        elif used < self.spec.gpus:
            detail = f"{used} of {self.spec.describe()} for one model copy"
        else:
            detail = self.spec.describe()
        have = f"{self.have_gib:g} GiB ({detail})"
        head = (
            f"needs {self.need.total_gib:.1f} GiB {what} ({self.need.note}, "
            f"+{self.need.overhead:.0%} overhead), {self.instance_type} has {have}"
        )
        if self.fits:
            return head
        if not self.suggestions:
            return f"{head}: no instance type in the table fits; shard it or use a smaller dtype"
        alts = ", ".join(
            f"{s.instance_type} (${s.hourly:g}/h)"
            if s.hourly is not None
            else f"{s.instance_type} (no known price)"
            for s in self.suggestions
        )
        return f"{head}: the cheapest that fit: {alts}"


def _suggest(fits_on, *, region: str, service_hourly, limit: int) -> tuple[Suggestion, ...]:
    found = []
    for spec in load_gpus().all():
        if fits_on(spec):
            found.append(Suggestion(spec.instance_type, spec, service_hourly(spec.instance_type)))
    # Priced first, cheapest first; unpriced after, smallest memory first.
    found.sort(
        key=lambda s: (
            s.hourly is None,
            s.hourly if s.hourly is not None else s.spec.total_gib,
            s.instance_type,
        )
    )
    return tuple(found[:limit])


def _hourly(region: str):
    from aiops.pricing import load_prices

    table = load_prices()

    def lookup(instance_type: str) -> float | None:
        price = table.lookup("sagemaker", instance_type, region)
        return price.on_demand_hourly if price else None

    return lookup


def check_inference(
    need: Need, instance_type: str, *, region: str = "us-east-1", gpus_used: int | None = None, limit: int = 3
) -> Fit:
    """``gpus_used``: the GPUs one copy of the model may span: 1 for a server that loads one copy
    per GPU (the SageMaker PyTorch container), the tensor-parallel degree for LMI/TGI, None for all."""
    spec = load_gpus().get(instance_type)
    fit = Fit(instance_type, need, spec, gpus_used=gpus_used)
    if fit.fits:
        return fit

    # an explicit tensor-parallel degree is the user's choice for this type; elsewhere, all GPUs
    alt_used = 1 if gpus_used == 1 else None
    suggestions = _suggest(
        lambda s: need.total_gib <= min(s.gpus, alt_used or s.gpus) * s.gpu_memory_gib,
        region=region,
        service_hourly=_hourly(region),
        limit=limit,
    )
    return Fit(instance_type, need, spec, suggestions=suggestions, gpus_used=gpus_used)


def check_training(
    parameters: int,
    instance_type: str,
    *,
    instance_count: int = 1,
    fsdp: bool = False,
    dtype: str = "bf16",
    region: str = "us-east-1",
    overhead: float = DEFAULT_OVERHEAD,
    limit: int = 3,
) -> Fit:
    """Per-GPU fit of a training job; with ``fsdp`` the state is sharded over every GPU of every host."""
    spec = load_gpus().get(instance_type)
    gpus = (spec.gpus if spec else 1) * max(1, instance_count)
    need = training_need(parameters, dtype=dtype, shards=gpus if fsdp else 1, overhead=overhead)
    fit = Fit(instance_type, need, spec, hosts=instance_count)
    if fit.fits:
        return fit

    def fits_on(s: GpuSpec) -> bool:
        shards = s.gpus * max(1, instance_count) if fsdp else 1
        return (
            training_need(parameters, dtype=dtype, shards=shards, overhead=overhead).total_gib
            <= s.gpu_memory_gib
        )

    return Fit(
        instance_type,
        need,
        spec,
        hosts=instance_count,
        suggestions=_suggest(fits_on, region=region, service_hourly=_hourly(region), limit=limit),
    )


def fitting_training_types(
    parameters: float,
    *,
    instance_count: int = 1,
    fsdp: bool = False,
    region: str = "us-east-1",
    limit: int = 3,
) -> tuple[Suggestion, ...]:
    """The GPU types whose GPUs hold the training state, cheapest first (`--instance-type auto`)."""
    if parameters <= 0:
        raise UsageError(f"--model-params {parameters:g}: give the model's parameter count, e.g. 7e9")

    def fits_on(s: GpuSpec) -> bool:
        shards = s.gpus * max(1, instance_count) if fsdp else 1
        return training_need(int(parameters), shards=shards).total_gib <= s.gpu_memory_gib

    return _suggest(fits_on, region=region, service_hourly=_hourly(region), limit=limit)


def require_training_fit(
    parameters: float,
    instance_type: str,
    *,
    instance_count: int = 1,
    fsdp: bool = False,
    region: str = "us-east-1",
) -> Fit:
    """`aiops train --remote --model-params N`: UsageError (one line) when the training state
    cannot fit each GPU; the Fit otherwise (``checked`` False for a type without GPUs)."""
    if parameters <= 0:
        raise UsageError(f"--model-params {parameters:g}: give the model's parameter count, e.g. 7e9")
    fit = check_training(
        int(parameters), instance_type, instance_count=instance_count, fsdp=fsdp, region=region
    )
    if not fit.fits:
        hint = "" if fsdp else "; or shard the state over every GPU with --fsdp"
        raise UsageError(f"the training state does not fit: it {fit.line()}{hint}")
    return fit
