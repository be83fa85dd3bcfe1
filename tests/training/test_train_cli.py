"""`aiops train` / `aiops jobs` end to end: real processes, real signals, no torch needed here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from helpers import wait_until

LOOP_SCRIPT = textwrap.dedent(
    """
    import argparse, os, signal, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--ignore-term", type=str, default="no")
    a = p.parse_args()
    ckpt = os.environ["AIOPS_CHECKPOINT_DIR"]
    if a.ignore_term == "yes":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    marker = os.path.join(ckpt, "last_epoch")
    start = int(open(marker).read()) + 1 if os.path.exists(marker) else 0
    print(f"starting at epoch {start}", flush=True)
    for epoch in range(start, a.epochs):
        time.sleep(a.sleep)
        print(f"epoch={epoch}; loss={1.0 / (epoch + 1):.4f};", flush=True)
        with open(marker + ".tmp", "w") as f:
            f.write(str(epoch))
        os.replace(marker + ".tmp", marker)
    # a script that writes into its channel must not reach the user's files
    train_dir = os.environ["SM_CHANNEL_TRAIN"]
    with open(os.path.join(train_dir, "rows.csv"), "a") as f:
        f.write("scribble\\n")
    with open(__file__, "a") as f:
        f.write("# the script edits its own copy\\n")
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "weights.txt"), "w") as f:
        f.write("w")
    os.makedirs(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "eval"), exist_ok=True)
    with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "eval", "report.txt"), "w") as f:
        f.write("ok")
    print("done", flush=True)
    """
)

FAILING_SCRIPT = textwrap.dedent(
    """
    import os, sys
    print("loading data", flush=True)
    print("about to fail", flush=True)
    with open(os.path.join(os.environ["SM_OUTPUT_DIR"], "failure"), "w") as f:
        f.write("ValueError: labels out of range (found 11 classes, expected 10)")
    sys.exit(3)
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    src.mkdir()
    (src / "loop.py").write_text(LOOP_SCRIPT)
    (src / "fail.py").write_text(FAILING_SCRIPT)
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (data / "rows.csv").write_text("1,2\n")
    return src


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_successful_run_layout_artifacts_and_user_files_untouched(
    run_cli, project: Path, tmp_path: Path, aiops_home: Path
) -> None:
    data = tmp_path / "data" / "train"
    before_code, before_data = _snapshot(project), _snapshot(data)
    (project / "requirements.txt").write_text("numpy\nsurely-not-installed-pkg==1.0\n")
    before_code = _snapshot(project)
    out = tmp_path / "exported"
    result = run_cli(
        "train",
        "loop.py",
        "--source-dir",
        str(project),
        "--hp",
        "epochs=3",
        "--channel",
        f"train={data}",
        "--metric",
        r"loss_metric=loss=([0-9.]+);",
        "--job-name",
        "loop-ok",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 0, result.output
    warnings = [line for line in result.output.splitlines() if "requirements.txt:" in line]
    assert len(warnings) == 1, warnings  # numpy is installed: only the missing one is named
    assert "surely-not-installed-pkg==1.0 is not installed" in warnings[0]
    assert _snapshot(project) == before_code, "the user's source dir changed"
    assert _snapshot(data) == before_data, "the user's channel data changed"

    run_dir = aiops_home / "runs" / "loop-ok"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "Completed" and record["exit_code"] == 0
    assert record["final_metrics"] == {
        "epoch": 2.0,
        "loss": pytest.approx(0.3333),
        "loss_metric": pytest.approx(0.3333),
    }
    base = run_dir / "opt" / "ml"
    for sub in (
        "input/config/hyperparameters.json",
        "input/config/resourceconfig.json",
        "input/config/inputdataconfig.json",
        "input/data/train/rows.csv",
        "output/success",
    ):
        assert (base / sub).exists(), sub
    assert not (base / "output" / "failure").exists()
    with tarfile.open(run_dir / "output" / "model.tar.gz") as tar:
        assert tar.getnames() == ["weights.txt"]
    with tarfile.open(run_dir / "output" / "output.tar.gz") as tar:
        assert "eval/report.txt" in tar.getnames()
    assert (out / "loop-ok" / "output" / "model.tar.gz").is_file()

    samples = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [s["value"] for s in samples if s["name"] == "loss"]
    assert losses == [1.0, 0.5, pytest.approx(0.3333)]
    assert all(s["elapsed_seconds"] >= 0 for s in samples)
    assert "epoch=1; loss=0.5000;" in (run_dir / "train.log").read_text()


def test_json_summary_shape(run_cli, project: Path, tmp_path: Path) -> None:
    result = run_cli(
        "train",
        "loop.py",
        "--source-dir",
        str(project),
        "--hp",
        "epochs=2",
        "--channel",
        f"train={tmp_path / 'data' / 'train'}",
        "--json",
    )
    assert result.returncode == 0, result.output
    summary = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert set(summary) == {
        "job_name",
        "status",
        "exit_code",
        "run_dir",
        "checkpoint_dir",
        "resumed_from",
        "duration_seconds",
        "hyperparameters",
        "final_metrics",
        "artifacts",
        "failure_reason",
    }
    assert summary["status"] == "Completed"
    assert summary["hyperparameters"] == {"epochs": 2}
    assert summary["job_name"].startswith("loop-")
    assert Path(summary["artifacts"]["model"]).is_file()
    assert "epoch=1; loss=0.5000;" in result.stderr  # the log went to stderr


def test_failing_script_is_reported_and_run_kept(run_cli, project: Path, aiops_home: Path) -> None:
    result = run_cli("train", "fail.py", "--source-dir", str(project), "--job-name", "will-fail")
    assert result.returncode == 1
    assert "Failed" in result.stdout
    assert "about to fail" in result.stdout  # the log tail
    assert "labels out of range" in result.stdout  # output/failure
    assert "Traceback" not in result.output
    record = json.loads((aiops_home / "runs" / "will-fail" / "run.json").read_text())
    assert record["status"] == "Failed" and record["exit_code"] == 3
    assert record["failure_reason"].startswith("ValueError: labels out of range")
    described = run_cli("jobs", "describe", "will-fail", "--json")
    assert json.loads(described.stdout)["status"] == "Failed"


def test_failure_file_written_when_script_writes_none(run_cli, tmp_path: Path, aiops_home: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text("raise SystemExit('boom')\n")
    result = run_cli("train", str(script), "--job-name", "crash")
    assert result.returncode == 1
    failure = (aiops_home / "runs" / "crash" / "opt" / "ml" / "output" / "failure").read_text()
    assert "ExecuteUserScriptError: exit code 1" in failure and "boom" in failure


def test_a_raising_script_prints_its_traceback_once(run_cli, tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text("def load():\n    raise ValueError('labels out of range')\nload()\n")
    result = run_cli("train", str(script), "--job-name", "tb-once")
    assert result.returncode == 1
    assert result.output.count("Traceback (most recent call last)") == 1, result.output
    assert result.output.count("raise ValueError('labels out of range')") == 1, result.output
    # the summary still names the failure and its exception
    failure = next(line for line in result.stdout.splitlines() if line.startswith("failure: "))
    assert "ExecuteUserScriptError" in failure and "ValueError: labels out of range" in failure
    described = run_cli("jobs", "describe", "tb-once")  # not streamed: the log tail, once
    assert described.output.count("Traceback (most recent call last)") == 1, described.output


def _start_train(
    aiops_home: Path, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aiops.cli.app", "train", *args],
        cwd=cwd,
        env={**os.environ, "AIOPS_HOME": str(aiops_home), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path) -> None:
    wait_until(path.exists, f"{path} written by the script")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_then_resume_keeps_checkpoints(
    project: Path, tmp_path: Path, aiops_home: Path, run_cli, sig: int, code: int
) -> None:
    data = tmp_path / "data" / "train"
    proc = _start_train(
        aiops_home,
        tmp_path,
        "loop.py",
        "--source-dir",
        str(project),
        "--hp",
        "epochs=50",
        "--hp",
        "sleep=0.1",
        "--channel",
        f"train={data}",
        "--job-name",
        "stoppable",
    )
    checkpoint = aiops_home / "runs" / "stoppable" / "opt" / "ml" / "checkpoints" / "last_epoch"
    _wait_for(checkpoint)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out + err
    record = json.loads((aiops_home / "runs" / "stoppable" / "run.json").read_text())
    assert record["status"] == "Stopped"
    stopped_at = int(checkpoint.read_text())
    assert 0 <= stopped_at < 49
    assert "aiops train --resume stoppable" in out

    resumed = run_cli(
        "train", "--resume", "stoppable", "--hp", "sleep=0", "--json", "--job-name", "stoppable-2"
    )
    assert resumed.returncode == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == "stoppable"
    assert summary["checkpoint_dir"] == record["checkpoint_dir"]
    assert f"starting at epoch {stopped_at + 1}" in resumed.stderr
    assert summary["final_metrics"]["epoch"] == 49.0
    assert summary["hyperparameters"] == {"epochs": 50, "sleep": 0}


def test_stop_kills_a_script_that_ignores_sigterm(project: Path, tmp_path: Path, aiops_home: Path) -> None:
    proc = _start_train(
        aiops_home,
        tmp_path,
        "loop.py",
        "--source-dir",
        str(project),
        "--hp",
        "epochs=500",
        "--hp",
        "sleep=0.05",
        "--hp",
        "ignore-term=yes",
        "--job-name",
        "stubborn",
        env={"AIOPS_TRAIN__STOP_GRACE_SECONDS": "1"},
    )
    _wait_for(aiops_home / "runs" / "stubborn" / "opt" / "ml" / "checkpoints" / "last_epoch")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    # the 1 s grace reached the stopper (not the 120 s default); how long the stop takes is
    # measured by bench/stop_grace.py, not asserted here
    assert "SIGKILL after 1s" in out + err
    record = json.loads((aiops_home / "runs" / "stubborn" / "run.json").read_text())
    assert record["status"] == "Stopped" and record["exit_code"] == -signal.SIGKILL


def test_jobs_list_and_describe(run_cli, project: Path, tmp_path: Path) -> None:
    assert "no local runs yet" in run_cli("jobs", "list").stdout
    for name in ("first-run", "second-run"):
        assert (
            run_cli(
                "train",
                "loop.py",
                "--source-dir",
                str(project),
                "--hp",
                "epochs=1",
                "--job-name",
                name,
                "--channel",
                f"train={tmp_path / 'data' / 'train'}",
            ).returncode
            == 0
        )
    listed = json.loads(run_cli("jobs", "list", "--json").stdout)
    assert [r["job_name"] for r in listed] == ["second-run", "first-run"]
    table = run_cli("jobs", "list").stdout
    assert "first-run" in table and "Completed" in table
    described = run_cli("jobs", "describe", "first-run")
    assert described.returncode == 0 and "model.tar.gz" in described.stdout
    record = next(r for r in listed if r["job_name"] == "first-run")
    rows = dict(line.split(None, 1) for line in described.stdout.splitlines()[:6] if line.strip())
    assert {"started", "ended", "duration"} <= set(rows), described.stdout
    assert rows["started"].strip() <= rows["ended"].strip()  # same format: text order is time order
    assert record["duration_seconds"] is not None


def test_jobs_list_shows_the_latest_metrics_of_a_running_job(
    project: Path, tmp_path: Path, aiops_home: Path, run_cli
) -> None:
    proc = _start_train(
        aiops_home,
        tmp_path,
        "loop.py",
        "--source-dir",
        str(project),
        "--hp",
        "epochs=500",
        "--hp",
        "sleep=0.05",
        "--job-name",
        "running",
    )
    try:
        # the checkpoint marker is written after the epoch's metric line
        _wait_for(aiops_home / "runs" / "running" / "opt" / "ml" / "checkpoints" / "last_epoch")
        table = run_cli("jobs", "list", env={"COLUMNS": "200"}).stdout
        row = next(line for line in table.splitlines() if "running" in line)
        assert "InProgress" in row and "epoch=" in row and "loss=" in row, table
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


BAD_INPUT = [
    (["train", "missing.py"], "no such file"),
    (["train", "loop.py", "--source-dir", "nowhere"], "--source-dir nowhere: no such folder"),
    (["train", "other.py", "--source-dir", "{project}"], "no such file in"),
    (["train", "/etc/hostname", "--source-dir", "{project}"], "not a file inside --source-dir"),
    (["train", "{project}/loop.py", "--channel", "train=/definitely/not/here"], "does not exist"),
    (["train", "{project}/loop.py", "--channel", "train"], "expected KEY=VALUE"),
    (["train", "{project}/loop.py", "--channel", "bad name={project}"], "channel name 'bad name'"),
    (["train", "{project}/loop.py", "--channel", "train=s3://bucket/key"], "S3 URI"),
    (["train", "{project}/loop.py", "--hp", "epochs"], "--hp 'epochs': expected KEY=VALUE"),
    (["train", "{project}/loop.py", "--hp", "learning rate=0.1"], "would be mangled"),
    (["train", "{project}/loop.py", "--hp", "sagemaker_program=x.py"], "is reserved"),
    (["train", "{project}/loop.py", "--hp", "LR=1", "--hp", "lr=2"], "both become SM_HP_LR"),
    (["train", "{project}/loop.py", "--metric", "loss=[unclosed"], "does not compile"),
    (["train", "{project}/loop.py", "--metric", "loss=loss: [0-9.]+"], "no capture group"),
    (["train", "{project}/loop.py", "--hyperparameters", "{project}/loop.py"], "not valid JSON"),
    (["train", "{project}/loop.py", "--job-name", "bad_name!"], "not valid for SageMaker"),
    (["train", "{project}/loop.py", "--nproc", "0"], "at least 1"),
    (["train", "{project}/loop.py", "--no-such-option"], "No such option"),
    (["train", "--resume", "never-ran"], "no local run named 'never-ran'"),
    (["train"], "missing ENTRY_POINT"),
    (["jobs", "describe", "never-ran"], "no local run named 'never-ran'"),
]


@pytest.mark.parametrize("args, expected", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_exits_2_with_one_line(
    cli_in_process, project: Path, aiops_home: Path, args: list[str], expected: str
) -> None:
    # the same entry in this process (~1 s each in a fresh one); the duplicate-name and bad-settings
    # refusals below are made by fresh processes
    result = cli_in_process(*[a.replace("{project}", str(project)) for a in args], cwd=project)
    assert result.returncode == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not (aiops_home / "runs").exists() or not any((aiops_home / "runs").iterdir())


def test_duplicate_job_name_is_refused(run_cli, project: Path) -> None:
    assert (
        run_cli(
            "train",
            "loop.py",
            "--source-dir",
            str(project),
            "--hp",
            "epochs=1",
            "--job-name",
            "twice",
            "--channel",
            f"train={project}",
        ).returncode
        == 0
    )
    again = run_cli("train", "loop.py", "--source-dir", str(project), "--job-name", "twice")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_invalid_settings_stop_before_work(run_cli, project: Path) -> None:
    result = run_cli(
        "train", "loop.py", "--source-dir", str(project), env={"AIOPS_TRAIN__STOP_GRACE_SECONDS": "-1"}
    )
    assert result.returncode == 2
    assert "train.stop_grace_seconds" in result.stderr and "AIOPS_TRAIN__STOP_GRACE_SECONDS" in result.stderr
