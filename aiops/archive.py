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
from pathlib import Path
from typing import BinaryIO, Mapping

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


def write_tar_gz(entries: Mapping[str, Path], dest: BinaryIO, *, with_directories: bool = False,
                 compresslevel: int = 6) -> None:
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
