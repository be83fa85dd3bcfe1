"""`aiops tune` locally: trials are ordinary runs searched by Optuna, weak ones pruned as their
metric streams; and every bad input is one line, exit 2, before any run folder exists."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DIGITS = REPO_ROOT / "training" / "examples" / "digits" / "train.py"
# the accuracy the example prints after each epoch (`\b`: not the `final_test_accuracy=` at the end)
ACCURACY = r"test_accuracy=\btest_accuracy=([0-9.]+)"

# A script whose objective is its hyperparameter `rate`: reported once, then (rate below 0.5) it waits to
# be stopped, so only the tuner's pruning ends it; no timing is involved.
TOY = """
import argparse, sys, time
p = argparse.ArgumentParser()
p.add_argument("--rate", type=float)
p.add_argument("--kind", default="a")
args, _ = p.parse_known_args()
print(f"score={args.rate};", flush=True)
if args.rate < 0.5:
    time.sleep(120)
print(f"score={args.rate};", flush=True)
"""


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    src = tmp_path / "toy"
    src.mkdir()
    (src / "train.py").write_text(TOY)
    return src


def _spec(**overrides):
    from aiops.training.metrics import parse_metric_option
    from aiops.training.tune import tuning_spec

    args = {
        "ranges": ["rate=0.0:1.0"],
        "objective": "score:max",
        "max_trials": 4,
        "parallel": 2,
        "metric_definitions": [parse_metric_option(r"score=score=([0-9.]+);")],
    }
    args.update(overrides)
    ranges, objective = args.pop("ranges"), args.pop("objective")
    return tuning_spec(ranges, objective, **args)


def test_ranges_parse_to_sagemaker_shapes() -> None:
    from aiops.training.tune import parse_range

    assert parse_range("lr=1e-5:1e-2:log").as_sagemaker() == {
        "Name": "lr",
        "MinValue": "1e-05",
        "MaxValue": "0.01",
        "ScalingType": "Logarithmic",
    }
    assert parse_range("epochs=1:4").as_sagemaker() == {
        "Name": "epochs",
        "MinValue": "1",
        "MaxValue": "4",
        "ScalingType": "Auto",
    }
    assert parse_range("batch-size=16,32,64").as_sagemaker() == {
        "Name": "batch-size",
        "Values": ["16", "32", "64"],
    }
    assert parse_range("momentum=0.5:0.99:linear").kind == "Continuous"


def test_pruned_trials_stop_and_the_best_is_the_best(toy: Path, aiops_home: Path) -> None:
    """The tuner stops a trial from its streamed metric (here a threshold pruner, so which trials are
    pruned follows from their values alone): those runs end Stopped by the tuner, the rest Completed."""
    import optuna
    from aiops.training import tune_local
    from aiops.training.jobs import JobConfig
    from aiops.training.metrics import parse_metric_option
    from aiops.training.tune import best_trial

    from aiops.runs import RunStore
    from aiops.settings import get_settings

    settings = get_settings()
    store = RunStore(settings.runs_dir)
    spec = _spec()
    config = JobConfig(
        entry_point="train.py",
        source_dir=str(toy),
        metric_definitions=[parse_metric_option(r"score=score=([0-9.]+);")],
    )
    finished = []

    class Events:
        def trial_started(self, trial):
            pass

        def trial_finished(self, trial, done, total):
            finished.append((trial.job_name, done, total))

    trials = tune_local.tune(
        config,
        spec,
        store=store,
        settings=settings,
        events=Events(),
        base_name="toy-tune",
        seed=3,
        pruner=optuna.pruners.ThresholdPruner(lower=0.5),
    )
    assert [t.job_name for t in trials] == [f"toy-tune-00{i}" for i in range(1, 5)]
    assert sorted(done for _, done, _ in finished) == [1, 2, 3, 4]
    for t in trials:
        record = store.load(t.job_name)
        assert Path(t.run_dir).is_dir() and record.hyperparameters["rate"] == t.hyperparameters["rate"]
        if t.hyperparameters["rate"] < 0.5:
            assert (t.status, record.status, record.stopped_by) == ("Pruned", "Stopped", tune_local.PRUNED_BY)
        else:
            assert (t.status, record.status, t.value) == ("Completed", "Completed", t.hyperparameters["rate"])
    completed = [t for t in trials if t.status == "Completed"]
    # the seeded sampler's first draws (random, before TPE starts) fall on both sides of 0.5
    assert completed and len(completed) < len(trials), trials
    best = best_trial(trials, spec.objective)
    assert best is not None and best.value == max(t.value for t in completed)


@pytest.mark.slow
def test_digits_tuning_runs_trials_as_runs_and_marks_the_best(
    digits_channels: Path, run_cli, cli_in_process
) -> None:
    """A few quick trials of the digits example (one epoch each, two at a time): each is a run with
    its folder; the best trial's accuracy is the best in the table; `jobs metrics` reads a trial."""
    result = run_cli(
        "tune",
        str(DIGITS),
        "--channel",
        f"train={digits_channels / 'train'}",
        "--channel",
        f"test={digits_channels / 'test'}",
        "--hp",
        "epochs=1",
        "--hp",
        "threads=1",
        "--range",
        "lr=1e-3:3e-2:log",
        "--range",
        "batch-size=32,128",
        "--metric",
        ACCURACY,
        "--objective",
        "test_accuracy:max",
        "--max-trials",
        "3",
        "--parallel",
        "2",
        "--seed",
        "0",
        "--job-name",
        "digits-tune",
        "--json",
    )
    assert result.returncode == 0, result.output
    summary = json.loads(result.stdout)
    trials = summary["trials"]
    assert [t["job_name"] for t in trials] == ["digits-tune-001", "digits-tune-002", "digits-tune-003"]
    for t in trials:
        assert t["status"] == "Completed", t
        assert Path(t["run_dir"], "run.json").is_file() and Path(t["model"]).is_file()
        assert 1e-3 <= t["hyperparameters"]["lr"] <= 3e-2 and t["hyperparameters"]["batch-size"] in (32, 128)
    best = next(t for t in trials if t["job_name"] == summary["best"])
    assert best["value"] == max(t["value"] for t in trials)

    listed = cli_in_process("jobs", "list", "--json")
    assert {t["job_name"] for t in trials} <= {r["job_name"] for r in json.loads(listed.stdout)}
    metrics = cli_in_process("jobs", "metrics", summary["best"], "--json")
    assert metrics.returncode == 0, metrics.output
    series = json.loads(metrics.stdout)["series"]
    assert series["test_accuracy"][-1][1] == best["value"]


def test_the_table_marks_the_best_trial(toy: Path, run_cli) -> None:
    result = run_cli(
        "tune",
        "train.py",
        "--source-dir",
        str(toy),
        "--range",
        "rate=0.6,0.9,0.7",
        "--range",
        "kind=a,b",
        "--metric",
        r"score=score=([0-9.]+);",
        "--objective",
        "score:min",
        "--max-trials",
        "3",
        "--job-name",
        "toy",
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("│") and "toy-00" in line]
    assert len(rows) == 3
    values = {line.split("│")[3].strip(): float(line.split("│")[-2]) for line in rows}
    marked = [line.split("│")[3].strip() for line in rows if "*best*" in line]
    assert marked == [min(values, key=values.get)]
    assert f"best: {marked[0]} score=" in result.stdout


BAD = [
    (["--range", "lr=1e-2:1e-5"], "--range lr: the bounds are inverted"),
    (["--range", "lr=0:1e-2:log"], "--range lr: log scale needs bounds above 0"),
    (["--range", "lr=-1:1:log"], "--range lr: log scale needs bounds above 0"),
    (["--objective", "accuracy:max"], "--objective accuracy: no --metric definition of that name"),
    (["--parallel", "4", "--max-trials", "3"], "--parallel 4 is greater than --max-trials 3"),
    (["--range", "lr"], "--range 'lr': expected NAME=LOW:HIGH"),
    (["--objective", "score:best"], "--objective 'score:best': expected METRIC:max or METRIC:min"),
]


@pytest.mark.parametrize(("extra", "line"), BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_is_one_line_exit_2_before_any_run(
    toy: Path, cli_in_process, aiops_home: Path, extra: list[str], line: str
) -> None:
    args = {"--range": "rate=0.1:0.9", "--objective": "score:max", "--max-trials": "3", "--parallel": "1"}
    pairs = dict(zip(extra[::2], extra[1::2], strict=True))
    args.update(pairs)
    argv = ["tune", "train.py", "--source-dir", str(toy), "--metric", r"score=score=([0-9.]+);"]
    for key, value in args.items():
        argv += [key, value]
    result = cli_in_process(*argv)
    assert result.returncode == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and line in lines[0], result.stderr
    assert not (aiops_home / "runs").exists() or not any((aiops_home / "runs").iterdir())


def test_remote_bad_input_is_refused_before_any_upload(toy: Path, cli_in_process) -> None:
    """The same checks come first with --remote: no AWS is reachable here, so anything that got as
    far as an upload would fail differently."""
    result = cli_in_process(
        "tune",
        "train.py",
        "--source-dir",
        str(toy),
        "--remote",
        "--range",
        "rate=0:1:log",
        "--metric",
        r"score=score=([0-9.]+);",
        "--objective",
        "score:max",
        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
    )
    assert result.returncode == 2 and "log scale needs bounds above 0" in result.stderr, result.output


def test_remote_tuning_over_the_budget_is_refused_before_any_upload(toy: Path, cli_in_process) -> None:
    """Every trial's worst case counts: 20 trials of an hour on ml.g5.xlarge are over $1. The endpoint
    is a closed port, so an upload would have failed with another line."""
    result = cli_in_process(
        "tune",
        "train.py",
        "--source-dir",
        str(toy),
        "--remote",
        "--role",
        "arn:aws:iam::123456789012:role/r",
        "--bucket",
        "b",
        "--region",
        "us-east-1",
        "--instance-type",
        "ml.g5.xlarge",
        "--on-demand",
        "--max-run",
        "3600",
        "--range",
        "rate=0.1:1.0",
        "--metric",
        r"score=score=([0-9.]+);",
        "--objective",
        "score:max",
        "--max-trials",
        "20",
        "--parallel",
        "2",
        "--max-cost",
        "1",
        env={
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
        },
    )
    assert result.returncode == 2, result.output
    assert "over the budget of $1.00" in result.stderr and "20 trials" in result.stderr, result.stderr


def test_jobs_stop_stops_one_trial_and_the_tuning_goes_on(
    toy: Path, cli_in_process, aiops_home: Path
) -> None:
    """A trial's runner is `aiops tune`: while it runs, `jobs list` shows the trial InProgress (not
    Stale), and `jobs stop TRIAL` stops that trial's script alone; the other trial runs on."""
    import os
    import subprocess

    from helpers import wait_until

    tuner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiops.cli.app",
            "tune",
            "train.py",
            "--source-dir",
            str(toy),
            "--job-name",
            "held",
        ]
        + ["--range", "rate=0.1,0.2", "--metric", r"score=score=([0-9.]+);", "--objective", "score:max"]
        + ["--max-trials", "2", "--parallel", "2", "--no-early-stopping"],
        env={**os.environ, "AIOPS_HOME": str(aiops_home)},
        cwd=toy,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def running() -> dict | None:
            listed = cli_in_process("jobs", "list", "--json")
            rows = {r["job_name"]: r for r in json.loads(listed.stdout)} if listed.returncode == 0 else {}
            both = [rows.get(n) for n in ("held-001", "held-002")]
            logged = all((aiops_home / "runs" / n / "train.log").is_file() for n in ("held-001", "held-002"))
            return rows if logged and all(r and r["status"] == "InProgress" for r in both) else None

        wait_until(running, "both trials running (and not Stale)")
        wait_until(
            lambda: all(
                "score=" in (aiops_home / "runs" / n / "train.log").read_text()
                for n in ("held-001", "held-002")
            ),
            "both trials printing their score",
        )
        stop = cli_in_process("jobs", "stop", "held-001")
        assert stop.returncode == 0 and "script process group" in stop.stdout, stop.output
        wait_until(
            lambda: (
                json.loads(cli_in_process("jobs", "describe", "held-001", "--json").stdout)["status"]
                != "InProgress"
            ),
            "held-001 ending",
        )
        assert (
            json.loads(cli_in_process("jobs", "describe", "held-002", "--json").stdout)["status"]
            == "InProgress"
        )
        assert tuner.poll() is None  # the tuner goes on with the other trial
        assert cli_in_process("jobs", "stop", "held-002").returncode == 0
        output, _ = tuner.communicate(timeout=120)
    finally:
        if tuner.poll() is None:
            tuner.kill()
            tuner.wait()
    assert tuner.returncode == 1 and "no trial completed" in output, output
