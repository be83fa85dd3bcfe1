"""`aiops export` on the kit's digits example: each format, served by `aiops serve`, int8 agreement,
deterministic bytes."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import summary

pytest.importorskip("onnxruntime")

CASES = [("torchscript", None), ("torchscript", "dynamic-int8"), ("onnx", None), ("onnx", "dynamic-int8")]
# exported twice, byte for byte the same (checked in the same test: one export fewer per case), the
# first time by `aiops export` in a fresh process, as a user runs it, the second in the test's own
# process; the other case is exported once, in the test's process (a fresh process exports plain
# TorchScript in test_exported_tarball_exports_again_and_keeps_code)
DETERMINISTIC = [("torchscript", "dynamic-int8"), ("onnx", None), ("onnx", "dynamic-int8")]


def _export(cli, run: str, fmt: str, quantize: str | None, out: Path, *extra: str):
    args = ["export", run, "--format", fmt, "--out", str(out), "--json", "--bench-seconds", "0.05", *extra]
    if quantize:
        args += ["--quantize", quantize]
    return cli(*args)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt,quantize", CASES, ids=["ts", "ts-int8", "onnx", "onnx-int8"])
def test_export_is_verified_served_and_agrees(
    cli, cli_in_process, serve, digits_run, tmp_path: Path, fmt, quantize
) -> None:
    out = tmp_path / "exported.tar.gz"
    first = cli if (fmt, quantize) in DETERMINISTIC else cli_in_process
    r = _export(first, digits_run["run"], fmt, quantize, out)
    assert r.returncode == 0, r.output
    s = summary(r)
    assert s["passed"] and s["out"] == str(out) and out.is_file()
    assert s["sample"]["shape"] == [360, 64]  # the run's test channel
    assert s["top1_agreement"] >= (0.99 if quantize else 0.999)
    if quantize:
        assert s["quantized_layers"] == 2  # the two Linear layers; convolutions stay fp32
        # before: model.pt + model.pth (fp32); after: one int8-Linear model
        assert s["size_bytes"]["model_file_after"] < 0.25 * s["size_bytes"]["model_file_before"]
    else:
        assert s["max_abs_diff"] <= 1e-4
    assert set(s["latency_ms"]) == {"batch_1", "batch_360"}
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    model_file = "model.onnx" if fmt == "onnx" else "model.pt"
    assert model_file in names and "code/inference.py" in names
    assert not {"model.pth"} & names
    if fmt == "onnx":
        assert "code/requirements.txt" in names and "code/original_inference.py" in names

    # served unchanged by `aiops serve`; all 360 test rows in one request
    test = np.load(digits_run["data"] / "test" / "digits.npz")
    server = serve(out)
    status, body = server.post(json.dumps({"instances": test["x"].tolist()}).encode())
    assert status == 200, body[:300]
    served = np.array([p["label"] for p in json.loads(body)["predictions"]])
    original = torch.jit.load(str(digits_run["home"] / "runs" / digits_run["run"] / "opt/ml/model/model.pt"))
    with torch.no_grad():
        expected = original(torch.from_numpy(test["x"])).argmax(1).numpy()
    agreement = float((served == expected).mean())
    assert agreement >= (0.99 if quantize else 1.0), agreement
    probs = json.loads(body)["predictions"][0]["probabilities"]
    assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-3  # the original predict_fn's softmax still runs

    if (fmt, quantize) in DETERMINISTIC:  # the same input gives the same bytes, in another process too
        again = tmp_path / "again.tar.gz"
        r = _export(cli_in_process, digits_run["run"], fmt, quantize, again)
        assert r.returncode == 0, r.output
        assert _sha(again) == _sha(out) == s["sha256"] == summary(r)["sha256"]


def test_exported_tarball_exports_again_and_keeps_code(
    cli, cli_in_process, digits_run, tmp_path: Path
) -> None:
    """A model.tar.gz as MODEL (the run's own artifact) with an explicit .npy sample."""
    artifact = digits_run["home"] / "runs" / digits_run["run"] / "output" / "model.tar.gz"
    packaged = tmp_path / "packaged.tar.gz"
    r = cli_in_process("model", "package", digits_run["run"], "--out", str(packaged))  # the setup
    assert r.returncode == 0, r.output
    sample = tmp_path / "x.npy"
    np.save(sample, np.load(digits_run["data"] / "test" / "digits.npz")["x"][:50])
    out = tmp_path / "ts.tar.gz"
    r = cli(
        "export",
        str(packaged),
        "--format",
        "torchscript",
        "--sample",
        str(sample),
        "--out",
        str(out),
        "--json",
        "--bench-seconds",
        "0.05",
    )
    assert r.returncode == 0, r.output
    s = summary(r)
    assert s["code"] == "kept"  # the example's model_fn loads model.pt: its code/ works unchanged
    assert s["sample"]["shape"] == [50, 64] and s["max_abs_diff"] == 0.0
    assert artifact.is_file()
