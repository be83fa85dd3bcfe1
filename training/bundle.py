"""Deterministic `sourcedir.tar.gz` bundles, named by their content hash.

Same files, same bytes (`aiops.archive`), so an unchanged source dir hashes the same and is never
uploaded twice.
Which files: `aiops.files.select`, the policy shared with local runs and model packages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from aiops import archive, files
from aiops.errors import UsageError

LARGE_FILE_BYTES = 50 * 1024 * 1024


@dataclass
class Bundle:
    data: bytes
    sha256: str
    files: list[str]
    large_files: list[tuple[str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)


def collect_files(root: Path, *, single_file: Path | None = None, follow_symlinks: bool = False) -> list[str]:
    """Relative POSIX paths that go into the bundle, sorted (the `aiops.files` policy)."""
    return files.select(single_file or root, follow_symlinks=follow_symlinks).files


def build(code_source: Path, entry_point: str, *, selection: files.Selection | None = None) -> Bundle:
    """Bundle the source dir (or the single entry-point file), checking the entry point is in it.

    `selection` is the one `aiops.training.local.prepare` made (so the bundle holds exactly the
    files a local run snapshots); without it the default policy selects them here."""
    if selection is None:
        selection = files.select(code_source)
    if entry_point not in selection.entries:
        raise UsageError(
            f"entry point {entry_point} is excluded from the code bundle by .gitignore/.aiopsignore; "
            "un-ignore it or rename it."
        )
    entries = selection.entries
    sizes = {rel: path.stat().st_size for rel, path in entries.items()}
    large = [(rel, size) for rel, size in sorted(sizes.items()) if size >= LARGE_FILE_BYTES]
    data = archive.tar_gz_bytes(entries)
    return Bundle(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        files=selection.files,
        large_files=large,
        warnings=list(selection.warnings),
    )
