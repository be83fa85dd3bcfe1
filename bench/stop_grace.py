"""How long `aiops train` takes to stop a script that ignores SIGTERM (SIGKILL after the grace).

SageMaker sends SIGTERM and kills the container after 120 s; `aiops train` does the same with
`train.stop_grace_seconds`. With a 1 s grace the whole stop (SIGTERM to the CLI, SIGTERM to the
script's group, SIGKILL after 1 s, run record written, CLI exits 143) should take about 1 s, never the
120 s default. tests/training/test_train_cli.py checks the behaviour; the timing lives here.

    python bench/stop_grace.py [--runs N] [--grace S]   # writes bench/results/stop_grace.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiops.runs import RunStore
from aiops.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
STUBBORN = """import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(os.path.join(os.environ["AIOPS_CHECKPOINT_DIR"], "started"), "w").close()
while True:
    time.sleep(0.05)
"""


def one_stop(root: Path, grace: float, index: int) -> float:
    home = root / "home"
    script = root / "stubborn.py"
    script.write_text(STUBBORN)
    job = f"stubborn-{index}"
    env = {**os.environ, "AIOPS_HOME": str(home), "AIOPS_TRAIN__STOP_GRACE_SECONDS": str(grace)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiops.cli.app", "train", str(script), "--job-name", job],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # the run folder's layout is the run store's (aiops.runs), not spelled here
    started = RunStore(Settings(home=home).runs_dir).folder(job).checkpoints / "started"
    while not started.exists():
        if proc.poll() is not None:
            raise SystemExit(f"aiops train exited early with {proc.returncode}")
        time.sleep(0.02)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=grace + 120)
    elapsed = time.perf_counter() - t0
    if code != 143:
        raise SystemExit(f"expected exit 143 after SIGTERM, got {code}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--out", default=str(RESULTS), help="folder for stop_grace.md / .json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_stop(Path(tmp), args.grace, i) for i in range(args.runs)]
    median = statistics.median(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "grace_seconds": args.grace,
        "runs_seconds": runs,
        "median_seconds": median,
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    (out / "stop_grace.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "stop_grace.md").write_text(
        "# SIGTERM -> exit of `aiops train` with a script that ignores SIGTERM (bench/stop_grace.py)\n\n"
        f"Machine: {data['machine']}; 1-minute load average {data['load_average'][0]:.2f}.\n"
        f"`train.stop_grace_seconds` = {args.grace:g}; {args.runs} runs.\n\n"
        f"Median {median:.2f} s (runs: {', '.join(f'{r:.2f}' for r in runs)}); the grace plus the time to "
        "write the run record and exit. The SageMaker default grace is 120 s.\n"
    )
    print(f"median {median:.2f} s over {args.runs} runs (grace {args.grace:g} s)")


if __name__ == "__main__":
    main()
