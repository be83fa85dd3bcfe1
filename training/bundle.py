"""Deterministic `sourcedir.tar.gz` bundles, named by their content hash.

Same files, same bytes: entries sorted, mtimes fixed, owners and modes normalised, gzip header
without a timestamp. So an unchanged source dir hashes the same and is never uploaded twice.
Excluded: VCS data and caches, `.gitignore` patterns, and `.aiopsignore` patterns (same syntax).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from aiops.errors import UsageError

ALWAYS_EXCLUDED = [".git/", ".hg/", ".svn/", "__pycache__/", "*.pyc", ".aiops/", ".venv/", ".mypy_cache/",
                   ".pytest_cache/", ".ipynb_checkpoints/", ".DS_Store"]
IGNORE_FILES = (".gitignore", ".aiopsignore")
FIXED_MTIME = 315532800  # 1980-01-01, the earliest time zip-based tools accept too
LARGE_FILE_BYTES = 50 * 1024 * 1024


@dataclass
class Bundle:
    data: bytes
    sha256: str
    files: list[str]
    large_files: list[tuple[str, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)


def _ignore_spec(root: Path):
    import pathspec

    lines = list(ALWAYS_EXCLUDED)
    for name in IGNORE_FILES:
        path = root / name
        if path.is_file():
            lines += path.read_text().splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def collect_files(root: Path, *, single_file: Path | None = None) -> list[str]:
    """Relative POSIX paths that go into the bundle, sorted."""
    if single_file is not None:
        return [single_file.name]
    spec = _ignore_spec(root)
    files: list[str] = []
    for folder, dirs, names in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not spec.match_file((rel_folder / d).as_posix() + "/"))
        for name in sorted(names):
            rel = (rel_folder / name).as_posix()
            if not spec.match_file(rel) and (Path(folder) / name).is_file():
                files.append(rel)
    return sorted(files)


def build(code_source: Path, entry_point: str) -> Bundle:
    """Bundle the source dir (or the single entry-point file), checking the entry point is in it."""
    single = code_source if code_source.is_file() else None
    root = code_source.parent if single else code_source
    files = collect_files(root, single_file=single)
    if entry_point not in files:
        raise UsageError(
            f"entry point {entry_point} is excluded from the code bundle by .gitignore/.aiopsignore; "
            "un-ignore it or rename it."
        )
    raw = io.BytesIO()
    large: list[tuple[str, int]] = []
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            path = root / rel
            info = tarfile.TarInfo(rel)
            stat = path.stat()
            info.size = stat.st_size
            info.mtime = FIXED_MTIME
            info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.st_size >= LARGE_FILE_BYTES:
                large.append((rel, stat.st_size))
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    data = compressed.getvalue()
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest(), files=files, large_files=large)
