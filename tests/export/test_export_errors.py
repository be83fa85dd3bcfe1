"""`aiops export` bad input (exit 2, one line, nothing written) and the tolerance failure (exit 1).

The missing-sample case runs in a fresh process; the rest call the same entry in this process
(``cli_in_process``): each fresh process would spend ~3 s importing torch to print one line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


def _folder(tmp_path: Path, script: str, name: str = "m") -> Path:
    folder = tmp_path / name
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "inference.py").write_text(script)
    return folder


MLP = """
import torch

def model_fn(model_dir):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
"""

FFT = """
import torch

class Spectrum(torch.nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x).abs()

def model_fn(model_dir):
    return Spectrum()
"""

NOT_A_MODULE = """
def model_fn(model_dir):
    return lambda x: x * 2
"""


def _error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    assert "Traceback" not in r.output
    return lines[0]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32))
    return path


def test_eager_model_from_model_fn_exports_in_each_format(
    cli_in_process, tmp_path: Path, sample: Path
) -> None:
    folder = _folder(tmp_path, MLP)
    for fmt, q in (
        ("torchscript", "dynamic-int8"),
        ("onnx", None),
        ("onnx", "dynamic-int8"),
        ("torchscript", None),
    ):
        out = tmp_path / f"{fmt}-{q}.tar.gz"
        args = [
            "export",
            str(folder),
            "--format",
            fmt,
            "--sample",
            str(sample),
            "--out",
            str(out),
            "--bench-seconds",
            "0",
            "--min-agreement",
            "0.9",
        ]
        r = cli_in_process(*args, *(["--quantize", q] if q else []))
        assert r.returncode == 0, r.output
        assert out.is_file()


def test_unknown_format_and_quantize(cli_in_process, tmp_path: Path, sample: Path) -> None:
    folder = _folder(tmp_path, MLP)
    r = cli_in_process("export", str(folder), "--format", "tflite", "--sample", str(sample))
    assert r.returncode == 2 and "unknown format 'tflite'" in _error_line(r)
    r = cli_in_process(
        "export", str(folder), "--format", "onnx", "--quantize", "int4", "--sample", str(sample)
    )
    assert r.returncode == 2 and "unknown --quantize 'int4'" in _error_line(r)
    assert not list(tmp_path.glob("model-*.tar.gz"))


def test_missing_sample(cli, tmp_path: Path) -> None:
    folder = _folder(tmp_path, MLP)
    r = cli("export", str(folder), "--format", "onnx")
    assert r.returncode == 2 and "no sample" in _error_line(r) and "--sample" in _error_line(r)
    r = cli("export", str(folder), "--format", "onnx", "--sample", str(tmp_path / "nope.npy"))
    assert r.returncode == 2 and "no such file" in _error_line(r)


def test_sample_that_does_not_fit_names_the_shapes(cli_in_process, digits_run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(",".join(["0.5"] * 63) for _ in range(4)) + "\n")
    r = cli_in_process(
        "export",
        digits_run["run"],
        "--format",
        "torchscript",
        "--sample",
        str(bad),
        "--out",
        str(tmp_path / "o.tar.gz"),
    )
    line = _error_line(r)
    assert r.returncode == 2 and "[4, 63]" in line and "does not fit" in line, line
    assert not (tmp_path / "o.tar.gz").exists()


def test_untraceable_models(cli_in_process, tmp_path: Path, sample: Path) -> None:
    r = cli_in_process(
        "export", str(_folder(tmp_path, FFT, "fft")), "--format", "onnx", "--sample", str(sample)
    )
    line = _error_line(r)
    assert r.returncode == 2 and "cannot export the model to ONNX" in line and "fft" in line, line
    r = cli_in_process(
        "export",
        str(_folder(tmp_path, NOT_A_MODULE, "fn")),
        "--format",
        "torchscript",
        "--sample",
        str(sample),
    )
    line = _error_line(r)
    assert r.returncode == 2 and "not a torch.nn.Module" in line, line
    assert not list(tmp_path.glob("model-*.tar.gz"))


def test_never_writes_over_the_input(cli_in_process, digits_run, tmp_path: Path) -> None:
    run_dir = digits_run["home"] / "runs" / digits_run["run"]
    artifact = run_dir / "output" / "model.tar.gz"
    before = hashlib.sha256(artifact.read_bytes()).hexdigest()
    r = cli_in_process(
        "export",
        str(artifact),
        "--format",
        "torchscript",
        "--out",
        str(artifact),
        "--sample",
        str(digits_run["data"] / "test" / "digits.npz"),
    )
    assert r.returncode == 2 and "would write over" in _error_line(r)
    r = cli_in_process("export", digits_run["run"], "--format", "torchscript", "--out", str(artifact))
    assert r.returncode == 2 and "would write over" in _error_line(r)
    r = cli_in_process(
        "export",
        digits_run["run"],
        "--format",
        "torchscript",
        "--out",
        str(run_dir / "opt/ml/model/x.tar.gz"),
    )
    assert r.returncode == 2 and "into the input" in _error_line(r)
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == before
    assert not (run_dir / "opt/ml/model/x.tar.gz").exists()


def test_outside_tolerance_fails_with_the_numbers_and_writes_nothing(
    cli_in_process, digits_run, tmp_path: Path
) -> None:
    out = tmp_path / "int8.tar.gz"
    out_dir_before = sorted(p.name for p in tmp_path.iterdir())
    r = cli_in_process(
        "export",
        digits_run["run"],
        "--format",
        "onnx",
        "--quantize",
        "dynamic-int8",
        "--max-abs-diff",
        "0",
        "--out",
        str(out),
        "--json",
        "--bench-seconds",
        "0",
    )
    assert r.returncode == 1, r.output
    line = _error_line(r)
    assert "max abs difference" in line and "> 0" in line and "nothing written" in line
    import json

    s = json.loads(r.stdout)
    assert s["passed"] is False and s["max_abs_diff"] > 0 and s["out"] is None
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == out_dir_before  # no temp files left behind
