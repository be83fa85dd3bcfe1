"""The digits example on its own: data prep, and the training script run directly (no aiops runner)
in a hand-made SageMaker environment: accuracy, artifacts, serving handlers, stop + resume, DDP, failure."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from aiops.training.examples.digits import inference
from aiops.training.examples.digits.prepare import write_channels
from aiops.training.metrics import DEFAULT_PATTERN

from aiops.errors import UsageError
from aiops.run_folder import ContainerPaths, RunFolder

# TorchScript is what the SageMaker PyTorch serving container loads, deprecated or not
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "examples" / "digits" / "train.py"


def _metrics(stdout: str) -> dict[str, float]:
    """The last value of each metric, read the way the runner reads `name=value;` lines."""
    return {m.group(1): float(m.group(2)) for m in DEFAULT_PATTERN.finditer(stdout)}


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _state_dict(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


# --- data prep ---------------------------------------------------------------------------------


def test_channels_are_reproducible_stratified_and_well_formed(tmp_path: Path) -> None:
    a = write_channels(tmp_path / "a")
    write_channels(tmp_path / "b")
    other_seed = write_channels(tmp_path / "c", seed=1)
    for name in ("train", "test"):
        assert Path(a[name]["path"]).read_bytes() == (tmp_path / "b" / name / "digits.npz").read_bytes()
    assert Path(a["test"]["path"]).read_bytes() != Path(other_seed["test"]["path"]).read_bytes()

    train, test = (np.load(a[name]["path"]) for name in ("train", "test"))
    assert a["train"]["samples"] + a["test"]["samples"] == 1797
    assert a["test"]["samples"] == 360  # 20 % by default
    for data in (train, test):
        assert data["x"].dtype == np.float32 and data["x"].shape[1] == 64
        assert data["y"].dtype == np.int64 and len(data["y"]) == len(data["x"])
        assert 0.0 <= data["x"].min() and data["x"].max() <= 1.0
    # stratified: every class keeps its share of the whole set in the test channel, to one sample
    share = np.bincount(np.concatenate([train["y"], test["y"]])) / 1797
    assert np.all(np.abs(np.bincount(test["y"]) - share * 360) <= 1)


def test_prep_touches_only_its_own_files(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("mine")
    write_channels(tmp_path, test_fraction=0.25, seed=3)
    assert (tmp_path / "train" / "notes.txt").read_text() == "mine"
    names = sorted(p.name for p in tmp_path.rglob("*"))
    assert names == ["digits.npz", "digits.npz", "notes.txt", "test", "train"]

    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(UsageError):
        write_channels(target)


# --- the training script -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(digits_default_run: dict) -> tuple[ContainerPaths, str]:
    """The session's run with the default hyperparameters (tests/conftest.py): the container tree
    the script wrote into, and its log."""
    folder = RunFolder(digits_default_run["run_dir"])
    return folder.container, folder.log.read_text()


@pytest.mark.slow
def test_defaults_reach_97_percent_and_save_servable_models(
    trained: tuple[ContainerPaths, str], digits_default_run: dict
) -> None:
    import torch

    run_dir, stdout = trained
    metrics = _metrics(stdout)
    assert metrics["final_test_accuracy"] >= 0.97
    # the last epoch's figure is the final one (what the runner reports as test_accuracy)
    assert metrics["test_accuracy"] == metrics["final_test_accuracy"]
    assert all(f"class_{c}_{kind}" in metrics for c in range(10) for kind in ("precision", "recall", "f1"))

    report = json.loads((run_dir.output_data / "metrics.json").read_text())
    assert report["test_accuracy"] == pytest.approx(metrics["final_test_accuracy"], abs=1e-4)
    assert (run_dir.checkpoints / "checkpoint.pt").exists()
    assert not list(run_dir.checkpoints.glob("*.tmp*"))

    test = np.load(digits_default_run["data"] / "test" / "digits.npz")
    state = _state_dict(run_dir.model / "model.pth")
    scripted = torch.jit.load(str(run_dir.model / "model.pt"))
    assert set(state) == set(scripted.state_dict())
    with torch.no_grad():
        predicted = scripted(torch.from_numpy(test["x"])).argmax(1).numpy()
    assert (predicted == test["y"]).mean() == pytest.approx(metrics["final_test_accuracy"], abs=1e-4)


@pytest.mark.slow
def test_serving_handlers_answer_json_and_csv(
    trained: tuple[ContainerPaths, str], digits_default_run: dict
) -> None:
    run_dir, _ = trained
    test = np.load(digits_default_run["data"] / "test" / "digits.npz")
    rows, labels = test["x"][:20], test["y"][:20]
    model = inference.model_fn(str(run_dir.model))

    def serve(body, content_type: str) -> list[dict]:
        prediction = inference.predict_fn(inference.input_fn(body, content_type), model)
        body, ctype = inference.output_fn(prediction, "application/json")
        assert ctype == "application/json"
        return json.loads(body)["predictions"]

    by_json = serve(json.dumps({"instances": rows.tolist()}), "application/json")
    assert serve(json.dumps(rows.tolist()).encode(), "application/json; charset=utf-8") == by_json
    csv_body = "\n".join(",".join(repr(float(v)) for v in row) for row in rows) + "\n"
    by_csv = serve(csv_body, "text/csv")
    assert [p["label"] for p in by_csv] == [p["label"] for p in by_json]
    assert len(by_json) == 20 and all(len(p["probabilities"]) == 10 for p in by_json)
    assert sum(p["probabilities"][p["label"]] == max(p["probabilities"]) for p in by_json) == 20
    assert abs(sum(by_json[0]["probabilities"]) - 1) < 1e-4
    assert np.mean([p["label"] for p in by_json] == labels) >= 0.9

    csv_out, csv_type = inference.output_fn(
        inference.predict_fn(inference.input_fn(csv_body, "text/csv"), model), "text/csv"
    )
    assert csv_type == "text/csv" and [int(line.split(",")[0]) for line in csv_out.splitlines()] == [
        p["label"] for p in by_json
    ]
    # errors carry their HTTP status, so the client reads the reason (400 / 415 / 406, not a bare 500)
    with pytest.raises(inference.RequestError, match="64") as info:
        inference.input_fn(json.dumps([[0.0] * 63]), "application/json")
    assert info.value.status_code == 400
    with pytest.raises(inference.RequestError, match="content type") as info:
        inference.input_fn("x", "image/png")
    assert info.value.status_code == 415
    with pytest.raises(inference.RequestError, match="accept") as info:
        inference.output_fn(np.zeros((1, 10)), "image/png")
    assert info.value.status_code == 406


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_bitwise_identical_weights(
    digits_default_run: dict, sagemaker_env, tmp_path: Path
) -> None:
    """SIGKILL (a lost host: no handler runs) after epoch 2, then the same command again: it resumes
    from the last checkpoint and ends with the weights of the uninterrupted default run. (SIGTERM,
    which the script handles itself, is tested through `aiops train` in test_train_digits.py.)"""
    import torch

    env = sagemaker_env(tmp_path, digits_default_run["data"])
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:  # the epoch line is printed once that epoch's checkpoint is on disk
        if line.startswith("epoch=2;"):
            proc.send_signal(signal.SIGKILL)
            break
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, out
    checkpoint = tmp_path / "checkpoints" / "checkpoint.pt"
    done = torch.load(checkpoint, weights_only=False)["epoch"]
    epochs = digits_default_run["summary"]["hyperparameters"].get("epochs", 15)
    assert 2 <= done < epochs
    assert not (tmp_path / "model" / "model.pth").exists()

    resumed = _run(env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {checkpoint}: {done} of {epochs} epochs done" in resumed.stdout
    weights = _state_dict(tmp_path / "model" / "model.pth")
    uninterrupted = _state_dict(RunFolder(digits_default_run["run_dir"]).model_dir / "model.pth")
    assert weights.keys() == uninterrupted.keys()
    for key in weights:
        assert torch.equal(weights[key], uninterrupted[key]), key


def test_failure_reason_is_written_for_sagemaker(sagemaker_env, tmp_path: Path) -> None:
    empty = tmp_path / "empty-channels"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    proc = _run(sagemaker_env(tmp_path / "run", empty), timeout=120)
    assert proc.returncode == 1
    reason = (tmp_path / "run" / "output" / "failure").read_text()
    assert reason.startswith("FileNotFoundError: no .npz file in channel folder")
    assert "Traceback" in proc.stderr
