"""The kit's example end to end through `aiops train`: accuracy, stop + resume bit-equality, DDP with
two processes under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "examples" / "digits" / "train.py"

pytestmark = pytest.mark.slow


def _last_epoch(metrics: Path) -> float:
    """The last `epoch` metric logged so far (complete lines only: the runner may be mid-write)."""
    if not metrics.exists():
        return 0
    lines = metrics.read_text().split("\n")[:-1]
    return max(
        (json.loads(line)["value"] for line in lines if json.loads(line)["name"] == "epoch"), default=0
    )


def _channels(run: dict) -> list[str]:
    data = run["data"]
    return ["--channel", f"train={data / 'train'}", "--channel", f"test={data / 'test'}"]


def _state_dict(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_example_reaches_97_percent_and_packs_both_models(digits_default_run: dict, tmp_path: Path) -> None:
    import numpy as np
    import torch

    summary = digits_default_run["summary"]  # `aiops train train.py --channel ...`, default hyperparameters
    assert summary["status"] == "Completed"
    assert summary["final_metrics"]["test_accuracy"] >= 0.97
    with tarfile.open(summary["artifacts"]["model"]) as tar:
        names = tar.getnames()
        assert {"model.pth", "model.pt"} <= set(names)
        tar.extractall(tmp_path / "model", filter="data")
    # the TorchScript model alone (what the serving container loads) classifies the test channel
    scripted = torch.jit.load(str(tmp_path / "model" / "model.pt"))
    test = np.load(digits_default_run["data"] / "test" / "digits.npz")
    with torch.no_grad():
        predicted = scripted(torch.from_numpy(test["x"])).argmax(dim=1).numpy()
    assert (predicted == test["y"]).mean() >= 0.97


def test_sigterm_then_resume_gives_bitwise_identical_weights(
    run_cli, digits_default_run: dict, aiops_home: Path, tmp_path: Path
) -> None:
    """`aiops train` forwards SIGTERM to the script, which stops at an epoch boundary (its checkpoint
    on disk); `--resume` ends with the weights of the uninterrupted run (the session's default run,
    the same hyperparameters and data)."""
    import torch

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiops.cli.app",
            "train",
            str(SCRIPT),
            *_channels(digits_default_run),
            "--job-name",
            "interrupted",
        ],
        env={**os.environ, "AIOPS_HOME": str(aiops_home)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = aiops_home / "runs" / "interrupted" / "metrics.jsonl"
    # stop it once epoch 2 is done, well before the end (a missing epoch fails here, not later)
    wait_until(lambda: _last_epoch(metrics) >= 2, "epoch 2 in metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "SIGTERM received: stopped after epoch" in out  # the script stopped itself, not killed
    stopped = json.loads((aiops_home / "runs" / "interrupted" / "run.json").read_text())
    assert stopped["status"] == "Stopped"
    assert not (Path(stopped["base_dir"]) / "model" / "model.pth").exists()  # it really stopped early

    resumed = run_cli("train", "--resume", "interrupted", "--job-name", "resumed", "--json")
    assert resumed.returncode == 0, resumed.output
    assert "resum" in resumed.stderr.lower()
    a = _state_dict(digits_default_run["run_dir"] / "opt" / "ml" / "model" / "model.pth")
    b = _state_dict(Path(json.loads(resumed.stdout)["run_dir"]) / "opt" / "ml" / "model" / "model.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_nproc_2_trains_with_ddp_on_cpu(run_cli, digits_default_run: dict) -> None:
    result = run_cli("train", str(SCRIPT), *_channels(digits_default_run), "--nproc", "2", "--json")
    assert result.returncode == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "Completed"
    assert summary["final_metrics"]["test_accuracy"] >= 0.97
    assert "cpu x 2 process(es)" in result.stderr  # two ranks trained, not one
    assert result.stderr.count("final_test_accuracy=") == 1  # only rank 0 reports and writes
    model_dir = Path(summary["run_dir"]) / "opt" / "ml" / "model"
    assert (model_dir / "model.pt").exists() and (model_dir / "model.pth").exists()
    assert (Path(summary["run_dir"]) / "opt" / "ml" / "output" / "data" / "metrics.json").exists()
