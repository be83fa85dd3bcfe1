"""Will the model fit the instance's GPU memory? Answered before anything is created.

Pure functions over the model's own files and two shipped tables (``data/gpus.json``: GPUs and
memory per SageMaker instance type; ``data/prices.json`` through ``aiops.pricing``). Nothing here
loads weights, imports torch, or calls AWS:

- **safetensors**: the documented header (8-byte little-endian length, then a JSON object of
  ``{name: {dtype, shape, data_offsets}}``, at most 100 MB as safetensors itself caps it) is read
  and parsed with ``json``; every shape must be at most ``MAX_RANK`` whole numbers from 0 up, and
  a tensor at most ``MAX_ELEMENTS`` elements;
- **torch state dicts** (``torch.save``'s zip format, ``.pt``/``.pth``/``.bin``): only the zip's
  directory and its ``data.pkl`` are read, each within a budget checked before it is read (the
  directory's size from the end record, ``data.pkl``'s from the directory; the read itself stops
  there too, so a member that inflates past what the directory says is cut and fails its CRC);
  the pickle's operations are counted first (``pickletools.genops``, nothing built) and at most
  ``MAX_PICKLE_OPS`` are run, by a restricted unpickler that records each storage's dtype and
  element count and never calls a real class or function (safer than ``torch.load``, and no torch
  needed). A zip bomb is refused from the directory, with memory bounded;
- a folder holds either (sharded files are summed; its files are chosen by ``aiops.files``, the
  one policy for model folders: no link out of it); a ``model.tar.gz`` is read member by member, a
  ``.pt`` member in place (seeks within the archive, never a copy in memory).

Anything these files hold that does not fit the formats is one ``UsageError`` line naming the file.

The estimate (all in GiB = 2**30 bytes):

- inference: ``(weights + kv_cache) * (1 + overhead)`` compared with the memory of the GPUs one
  copy of the model spans: all of them (or the tensor-parallel degree) for LMI/TGI, which spread
  weights and cache over them; one for the PyTorch container, whose model server loads a copy per GPU. weights = parameters x bytes of the serving
  dtype (default: as stored); kv_cache = layers x 2 x kv_heads x head_dim x max_tokens x batch x
  dtype bytes; overhead (default 20 %) covers the CUDA context, activations and allocator
  fragmentation.
- training, per GPU: parameters x (weights + grads in the training dtype, + fp32 master weights
  when that dtype is not fp32, + Adam's two fp32 moments) = 16 bytes/parameter for bf16 or fp32;
  sharded over all GPUs of all hosts with FSDP (``--distribution``), a full copy per GPU
  otherwise (DDP); times (1 + overhead). Activations are not estimated: the overhead stands in.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import pickletools
import struct
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import IO, Any

from aiops.errors import UsageError
from aiops.pricing import DatedTable

GIB = 1 << 30
DEFAULT_OVERHEAD = 0.20
MAX_HEADER = 100 << 20  # safetensors caps its header at 100 MB
MAX_RANK = 64  # dimensions of one tensor (numpy's own limit)
MAX_ELEMENTS = 1 << 48  # of one tensor: 256 T, far past any real one
# torch.save's data.pkl takes ~120 bytes and ~32 pickle operations a tensor (measured): these
# budgets admit ~60,000 tensors in one file and keep a crafted pickle's objects to ~200 MB
MAX_PICKLE_BYTES = 16 << 20
MAX_PICKLE_OPS = 2_000_000
MAX_ZIP_DIRECTORY = 16 << 20  # the zip's central directory (one ~100-byte entry a tensor)
MAX_CONFIG_SIZE = 1 << 24  # a layer, head or hidden size in config.json

# Bytes per element. safetensors names (F16, BF16, ...), torch storage class names, and the
# short names users type (fp16, bf16, int8, ...).
_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "F6_E2M3": 1,
    "F6_E3M2": 1,
    "F4": 1,  # sub-byte types round up to one byte per element (a bound, not exact)
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "C64": 8,
}
_ALIASES = {
    "fp64": "F64",
    "float64": "F64",
    "double": "F64",
    "fp32": "F32",
    "float32": "F32",
    "float": "F32",
    "fp16": "F16",
    "float16": "F16",
    "half": "F16",
    "bf16": "BF16",
    "bfloat16": "BF16",
    "fp8": "F8_E4M3",
    "float8": "F8_E4M3",
    "int8": "I8",
    "uint8": "U8",
    "int4": "F4",
    "fp4": "F4",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "bool": "BOOL",
}
_STORAGES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
    "Float8_e4m3fnStorage": "F8_E4M3",
    "Float8_e5m2Storage": "F8_E5M2",
}
DTYPE_CHOICES = "fp32, bf16, fp16, fp8, int8, int4"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def dtype_name(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.upper())
    if key not in _BYTES:
        raise UsageError(f"unknown dtype {name!r}; allowed: {DTYPE_CHOICES}")
    return key


def dtype_bytes(name: str) -> int:
    return _BYTES[dtype_name(name)]


def gib(n_bytes: float) -> float:
    return n_bytes / GIB


# --------------------------------------------------------------------------- reading tensor sizes


@dataclass(frozen=True)
class TensorStats:
    """What the model's files say: parameter count and bytes, per dtype, without the weights."""

    parameters: int
    bytes: int
    by_dtype: dict[str, int] = field(default_factory=dict)  # parameters per dtype
    files: tuple[str, ...] = ()
    source: str = ""

    def __add__(self, other: TensorStats) -> TensorStats:
        by = dict(self.by_dtype)
        for k, v in other.by_dtype.items():
            by[k] = by.get(k, 0) + v
        sources = " + ".join(s for s in dict.fromkeys([self.source, other.source]) if s)
        return TensorStats(
            self.parameters + other.parameters,
            self.bytes + other.bytes,
            by,
            self.files + other.files,
            sources,
        )


def _stats_from_tensors(tensors: Iterable[tuple[str, int]], name: str, source: str) -> TensorStats:
    by: dict[str, int] = {}
    total_bytes = 0
    for dtype, numel in tensors:
        by[dtype] = by.get(dtype, 0) + numel
        total_bytes += numel * _BYTES.get(dtype, 4)
    return TensorStats(sum(by.values()), total_bytes, by, (name,), source)


def read_safetensors_header(fh: IO[bytes], name: str, size: int | None = None) -> dict[str, Any]:
    raw = fh.read(8)
    if len(raw) < 8:
        raise UsageError(f"{name}: not a safetensors file (shorter than its 8-byte header length)")
    (length,) = struct.unpack("<Q", raw)
    if length > MAX_HEADER or (size is not None and 8 + length > size):
        raise UsageError(f"{name}: not a safetensors file (header length {length} is impossible)")
    try:
        header = json.loads(fh.read(length))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise UsageError(f"{name}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise UsageError(f"{name}: not a safetensors file (its header is not a JSON object)")
    return header


def safetensors_stats(fh: IO[bytes], name: str, size: int | None = None) -> TensorStats:
    header = read_safetensors_header(fh, name, size)
    tensors = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape = str(entry["dtype"]).upper(), entry["shape"]
        except (KeyError, TypeError):
            raise UsageError(
                f"{name}: tensor {_short(key)} has no dtype/shape in the safetensors header"
            ) from None
        tensors.append((dtype, _numel(shape, name, key)))
    return _stats_from_tensors(tensors, name, "safetensors header")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _numel(shape: Any, name: str, key: str) -> int:
    """Elements of a tensor of ``shape``: a list of at most MAX_RANK whole numbers from 0 up, whose
    product is at most MAX_ELEMENTS (checked as it multiplies, so no huge number is ever built)."""

    def bad(why: str) -> UsageError:
        return UsageError(
            f"{name}: tensor {_short(key)} has an impossible shape ({why}); the file is "
            "damaged or not a real model"
        )

    if not isinstance(shape, list):
        raise bad(f"{_short(shape)} is not a list of dimensions")
    if len(shape) > MAX_RANK:
        raise bad(f"{len(shape)} dimensions, more than {MAX_RANK}")
    numel = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:  # bool is an int subclass; a JSON float is not a dimension
            raise bad(f"dimension {_short(dim)} is not a whole number from 0 up")
        numel *= min(dim, MAX_ELEMENTS + 1)
        if numel > MAX_ELEMENTS:
            raise bad(f"more than {MAX_ELEMENTS} elements")
    return numel


class _Anything:
    """Stands in for every class or function a pickle names: accepts any arguments, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Anything:
        return _Anything()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _OrderedDict(dict):
    """collections.OrderedDict as torch pickles it (a state dict carries ``_metadata`` as an attribute)."""


@dataclass(frozen=True)
class _StorageType:
    dtype: str


class _StateDictUnpickler(pickle.Unpickler):
    """Records ``(storage key -> dtype, numel)`` from torch's persistent ids; runs no real code."""

    def __init__(self, fh: IO[bytes]) -> None:
        super().__init__(fh)
        self.storages: dict[str, tuple[str, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return _OrderedDict
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        if module == "torch" and name.endswith("Storage"):
            return _StorageType("F32")  # an unknown storage type: 4 bytes a element, a guess
        return _Anything

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5:
            kind, key, numel = pid[1], str(pid[2]), pid[4]
            if type(numel) is not int or not 0 <= numel <= MAX_ELEMENTS:
                raise pickle.UnpicklingError(f"storage {_short(key)} has {_short(numel)} elements")
            dtype = kind.dtype if isinstance(kind, _StorageType) else "U8"  # untyped storages count bytes
            self.storages[key] = (dtype, numel)
        return _Anything()


class _NotAStateDict(Exception):
    """Why a file is not a torch.save archive the check can read (becomes the UsageError's words)."""


def state_dict_stats(fh: IO[bytes], name: str) -> TensorStats:
    """Sizes in a ``torch.save`` zip archive: unique storages (tied weights counted once). Reads
    the zip's directory and ``data.pkl`` only, each within its budget (see the module docstring)."""
    try:
        unpickler = _StateDictUnpickler(io.BytesIO(_data_pkl(fh)))
        unpickler.load()
    except _NotAStateDict as err:
        raise UsageError(f"{name}: {err}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as err:
        raise UsageError(
            f"{name}: not a torch.save archive ({_short(str(err), 200)}); save the weights with torch.save "
            "(zip format) or as safetensors"
        ) from None
    except Exception as err:  # noqa: BLE001 - a malformed pickle fails in any of a dozen ways: one line
        raise UsageError(
            f"{name}: its data.pkl is not a torch.save pickle the check can read "
            f"({type(err).__name__}: {_short(str(err), 200)}); the file is damaged or not a "
            "state dict"
        ) from None
    return _stats_from_tensors(unpickler.storages.values(), name, "state dict")


def _data_pkl(fh: IO[bytes]) -> bytes:
    """``data.pkl`` of a torch.save zip: the directory's size (end record) and then data.pkl's (the
    directory) are checked before either is read; its operations are counted before it is run."""
    try:
        end = zipfile._EndRecData(fh)  # the end record zipfile itself reads first (zip64 too)
    except OSError as err:
        raise zipfile.BadZipFile(str(err)) from None
    if end is None:
        raise zipfile.BadZipFile("no zip end record")
    if end[zipfile._ECD_SIZE] > MAX_ZIP_DIRECTORY:
        raise _NotAStateDict(
            f"its zip directory is {end[zipfile._ECD_SIZE]} bytes, more than the "
            f"{MAX_ZIP_DIRECTORY >> 20} MB the GPU-fit check reads; not a torch.save "
            "archive"
        )
    with zipfile.ZipFile(fh) as archive:
        found = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
        if not found:
            raise zipfile.BadZipFile("no data.pkl")
        info = found[0]
        if info.file_size > MAX_PICKLE_BYTES:
            raise _NotAStateDict(
                f"its data.pkl unpacks to {info.file_size} bytes, more than the {MAX_PICKLE_BYTES >> 20} MB "
                "the GPU-fit check reads (a torch.save pickle takes ~120 bytes a tensor); save the weights "
                "as safetensors, or turn the check off"
            )
        parts, size = [], 0
        with archive.open(info) as member:  # stops at the directory's size, whatever the data inflates to
            while block := member.read(1 << 20):  # small reads: zipfile inflates as much as it is asked
                parts.append(block)
                size += len(block)
                if size > MAX_PICKLE_BYTES:
                    raise _NotAStateDict(f"its data.pkl unpacks past {MAX_PICKLE_BYTES >> 20} MB")
    data = b"".join(parts)
    ops = 0
    for _ in pickletools.genops(data):  # decodes each operation, builds nothing
        ops += 1
        if ops > MAX_PICKLE_OPS:
            raise _NotAStateDict(
                f"its data.pkl holds more than {MAX_PICKLE_OPS} pickle operations (a "
                "torch.save pickle takes ~32 a tensor); save the weights as safetensors, or "
                "turn the check off"
            )
    return data


def _file_stats(fh: IO[bytes], name: str, size: int | None) -> TensorStats:
    if name.endswith(".safetensors"):
        return safetensors_stats(fh, name, size)
    return state_dict_stats(fh, name)


def _is_weights(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(WEIGHT_SUFFIXES) and not base.startswith(("optimizer", "scheduler", "training_args"))


def _pick(names: list[str]) -> list[str]:
    """safetensors when there are any (a folder often holds both formats of the same weights)."""
    st = [n for n in names if n.endswith(".safetensors")]
    return sorted(st or names)


def model_stats(path: Path) -> TensorStats:
    """Tensor sizes of a weights file, a model folder, or a ``model.tar.gz``; UsageError if none."""
    path = Path(path)
    if path.is_dir():
        from aiops.files import select_model_folder

        chosen = select_model_folder(path).entries  # the files a package or upload would hold
        files = _pick([rel for rel in chosen if _is_weights(rel)])
        if not files:
            raise UsageError(
                f"{path}: no weights found (looked for {', '.join('*' + s for s in WEIGHT_SUFFIXES)})"
            )
        total: TensorStats | None = None
        for rel in files:
            with open(chosen[rel], "rb") as fh:
                stats = _file_stats(fh, rel, os.fstat(fh.fileno()).st_size)
            total = stats if total is None else total + stats
        assert total is not None
        return total
    if not path.is_file():
        raise UsageError(f"{path}: no such file or folder")
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _tar_stats(path)
    if not _is_weights(path.name):
        raise UsageError(
            f"{path}: not a weights file; expected {', '.join('*' + s for s in WEIGHT_SUFFIXES)}"
        )
    with open(path, "rb") as fh:
        return _file_stats(fh, path.name, path.stat().st_size)


def _tar_stats(path: Path) -> TensorStats:
    total: TensorStats | None = None
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {
                m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile() and _is_weights(m.name)
            }
            for name in _pick(list(members)):
                fh = tar.extractfile(members[name])
                assert fh is not None
                # read in place: a zip's seeks move within the member (a .tar.gz decompresses up to
                # where they land; nothing is held but the reads themselves)
                stats = _file_stats(fh, name, members[name].size)
                total = stats if total is None else total + stats
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UsageError(f"{path}: cannot read the archive: {err}") from None
    if total is None:
        raise UsageError(
            f"{path}: no weights in the archive (looked for {', '.join('*' + s for s in WEIGHT_SUFFIXES)})"
        )
    return total


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
                    f"config.json: {key}={_short(value)} is not a whole number from 1 to "
                    f"{MAX_CONFIG_SIZE}; fix the model's config.json"
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
            f"needs {self.need.total_gib:.1f} GiB {what} ({self.need.note}, +{self.need.overhead:.0%} overhead), "
            f"{self.instance_type} has {have}"
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
