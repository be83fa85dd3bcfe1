"""The GPU-fit check against crafted weights: zip bombs, a big .pt inside a model.tar.gz, impossible
safetensors shapes and malformed pickles. Each is read by a real process, the way `aiops preview
--offline --model` reads it, whose memory is the kernel's count (VmHWM in /proc/self/status); each
refusal is one line."""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from aiops import gpufit, tensorstats
from aiops.errors import UsageError

MB = 1 << 20
REPO = Path(__file__).resolve().parents[1]

# one process: the check on argv[1]; prints the outcome, then the peak RSS in MB
CHECK = """
import sys
from pathlib import Path
from aiops import tensorstats
from aiops.errors import UsageError
try:
    stats = tensorstats.model_stats(Path(sys.argv[1]))
    print("ok", stats.parameters)
except UsageError as err:
    print("refused", err)
status = Path("/proc/self/status").read_text()
print(int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) // 1024)
"""


def _check_in_a_process(path: Path) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and not done.stderr, done.stderr
    outcome, peak = done.stdout.rstrip("\n").rsplit("\n", 1)
    return outcome, int(peak)


def _baseline_mb(tmp_path: Path) -> int:
    """The same process on a small real safetensors file: what the check costs on its own."""
    path = tmp_path / "small.safetensors"
    blob = json.dumps({"w": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(8))
    outcome, peak = _check_in_a_process(path)
    assert outcome == "ok 4"
    return peak


def _zip_with_data_pkl(path: Path, inflated: int) -> None:
    """A torch.save-shaped zip whose data.pkl inflates to ``inflated`` bytes (zeros, deflated:
    the file is small), written as a stream."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=False) as member:
            block = bytes(MB)
            for _ in range(inflated // MB):
                member.write(block)
        archive.writestr("archive/version", "3\n")


def _understate_in_the_directory(path: Path, name: bytes, size: int) -> None:
    """Make the central directory claim ``name`` unpacks to ``size`` bytes (the local data unchanged)."""
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len] == name:
            struct.pack_into("<I", data, at + 24, size)
            path.write_bytes(bytes(data))
            return
        at = data.rfind(b"PK\x01\x02", 0, at)
    raise AssertionError("entry not found")


def test_a_zip_bomb_pt_is_refused_from_its_directory_with_bounded_memory(tmp_path):
    bomb = tmp_path / "model.pt"
    _zip_with_data_pkl(bomb, 256 * MB)
    assert bomb.stat().st_size < 2 * MB
    base = _baseline_mb(tmp_path)
    outcome, peak = _check_in_a_process(bomb)
    assert outcome.startswith("refused") and "data.pkl unpacks to 268435456 bytes" in outcome, outcome
    assert peak < base + 32, (peak, base)  # nothing of the 256 MB was read


def test_a_zip_bomb_whose_directory_lies_is_cut_at_the_budget(tmp_path):
    """The directory says 1 KB, the deflate stream holds 256 MB: the read stops at the directory's
    size (zipfile's own bound) and the member fails its CRC: one line, memory bounded."""
    bomb = tmp_path / "model.pt"
    _zip_with_data_pkl(bomb, 256 * MB)
    _understate_in_the_directory(bomb, b"archive/data.pkl", 1024)
    base = _baseline_mb(tmp_path)
    outcome, peak = _check_in_a_process(bomb)
    assert outcome.startswith("refused") and "not a torch.save archive" in outcome, outcome
    assert peak < base + 32, (peak, base)


def test_a_pt_inside_a_model_tar_gz_is_read_in_place(tmp_path):
    """A 128 MB tensor saved with torch.save inside a model.tar.gz: counted from data.pkl through
    the archive, never copied into memory."""
    torch = pytest.importorskip("torch")
    saved = io.BytesIO()
    torch.save({"w": torch.zeros(32 * MB, dtype=torch.float32)}, saved)  # 128 MB of zeros
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("model.pt")
        info.size = saved.getbuffer().nbytes
        saved.seek(0)
        tar.addfile(info, saved)
    del saved
    base = _baseline_mb(tmp_path)
    outcome, peak = _check_in_a_process(archive)
    assert outcome == f"ok {32 * MB}"
    assert peak < base + 48, (peak, base)  # a copy of the member would be 128 MB


@pytest.mark.parametrize(
    "shape, why",
    [
        ([-(10**12), 10**12], "dimension -1000000000000 is not a whole number from 0 up"),
        ([2**40, 2**40], "more than 281474976710656 elements"),
        ([10**400], "more than 281474976710656 elements"),  # a 401-digit integer, never multiplied
        ([1.5, 2], "dimension 1.5 is not a whole number"),
        ([True, 2], "dimension True is not a whole number"),
        (list(range(1, 100_001)), "100000 dimensions, more than 64"),
        ("4096", "is not a list of dimensions"),
    ],
)
def test_impossible_safetensors_shapes_are_one_line(tmp_path, shape, why):
    path = tmp_path / "model.safetensors"
    text = json.dumps({"w": {"dtype": "F16", "shape": "SHAPE", "data_offsets": [0, 8]}})
    shape_text = (
        "[" + ", ".join(str(d) if not isinstance(d, bool) else "true" for d in shape) + "]"
        if isinstance(shape, list)
        else json.dumps(shape)
    )
    blob = text.replace('"SHAPE"', shape_text).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    with pytest.raises(UsageError, match="impossible shape") as err:
        tensorstats.model_stats(path)
    assert why in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_a_deeply_nested_header_is_one_line(tmp_path):
    path = tmp_path / "model.safetensors"
    blob = b"[" * 200_000 + b"]" * 200_000
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    with pytest.raises(UsageError, match="its header is not JSON"):
        tensorstats.model_stats(path)


def _pt_with_pickle(path: Path, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01",  # cut off mid-way
        b"\x80\x02\xff.",  # an opcode that does not exist
        b"\x80\x02h\x05.",  # a memo entry never stored
        b"\x80\x02X\x07\x00\x00\x00storage" + b"t.",  # TUPLE without a MARK
        pickle.dumps(("storage", None, "0", "cpu", -5), protocol=2).replace(b".", b"Q.", 1),  # negative numel
        b"\x80\x02]" + b"}a" * 1_100_000 + b".",  # 2.2 M operations: past the budget
    ],
    ids=["truncated", "bad-opcode", "missing-memo", "no-mark", "negative-numel", "too-many-ops"],
)
def test_malformed_pickles_are_one_line(tmp_path, data):
    path = tmp_path / "model.pt"
    _pt_with_pickle(path, data)
    with pytest.raises(UsageError) as err:
        tensorstats.model_stats(path)
    message = str(err.value)
    assert message.startswith(f"{path.name}:") and "\n" not in message and len(message) < 500, message


def test_the_cli_refuses_a_bomb_with_one_line(tmp_path, run_cli):
    """`aiops preview --offline --model` on the bomb: one line, exit 2 (the fit check runs first)."""
    bomb = tmp_path / "model.pt"
    _zip_with_data_pkl(bomb, 64 * MB)
    result = run_cli("preview", "--offline", "--stack", "dev", "--model", str(bomb), cwd=REPO)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "data.pkl unpacks to" in lines[0], result.output


@pytest.mark.parametrize("value", [-32, 0, 2**40, 32.5, "32", True])
def test_a_config_json_with_impossible_sizes_is_refused_not_a_smaller_kv_cache(value):
    """A negative layer count would make the KV cache negative, and the model fit anywhere."""
    config = {"num_hidden_layers": value, "num_attention_heads": 32, "hidden_size": 4096}
    with pytest.raises(UsageError, match="num_hidden_layers=.* is not a whole number from 1"):
        gpufit.kv_shape_from_config(config)
