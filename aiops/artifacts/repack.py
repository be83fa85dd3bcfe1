"""Repack a training job's model.tar.gz with the job's code, as the SageMaker SDK's ``estimator.deploy()``
does (``PyTorchModel(entry_point, source_dir)`` -> ``repack_model``: the ``sourcedir.tar.gz`` the job
ran is unpacked into the model's ``code/``, its files replacing same-named ones, and the endpoint gets
``SAGEMAKER_PROGRAM`` = the handler script and ``SAGEMAKER_SUBMIT_DIRECTORY`` = /opt/ml/model/code).

One streaming pass, tar to tar: the model's members are copied as they are (never extracted to
disk, never held in memory whole), regular files and folders only (a link member is refused, as
``aiops.archive.safe_extract`` refuses it: once unpacked it could point anywhere); the bundle's
files (small: source code) are written last under ``code/`` with normalised metadata. Same model
+ same bundle -> the same bytes (gzip without a timestamp), so the repacked archive's content hash,
and its S3 key, are stable across deploys.
When the model's ``code/`` already holds every bundle file byte for byte, nothing is written.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiops.archive import _info, unsafe_member
from aiops.artifacts.programs import CODE_DIR
from aiops.errors import UsageError

CODE = CODE_DIR + "/"
MAX_BUNDLE_BYTES = 512 * 1024 * 1024  # a code bundle is source code; anything bigger is refused


@dataclass(frozen=True)
class BundleFile:
    data: bytes
    executable: bool = False


@dataclass(frozen=True)
class Repacked:
    changed: bool  # False: the model's code/ already held the bundle; nothing was written
    code_files: tuple[str, ...]  # every file under code/ of the result (relative to code/)
    added: tuple[str, ...]  # bundle files the model's code/ lacked
    replaced: tuple[str, ...]  # the model's own code/ files that the bundle's differing version replaced


def _clean(name: str) -> str | None:
    """A member name relative to the archive root, or None when it would leave it."""
    name = name.removeprefix("./")
    norm = posixpath.normpath(name) if name else ""
    if not norm or norm == "." or norm.startswith("../") or norm == ".." or norm.startswith("/"):
        return None
    return norm


def bundle_files(data: bytes, *, what: str) -> dict[str, BundleFile]:
    """The regular files of a ``sourcedir.tar.gz``, by their path in it. Links and entries that
    would leave the folder are refused (UsageError): the endpoint would unpack them."""
    files: dict[str, BundleFile] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                name = _clean(member.name)
                if member.isdir():
                    continue
                if name is None:
                    raise UsageError(f"{what}: entry {member.name!r} leaves the code folder; not repacked")
                problem = unsafe_member(member)
                if problem:
                    raise UsageError(f"{what}: entry {member.name!r} {problem}; not repacked")
                total += member.size
                if total > MAX_BUNDLE_BYTES:
                    raise UsageError(f"{what}: more than {MAX_BUNDLE_BYTES >> 20} MB of code; not repacked")
                fh = tar.extractfile(member)
                files[name] = BundleFile(fh.read() if fh else b"", bool(member.mode & 0o111))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise UsageError(f"{what} is not a readable tar.gz ({err})") from None
    return files


def repack(model: Path, code: Mapping[str, BundleFile], out: Path, *, what: str = "the model") -> Repacked:
    """Write ``model`` with ``code`` under ``code/`` to ``out`` (see the module's docstring)."""
    seen: dict[str, bool] = {}  # bundle file -> the model's copy is identical
    model_code: set[str] = set()
    try:
        with (
            tarfile.open(model, "r|*") as src,
            open(out, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as dst,
        ):
            for member in src:
                name = _clean(member.name)
                if name is None:
                    raise UsageError(f"{what}: entry {member.name!r} leaves the model folder; not repacked")
                problem = None if member.isdir() else unsafe_member(member)
                if problem:  # copied as it is, the endpoint would unpack the link
                    raise UsageError(
                        f"{what}: entry {member.name!r} {problem}; not repacked. Package the "
                        "model with regular files only (aiops model package)"
                    )
                if name.startswith(CODE) and not member.isdir():
                    rel = name[len(CODE) :]
                    model_code.add(rel)
                    if rel in code:  # replaced by the bundle's version, written below
                        fh = src.extractfile(member) if member.isfile() else None
                        same = (
                            fh is not None
                            and member.size == len(code[rel].data)
                            and fh.read() == code[rel].data
                        )
                        seen[rel] = same
                        continue
                fh = src.extractfile(member) if member.isfile() else None
                dst.addfile(member, fh)
            for rel in sorted(code):
                item = code[rel]
                dst.addfile(
                    _info(CODE + rel, size=len(item.data), mode=0o755 if item.executable else 0o644),
                    io.BytesIO(item.data),
                )
    except (tarfile.TarError, EOFError, zlib.error) as err:
        out.unlink(missing_ok=True)
        raise UsageError(f"{what} is not a readable model.tar.gz ({err})") from None
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    added = tuple(sorted(rel for rel in code if rel not in seen))
    replaced = tuple(sorted(rel for rel, same in seen.items() if not same))
    changed = bool(added or replaced)
    if not changed:
        out.unlink(missing_ok=True)
    return Repacked(changed, tuple(sorted(model_code | set(code))), added, replaced)
