"""Deterministic `sourcedir.tar.gz` bundles, named by their content hash.

Same files, same bytes (`aiops.archive`), so an unchanged source dir hashes the same and is never
uploaded twice.
Excluded: VCS data and caches, `.gitignore` patterns, and `.aiopsignore` patterns (same syntax).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from aiops import archive
from aiops.errors import UsageError

ALWAYS_EXCLUDED = [".git/", ".hg/", ".svn/", "__pycache__/", "*.pyc", ".aiops/", ".venv/", ".mypy_cache/",
                   ".pytest_cache/", ".ipynb_checkpoints/", ".DS_Store"]
IGNORE_FILES = (".gitignore", ".aiopsignore")
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
    entries = {rel: root / rel for rel in files}
    sizes = {rel: path.stat().st_size for rel, path in entries.items()}
    large = [(rel, size) for rel, size in sizes.items() if size >= LARGE_FILE_BYTES]
    data = archive.tar_gz_bytes(entries)
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest(), files=files, large_files=large)
