"""The run store (aiops/runs.py): run.json files written before the typed record still load and
are written back with the same keys; the folder layout agrees with the training contract's tree;
the job backends are chosen by one Mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiops.training import backends
from aiops.training.launch import Compute, LaunchOptions
from aiops.training.local import LocalBackend
from aiops.training.remote import SageMakerBackend

from aiops.errors import UsageError
from aiops.run_folder import ContainerPaths
from aiops.runs import RunRecord, RunStore, find_run

# run.json as aiops wrote it before the record was typed (a completed local run, trimmed of nothing)
OLD_LOCAL = {
    "job_name": "digits-cnn-1",
    "status": "Completed",
    "runner_pid": 4242,
    "runner_start_time": 99,
    "created_at": 1764600000.5,
    "ended_at": 1764600060.25,
    "duration_seconds": 59.75,
    "run_dir": "/tmp/r/digits-cnn-1",
    "base_dir": "/tmp/r/digits-cnn-1/opt/ml",
    "checkpoint_dir": "/tmp/r/digits-cnn-1/opt/ml/checkpoints",
    "resumed_from": None,
    "entry_point": "train.py",
    "source_dir": "/src/digits",
    "config": {
        "entry_point": "train.py",
        "source_dir": "/src/digits",
        "hyperparameters": {"epochs": 2},
        "channels": {"train": "/data/train"},
        "instance_type": "local",
        "nproc": None,
        "distribution": None,
        "follow_symlinks": False,
        "input_modes": {},
        "channel_sharding": {},
        "metric_definitions": [{"Name": "loss", "Regex": "loss=([0-9.]+)"}],
    },
    "hyperparameters": {"epochs": 2},
    "command": ["python", "train.py", "--epochs", "2"],
    "exit_code": 0,
    "failure_reason": None,
    "final_metrics": {"loss": 0.25, "test_accuracy": 0.97},
    "artifacts": {
        "model": "/tmp/r/digits-cnn-1/output/model.tar.gz",
        "output": "/tmp/r/digits-cnn-1/output/output.tar.gz",
        "model_dir": "/tmp/r/digits-cnn-1/opt/ml/model",
    },
    "requirement_problems": [],
    "warnings": [],
    "distribution": "none",
    "script_pid": 4243,
    "script_start_time": 100,
}
# an older remote record: no runner, no base_dir, keys the local one lacks
OLD_REMOTE = {
    "job_name": "train-2026-12-01",
    "remote": True,
    "region": "us-east-1",
    "stack": "dev",
    "status": "Completed",
    "created_at": 1764600000.0,
    "run_dir": "/tmp/r/train-2026-12-01",
    "entry_point": "train.py",
    "hyperparameters": {},
    "config": {
        "entry_point": "train.py",
        "source_dir": "/src",
        "instance_type": "ml.g5.xlarge",
        "instance_count": 2,
        "spot": True,
        "network_isolation": False,
        "vpc": False,
        "channels": {"train": "s3://b/channels/train/sha256/x/"},
    },
    "large_files": [["big.bin", 123456789]],
    "estimated_max_cost_usd": 1.69,
    "final_metrics": {"loss": 0.5},
    "artifacts": {"model_s3": "s3://b/jobs/train-2026-12-01/output/model.tar.gz"},
    "code_bundle": {"uri": "s3://b/code/x.tar.gz", "sha256": "x", "files": ["train.py"], "bytes": 10},
    "uploaded_bytes": 10,
    "request": {"TrainingJobName": "train-2026-12-01"},
    "client_token": "abc",
    "create_outcome": "created",
    "accepted_seconds": 0.5,
    "remote_summary": {"billable_seconds": 30, "training_seconds": 100, "spot_saving_percent": 70.0},
    "a_key_from_a_newer_aiops": {"kept": True},
}


@pytest.mark.parametrize("old", [OLD_LOCAL, OLD_REMOTE], ids=["local", "remote"])
def test_an_older_run_json_loads_typed_and_is_written_back_unchanged(tmp_path: Path, old: dict) -> None:
    store = RunStore(tmp_path / "runs")
    folder = store.create(old["job_name"])
    folder.record_file.write_text(json.dumps(old))
    record = store.load(old["job_name"])
    assert isinstance(record, RunRecord) and record.status == "Completed"
    assert record.final_metrics == old["final_metrics"]
    store.save(record)
    assert json.loads(folder.record_file.read_text()) == old  # no key added, none lost, none changed


def test_typed_fields_of_older_records(tmp_path: Path) -> None:
    local, remote = RunRecord.from_json(OLD_LOCAL), RunRecord.from_json(OLD_REMOTE)
    assert local.artifacts.model == OLD_LOCAL["artifacts"]["model"] and not local.remote
    assert dict(local.artifacts.items()) == OLD_LOCAL["artifacts"]
    assert local.config is not None and local.config.metric_definitions[0]["Name"] == "loss"
    assert local.script_name == "train.py" and not local.single_script
    assert remote.remote and remote.artifacts.model_s3 and remote.config.instance_count == 2  # type: ignore[union-attr]
    assert remote.large_files == [("big.bin", 123456789)]
    assert remote.code_bundle is not None and remote.code_bundle.files == ["train.py"]
    assert remote.remote_summary is not None and remote.remote_summary.billable_seconds == 30
    assert remote.model_extra == {"a_key_from_a_newer_aiops": {"kept": True}}
    # a record of a single script: its config has no source dir, the script is named by its file
    single = RunRecord.from_json(
        {
            "job_name": "s",
            "status": "Completed",
            "entry_point": "train.py",
            "source_dir": "/src",
            "config": {"entry_point": "/src/train.py", "source_dir": None},
        }
    )
    assert single.single_script and single.script_name == "train.py"
    # the smallest records older tools and tests wrote still load
    bare = RunRecord.from_json({"job_name": "r", "remote": True})
    assert bare.status is None and bare.remote and bare.to_json() == {"job_name": "r", "remote": True}


def test_the_folder_is_the_contracts_tree(tmp_path: Path) -> None:
    folder = RunStore(tmp_path).folder("job-1")
    tree = ContainerPaths(folder.base)
    assert folder.base == tmp_path / "job-1" / "opt" / "ml"
    assert (folder.model_dir, folder.code_dir, folder.checkpoints, folder.channel("test")) == (
        tree.model,
        tree.code,
        tree.checkpoints,
        tree.channel("test"),
    )
    assert folder.model_archive == tmp_path / "job-1" / "output" / "model.tar.gz"
    assert folder.local_model_archive() is None
    folder.output.mkdir(parents=True)
    folder.model_archive.write_bytes(b"\x1f\x8b")
    assert folder.local_model_archive() == folder.model_archive


def test_find_run_by_name_or_folder_and_nothing_else(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = RunStore(tmp_path / "runs")
    folder = store.create("run-1")
    store.save(RunRecord(job_name="run-1", status="Completed", run_dir=str(folder.root)))
    assert store.find("run-1") == folder == find_run(str(folder.root))
    assert find_run("run-1") is None  # a name needs the runs folder
    assert store.find("no-such-run") is None and not store.exists("..") and not store.exists("a/b")
    with pytest.raises(UsageError, match="no local run named 'nope'.*recent: run-1"):
        store.load("nope")


def test_one_mode_switches_the_backend(tmp_path: Path) -> None:
    from aiops.settings import Settings

    store, settings = RunStore(tmp_path), Settings(home=tmp_path)
    local = RunRecord(job_name="a", status="Completed")
    remote = RunRecord(job_name="b", status="Completed", remote=True)
    assert backends.Mode.of(local) is backends.Mode.LOCAL_PROCESS
    assert backends.Mode.of(remote) is backends.Mode.SAGEMAKER_TRAINING_JOB
    assert isinstance(backends.of(local, store=store, settings=settings), LocalBackend)
    assert isinstance(backends.of(remote, store=store, settings=settings), SageMakerBackend)
    assert backends.Mode.choose(remote=True) is backends.Mode.SAGEMAKER_TRAINING_JOB
    with pytest.raises(UsageError, match="need --remote"):
        backends.create(
            backends.Mode.LOCAL_PROCESS,
            store=store,
            settings=settings,
            options=LaunchOptions(compute=Compute(enable_managed_spot_training=True)),
        )
    with pytest.raises(UsageError, match="exists and is not a folder"):
        (tmp_path / "file").write_text("")
        LaunchOptions(output_dir=tmp_path / "file")


def _code_strings_and_attributes(path: Path) -> tuple[list[str], list[str]]:
    """The string constants (docstrings left out) and attribute names a module's code uses."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    strings = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]
    attributes = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    return strings, attributes


def test_only_the_store_spells_the_record_and_the_cli_never_asks_where_a_job_runs() -> None:
    root = Path(__file__).resolve().parents[2]
    for room in ("cli", "inference", "infra", "training"):
        for module in sorted((root / room).rglob("*.py")):
            if "examples" in module.parts:
                continue
            strings, attributes = _code_strings_and_attributes(module)
            assert not [s for s in strings if "run.json" in s], (
                f"{module} reads run.json itself: use aiops.runs"
            )
            if room == "cli":
                assert "remote" not in attributes and "remote" not in strings, (
                    f"{module} branches on a record's mode: call the job backend (aiops.training.backends)"
                )
