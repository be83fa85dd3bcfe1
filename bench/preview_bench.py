"""Time `aiops preview --offline` of the full stack (Pulumi.dev.yaml: every component on).

Runs the real CLI in fresh processes (cold start included, as a user or CI sees it) and writes
bench/results/preview.md and .json. Goal: <= 5 s wall on the project's machine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
GOAL_S = 5.0


def once(*args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "aiops.cli.app", *args], cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"preview failed: {proc.stderr.strip()}")
    return elapsed


def main() -> None:
    once("preview", "--offline", "--json")  # warm the bytecode cache
    resources = len(json.loads(subprocess.run([sys.executable, "-m", "aiops.cli.app", "preview", "--offline", "--json"],
                                              cwd=REPO, capture_output=True, text=True).stdout)["resources"])
    rows = {}
    for label, args in {
        f"table (dev, {resources} resources, with costs)": ("preview", "--offline"),
        "json (dev)": ("preview", "--offline", "--json"),
        "json (prod)": ("preview", "--offline", "--json", "--stack", "prod"),
        "aiops cost (dev)": ("cost",),
    }.items():
        times = [once(*args) for _ in range(RUNS)]
        rows[label] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                       "max_s": round(max(times), 3), "runs": RUNS}
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "resources_dev": resources, "goal_s": GOAL_S}
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "preview.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        "# `aiops preview --offline` wall time",
        "",
        f"Fresh process per run (interpreter start, imports, mocks, rendering), {RUNS} runs each, "
        f"Python {meta['python']}, {meta['cpus']} CPUs. Goal: <= {GOAL_S} s.",
        "",
        "| command | median s | min s | max s |",
        "|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['median_s']} | {r['min_s']} | {r['max_s']} |")
    (out / "preview.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
