"""Deterministic tar.gz archives and content hashes, shared by code bundles, model packages and
run artifacts: same files, same bytes, so an unchanged input hashes (and uploads) the same.

Entries are sorted; mtimes, owners and modes are normalised (0644, or 0755 for executables);
the gzip header has no timestamp and no file name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

FIXED_MTIME = 0
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _info(name: str, *, size: int = 0, mode: int = 0o644, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = mode
    return info


def write_tar_gz(
    entries: Mapping[str, Path], dest: BinaryIO, *, with_directories: bool = False, compresslevel: int = 6
) -> None:
    """Write `{archive name: file}` as a deterministic tar.gz into `dest`.

    With `with_directories`, every parent folder gets its own entry too (as `tar czf` of a folder has).
    """
    names = set(entries)
    directories: set[str] = set()
    if with_directories:
        for name in entries:
            parts = name.split("/")[:-1]
            directories.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    with gzip.GzipFile(filename="", mode="wb", fileobj=dest, mtime=0, compresslevel=compresslevel) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(names | directories):
                if name not in entries:
                    tar.addfile(_info(name, directory=True))
                    continue
                path = entries[name]
                stat = path.stat()
                mode = 0o755 if stat.st_mode & 0o111 else 0o644
                with open(path, "rb") as handle:
                    tar.addfile(_info(name, size=stat.st_size, mode=mode), handle)


def tar_gz_bytes(entries: Mapping[str, Path], **options: object) -> bytes:
    buffer = io.BytesIO()
    write_tar_gz(entries, buffer, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def write_tar_gz_file(entries: Mapping[str, Path], out: Path, **options: object) -> Path:
    """Write atomically: a reader never sees half an archive, a failure leaves no file behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            write_tar_gz(entries, handle, **options)  # type: ignore[arg-type]
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def folder_entries(folder: Path) -> dict[str, Path]:
    """Every file under `folder`, by its POSIX path relative to it."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- safe extraction

GIB = 1024**3
DEFAULT_MAX_BYTES = 64 * GIB
DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_MEMBERS = 100_000
RATIO_FLOOR_BYTES = 1 * GIB


class ArchiveError(ValueError):
    """An archive refused by :func:`safe_extract` (the message names the entry and the limit)."""


def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why a member that is not a folder may not be extracted or copied (None: a regular file). A
    link could point anywhere once unpacked (a model's ``tokenizer.json`` at ``~/.aws/credentials``),
    so model archives hold regular files and folders only: the one rule of extraction and repacking."""
    if member.isfile() and not member.issparse():
        return None
    return "is a link, device or sparse file"


def safe_extract(
    archive_path: Path,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> int:
    """Extract a tar(.gz) into the empty folder ``dest`` in one streaming pass; returns the bytes written.

    Every member is checked from its header as it streams, before its data is read: regular files
    and folders only (no links, devices, sparse files), no path leaving ``dest``, at most
    ``max_members`` entries and at most ``min(max_bytes, max(1 GiB, max_ratio x archive size))``
    bytes in all - a tar bomb stops at its first header past the cap, not after filling the disk.
    The archive is decompressed once (``tarfile`` stream mode, no ``getmembers()`` pre-pass).
    Raises :class:`ArchiveError`; the caller removes ``dest`` (see :func:`extract_to_temp`).
    """
    archive_path = Path(archive_path)
    compressed = archive_path.stat().st_size
    cap = min(int(max_bytes), max(RATIO_FLOOR_BYTES, int(max_ratio * compressed)))
    root = Path(dest).resolve()
    total = 0
    count = 0
    try:
        with tarfile.open(archive_path, "r|*") as tar:
            for member in tar:
                count += 1
                if count > max_members:
                    raise ArchiveError(f"more than {max_members} entries (archive_max_members)")
                name = member.name
                target = (root / name).resolve()
                if target != root and root not in target.parents:
                    raise ArchiveError(f"entry {name!r} would be written outside the model folder")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                problem = unsafe_member(member)
                if problem:
                    raise ArchiveError(f"entry {name!r} {problem}; not extracted")
                total += member.size
                if total > cap:
                    raise ArchiveError(
                        f"unpacks to more than {cap} bytes (at entry {name!r}); the limits are "
                        f"archive_max_gb and archive_max_ratio x the archive's {compressed} bytes"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                mode = 0o755 if member.mode & 0o111 else 0o644
                fd = os.open(
                    target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), mode
                )
                with os.fdopen(fd, "wb") as out:
                    left = member.size
                    while left > 0:  # the member's data, never more than its header's size
                        block = source.read(min(_CHUNK, left))
                        if not block:
                            raise ArchiveError(f"entry {name!r} is truncated")
                        out.write(block)
                        left -= len(block)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise ArchiveError(f"not a readable tar archive ({err})") from None
    return total


def extract_to_temp(archive_path: Path, *, prefix: str = "aiops-model-", **limits: object) -> Path:
    """:func:`safe_extract` into a new temporary folder, which is removed again on any failure."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        safe_extract(archive_path, folder, **limits)  # type: ignore[arg-type]
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder
