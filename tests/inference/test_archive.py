"""Model archives are unpacked in one capped streaming pass; a refused one leaves nothing behind."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from helpers import run_aiops

from aiops import archive

from .conftest import save_double


def _tar(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> Path:
    """members: (name, data or None for a folder, type flag)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def _bomb(path: Path, size: int) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("model.pt")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    return path


def test_good_archive_round_trips(tmp_path):
    src = _tar(
        tmp_path / "m.tar.gz",
        [
            ("code", None, tarfile.DIRTYPE),
            ("code/inference.py", b"x = 1\n", tarfile.REGTYPE),
            ("model.pt", b"weights", tarfile.REGTYPE),
        ],
    )
    folder = archive.extract_to_temp(src)
    try:
        assert (folder / "model.pt").read_bytes() == b"weights"
        assert (folder / "code" / "inference.py").read_text() == "x = 1\n"
    finally:
        import shutil

        shutil.rmtree(folder)


@pytest.mark.parametrize(
    "limits, members, match",
    [
        ({"max_members": 10}, [(f"f{i}", b"", tarfile.REGTYPE) for i in range(11)], "more than 10 entries"),
        ({}, [("../evil", b"x", tarfile.REGTYPE)], "outside the model folder"),
        ({}, [("/abs/evil", b"x", tarfile.REGTYPE)], "outside the model folder"),
        ({}, [("link", b"", tarfile.SYMTYPE)], "link, device"),
        ({}, [("fifo", b"", tarfile.FIFOTYPE)], "link, device"),
        (
            {"max_bytes": 100},
            [("a", b"x" * 60, tarfile.REGTYPE), ("b", b"y" * 60, tarfile.REGTYPE)],
            "more than 100 bytes",
        ),
    ],
)
def test_refused_archives_leave_no_temp_folder(tmp_path, monkeypatch, limits, members, match):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    src = _tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(archive.ArchiveError, match=match):
        archive.extract_to_temp(src, **limits)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_tar_bomb_stops_at_the_header_not_after_filling_the_disk(tmp_path):
    bomb = _bomb(tmp_path / "bomb.tar.gz", 300 * 1024**2)  # 300 MB of zeros, ~1 MB compressed
    assert bomb.stat().st_size < 3 * 1024 * 1024
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(archive.ArchiveError, match="unpacks to more than"):
        archive.safe_extract(bomb, dest, max_bytes=100 * 1024**2)
    assert sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) == 0  # refused before any data


def test_serve_refuses_a_bomb_with_one_line_and_no_temp_left(tmp_path, aiops_home):
    model = tmp_path / "model.tar.gz"
    with tarfile.open(model, "w:gz") as tar:
        folder = save_double(tmp_path / "m")
        tar.add(folder / "model.pt", arcname="model.pt")
        for i in range(50):
            info = tarfile.TarInfo(f"junk/{i}")
            tar.addfile(info, io.BytesIO(b""))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = run_aiops(
        aiops_home,
        tmp_path,
        "serve",
        str(model),
        "--port",
        "0",
        env={"AIOPS_SERVE__ARCHIVE_MAX_MEMBERS": "20", "TMPDIR": str(tmp)},
    )
    assert r.returncode == 2, r.output
    assert (
        r.stderr.startswith("error: ") and "more than 20 entries" in r.stderr and "Traceback" not in r.stderr
    )
    assert os.listdir(tmp) == []
