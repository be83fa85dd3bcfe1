"""`aiops tune --remote` on the emulated AWS: one CreateHyperParameterTuningJob, whose trials the
platform runs as training jobs (the script under the container contract, as the execution role);
the CLI follows it: each trial as it finishes, the best trial and its model; `aiops jobs metrics`
reads a trial as any remote job."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from journey import Journey, stack_config

# The objective is the script's own hyperparameter, so which trial is best is known from its values.
SCRIPT = """
import argparse, os
p = argparse.ArgumentParser()
p.add_argument("--rate", type=float)
p.add_argument("--kind")
p.add_argument("--epochs", type=int)
args, _ = p.parse_known_args()
for epoch in range(args.epochs):
    print(f"epoch={epoch}; score={args.rate * (epoch + 1) / args.epochs:.6f};", flush=True)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w") as f:
    f.write(f"{args.rate} {args.kind}")
"""


def test_remote_tuning_job_runs_its_trials_and_names_the_best(journey: Journey, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(SCRIPT)
    journey.write_stack(stack_config())
    journey.apply(journey.preview())
    tune = journey.aiops(
        "tune",
        "train.py",
        "--source-dir",
        str(code),
        "--remote",
        "--on-demand",
        "--instance-type",
        "ml.c5.xlarge",
        "--hp",
        "epochs=2",
        "--range",
        "rate=0.1:10:log",
        "--range",
        "kind=a,b",
        "--metric",
        r"score=score=([0-9.]+);",
        "--objective",
        "score:max",
        "--max-trials",
        "3",
        "--parallel",
        "2",
        "--job-name",
        "toy-tune",
        "--download",
        "--json",
    )
    assert tune.returncode == 0, journey.log()[-6000:]
    summary = json.loads(tune.stdout)
    trials = summary["trials"]
    assert len(trials) == 3 and {t["status"] for t in trials} == {"Completed"}, summary
    assert all(t["job_name"].startswith("toy-tune-00") for t in trials)
    tuning = journey.platform.tuning_jobs["toy-tune"]
    for t in trials:  # each trial ran with its own values, as the platform chose them
        job = journey.platform.jobs[t["job_name"]]
        assert abs(t["value"] - t["hyperparameters"]["rate"]) < 1e-5
        assert job.request["HyperParameters"]["kind"] == t["hyperparameters"]["kind"]
        assert (
            job.request["HyperParameters"]["epochs"]
            == tuning.request["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"]
        )
    best = max(trials, key=lambda t: t["value"])
    assert summary["best"] == best["job_name"]
    downloaded = Path(best["model"])  # --download: the best model, from the platform's S3 object
    assert downloaded == journey.home / "runs" / best["job_name"] / "output" / "model.tar.gz"
    with tarfile.open(downloaded) as tar:
        assert tar.extractfile("model.txt").read().decode().split()[1] == best["hyperparameters"]["kind"]
    assert "trial 3/3" in tune.stderr

    metrics = journey.aiops("jobs", "metrics", best["job_name"], "--json")
    assert metrics.returncode == 0, journey.log()[-3000:]
    series = json.loads(metrics.stdout)["series"]
    rate = best["hyperparameters"]["rate"]  # printed rate/2, then rate (CloudWatch may average a minute)
    assert series["score"] and all(rate / 2 - 1e-5 <= v <= rate + 1e-5 for _, v in series["score"]), series
