"""Deterministic, content-hashed code bundles."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest
from aiops.training import bundle

from aiops import archive
from aiops.errors import UsageError


def _tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_text("print(1)\n")
    (root / "pkg" / "util.py").write_text("X = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "data.csv").write_text("1\n")
    (root / ".aiopsignore").write_text("*.csv\n")
    return root


def test_same_files_same_bytes_whatever_the_mtimes(tmp_path: Path) -> None:
    first = bundle.build(_tree(tmp_path / "a"), "train.py")
    second_root = _tree(tmp_path / "b")
    later = time.time() + 3600
    for path in second_root.rglob("*"):
        os.utime(path, (later, later))
    second = bundle.build(second_root, "train.py")
    assert first.data == second.data and first.sha256 == second.sha256
    (second_root / "pkg" / "util.py").write_text("X = 2\n")
    assert bundle.build(second_root, "train.py").sha256 != first.sha256


def test_entries_are_normalised(tmp_path: Path) -> None:
    built = bundle.build(_tree(tmp_path / "a"), "train.py")
    with tarfile.open(fileobj=io.BytesIO(built.data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == [".aiopsignore", "pkg/util.py", "run.sh", "train.py"]  # data.csv ignored
    assert all(
        m.uid == 0 and m.gid == 0 and m.uname == "" and m.mtime == archive.FIXED_MTIME
        for m in members.values()
    )
    assert members["run.sh"].mode == 0o755 and members["train.py"].mode == 0o644


def test_single_file_and_ignored_entry_point(tmp_path: Path) -> None:
    root = _tree(tmp_path / "a")
    assert bundle.build(root / "train.py", "train.py").files == ["train.py"]
    (root / ".aiopsignore").write_text("train.py\n")
    with pytest.raises(UsageError, match="excluded from the code bundle"):
        bundle.build(root, "train.py")


def test_large_files_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle, "LARGE_FILE_BYTES", 1000)
    root = _tree(tmp_path / "a")
    (root / "weights.bin").write_bytes(b"\0" * 2000)
    assert bundle.build(root, "train.py").large_files == [("weights.bin", 2000)]
