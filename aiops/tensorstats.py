"""The tensor sizes of a model's weights, read from its files without loading them.

Pure functions over the model's own files (the GPU-fit check, ``aiops.gpufit``, turns them into
memory). Nothing here loads weights, imports torch, or calls AWS:

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
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiops.errors import UsageError

MAX_HEADER = 100 << 20  # safetensors caps its header at 100 MB
MAX_RANK = 64  # dimensions of one tensor (numpy's own limit)
MAX_ELEMENTS = 1 << 48  # of one tensor: 256 T, far past any real one
# torch.save's data.pkl takes ~120 bytes and ~32 pickle operations a tensor (measured): these
# budgets admit ~60,000 tensors in one file and keep a crafted pickle's objects to ~200 MB
MAX_PICKLE_BYTES = 16 << 20
MAX_PICKLE_OPS = 2_000_000
MAX_ZIP_DIRECTORY = 16 << 20  # the zip's central directory (one ~100-byte entry a tensor)

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
                f"{name}: tensor {short_repr(key)} has no dtype/shape in the safetensors header"
            ) from None
        tensors.append((dtype, _numel(shape, name, key)))
    return _stats_from_tensors(tensors, name, "safetensors header")


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _numel(shape: Any, name: str, key: str) -> int:
    """Elements of a tensor of ``shape``: a list of at most MAX_RANK whole numbers from 0 up, whose
    product is at most MAX_ELEMENTS (checked as it multiplies, so no huge number is ever built)."""

    def bad(why: str) -> UsageError:
        return UsageError(
            f"{name}: tensor {short_repr(key)} has an impossible shape ({why}); the file is "
            "damaged or not a real model"
        )

    if not isinstance(shape, list):
        raise bad(f"{short_repr(shape)} is not a list of dimensions")
    if len(shape) > MAX_RANK:
        raise bad(f"{len(shape)} dimensions, more than {MAX_RANK}")
    numel = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:  # bool is an int subclass; a JSON float is not a dimension
            raise bad(f"dimension {short_repr(dim)} is not a whole number from 0 up")
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
                raise pickle.UnpicklingError(f"storage {short_repr(key)} has {short_repr(numel)} elements")
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
            f"{name}: not a torch.save archive ({short_repr(str(err), 200)}); "
            "save the weights with torch.save (zip format) or as safetensors"
        ) from None
    except Exception as err:  # noqa: BLE001 - a malformed pickle fails in any of a dozen ways: one line
        raise UsageError(
            f"{name}: its data.pkl is not a torch.save pickle the check can read "
            f"({type(err).__name__}: {short_repr(str(err), 200)}); the file is damaged or not a "
            "state dict"
        ) from None
    return _stats_from_tensors(unpickler.storages.values(), name, "state dict")


def _data_pkl(fh: IO[bytes]) -> bytes:
    """``data.pkl`` of a torch.save zip: the directory's size (end record) and then data.pkl's (the
    directory) are checked before either is read; its operations are counted before it is run."""
    try:
        # the end record zipfile itself reads first (zip64 too); private, so not in typeshed
        end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]
    except OSError as err:
        raise zipfile.BadZipFile(str(err)) from None
    if end is None:
        raise zipfile.BadZipFile("no zip end record")
    directory_size = end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]  # private, as above
    if directory_size > MAX_ZIP_DIRECTORY:
        raise _NotAStateDict(
            f"its zip directory is {directory_size} bytes, more than the "
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
