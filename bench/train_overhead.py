"""Harness overhead of `aiops train`, and `aiops --help` cold start.

Goal (issue 2): the digits example under `aiops train` is at most 3 % slower than the bare script run
with the same environment and arguments (median of 5 each); `aiops --help` takes at most 0.25 s.

The "same environment" is captured, not rebuilt: a probe script run under `aiops train` with the same
channels and hyperparameters records its environment and argv, and the bare runs reuse them. Runs
alternate (aiops, bare, aiops, ...) so drift in machine load hits both sides alike.

    python bench/train_overhead.py          # writes bench/results/train_overhead.{md,json}
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "examples" / "digits" / "train.py"
RESULTS = Path(__file__).resolve().parent / "results"
AIOPS = str(Path(sys.executable).parent / "aiops")  # the console script users run
RUNS = 5
PROBE = """import json, os, sys
with open(os.environ["BENCH_DUMP"], "w") as f:
    json.dump({"env": dict(os.environ), "argv": sys.argv[1:]}, f)
"""


def timed(command: list[str], env: dict[str, str], cpu: list[float] | None = None) -> float:
    """Wall seconds of the command; appends its CPU seconds (user + sys, all its processes) to `cpu`.
    CPU time is the figure other load on a shared machine distorts least."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall


def verdict(ok: bool) -> str:
    return "meets the goal" if ok else "MISSES the goal"


def main() -> None:
    from aiops.training.examples.digits.prepare import write_channels

    work = Path(tempfile.mkdtemp(prefix="aiops-bench-train-"))
    write_channels(work / "data")
    env = {**os.environ, "AIOPS_HOME": str(work / "home"), "BENCH_DUMP": str(work / "probe.json")}
    channels = [
        "--channel",
        f"train={work / 'data' / 'train'}",
        "--channel",
        f"test={work / 'data' / 'test'}",
    ]

    (work / "probe.py").write_text(PROBE)
    subprocess.run(
        [AIOPS, "train", str(work / "probe.py"), *channels, "--job-name", "probe"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = json.loads((work / "probe.json").read_text())
    bare_env = probe["env"]
    # the probe's run folders, emptied before each bare run (a left-over checkpoint would resume)
    fresh = [bare_env[k] for k in ("SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR", "AIOPS_CHECKPOINT_DIR")]

    load_before = os.getloadavg()[0]
    aiops_s, bare_s, aiops_cpu, bare_cpu = [], [], [], []
    for i in range(RUNS):
        aiops_s.append(
            timed([AIOPS, "train", str(SCRIPT), *channels, "--job-name", f"bench-{i}"], env, aiops_cpu)
        )
        for folder in fresh:
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
        bare_s.append(timed([sys.executable, str(SCRIPT), *probe["argv"]], bare_env, bare_cpu))

    # The harness's fixed cost, apart from the example: a script that only prints.
    (work / "noop.py").write_text("print('done')\n")
    noop_aiops = [
        timed([AIOPS, "train", str(work / "noop.py"), "--job-name", f"noop-{i}"], env) for i in range(RUNS)
    ]
    noop_bare = [timed([sys.executable, str(work / "noop.py")], env) for _ in range(RUNS)]

    timed([AIOPS, "--help"], env)  # one run to warm the file cache; "cold" means a fresh process
    help_s = [timed([AIOPS, "--help"], env) for _ in range(RUNS)]
    shutil.rmtree(work)

    aiops_med, bare_med, help_med = (statistics.median(v) for v in (aiops_s, bare_s, help_s))
    overhead = aiops_med / bare_med - 1
    result = {
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": RUNS,
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "train_aiops_s": [round(v, 3) for v in aiops_s],
        "train_bare_s": [round(v, 3) for v in bare_s],
        "train_aiops_median_s": round(aiops_med, 3),
        "train_bare_median_s": round(bare_med, 3),
        "train_overhead_pct": round(100 * overhead, 2),
        "train_overhead_of_minimums_pct": round(100 * (min(aiops_s) / min(bare_s) - 1), 2),
        "train_aiops_cpu_s": [round(v, 3) for v in aiops_cpu],
        "train_bare_cpu_s": [round(v, 3) for v in bare_cpu],
        "train_cpu_overhead_pct": round(
            100 * (statistics.median(aiops_cpu) / statistics.median(bare_cpu) - 1), 2
        ),
        "train_overhead_goal_pct": 3.0,
        "fixed_cost_s": round(statistics.median(noop_aiops) - statistics.median(noop_bare), 3),
        "noop_aiops_s": [round(v, 3) for v in noop_aiops],
        "noop_bare_s": [round(v, 3) for v in noop_bare],
        "help_s": [round(v, 3) for v in help_s],
        "help_median_s": round(help_med, 3),
        "help_goal_s": 0.25,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    noop_runs = ", ".join(f"{v:.3f}" for v in noop_aiops)
    (RESULTS / "train_overhead.md").write_text(f"""# `aiops train` overhead (bench/train_overhead.py)

Machine: {result["machine"]["arch"]}, {result["machine"]["cpus"]} cores, Python {result["machine"]["python"]}.
The digits example with default hyperparameters, {RUNS} runs each, alternating. 1-minute load average
{result["load_average_1min_before_after"][0]} before, {result["load_average_1min_before_after"][1]}
after: where it is near or above the core count, other work shares the cores and the wall times scatter.

| | median (s) | runs (s) |
|---|---|---|
| `aiops train train.py` | {aiops_med:.3f} | {", ".join(f"{v:.2f}" for v in aiops_s)} |
| bare `python train.py`, same env and argv | {bare_med:.3f} | {", ".join(f"{v:.2f}" for v in bare_s)} |
| `aiops train noop.py` (a script that only prints) | {statistics.median(noop_aiops):.3f} | {noop_runs} |
| bare `python noop.py` | {statistics.median(noop_bare):.3f} | {", ".join(f"{v:.3f}" for v in noop_bare)} |
| `aiops --help` (fresh process) | {help_med:.3f} | {", ".join(f"{v:.3f}" for v in help_s)} |

Harness overhead: {100 * overhead:+.1f} % of the medians ({verdict(overhead <= 0.03)}: <= 3 %);
{result["train_overhead_of_minimums_pct"]:+.1f} % of the fastest runs;
{result["train_cpu_overhead_pct"]:+.1f} % in median CPU time (user + sys;
{statistics.median(aiops_cpu):.2f} s vs {statistics.median(bare_cpu):.2f} s), which load from other work
on a shared machine distorts least. `aiops --help`: {help_med:.3f} s ({verdict(help_med <= 0.25)}: <=
0.25 s). The `aiops train` time is the whole command: CLI start, building the run folder, the script,
packing model.tar.gz/output.tar.gz and the run record. Its fixed cost, measured on a script that only
prints, is {result["fixed_cost_s"]:.3f} s: that alone is {100 * result["fixed_cost_s"] / bare_med:.1f} %
of this example's {bare_med:.2f} s, so the 3 % goal holds only for jobs longer than about
{result["fixed_cost_s"] / 0.03:.0f} s.
""")
    print((RESULTS / "train_overhead.md").read_text())


if __name__ == "__main__":
    main()
