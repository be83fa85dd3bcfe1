"""What a pause between forwards costs the next one: the bench MLP's forward CPU time back to back
versus after a gap (the thread sleeping, or spinning without touching memory), at batch 1 and 32.

A server never runs forwards back to back: between two it reads, parses and answers requests, or
waits for the next one (c=1). On this shared machine the model's 2.6 MB of weights do not survive
even a short gap in the caches, so the served forward costs well above the in-process ceiling
that serve_bench.py reports, whatever the server does. Same TorchScript MLP 784-512-512-10 as
serve_bench.py, one intra-op thread.

    python bench/forward_gap.py [--calls 300] [--rounds 3]

Writes bench/results/forward-gap.md and .json (CPU µs per forward: thread CPU time, so another
process taking the CPU does not count).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import serve_bench as sb  # noqa: E402

GAPS = [
    ("back to back", None, 0.0),
    ("0.5 ms asleep", "sleep", 0.0005),
    ("0.5 ms spinning", "spin", 0.0005),
    ("2 ms asleep", "sleep", 0.002),
    ("2 ms spinning", "spin", 0.002),
]


def forward_cpu_us(model, x, how: str | None, gap: float, calls: int) -> float:
    import torch

    total = 0
    with torch.inference_mode():
        for i in range(calls + 20):
            if how == "sleep":
                time.sleep(gap)
            elif how == "spin":
                end = time.perf_counter() + gap
                while time.perf_counter() < end:
                    pass
            start = time.thread_time_ns()
            model(x)
            if i >= 20:  # the first calls warm up TorchScript's executor
                total += time.thread_time_ns() - start
    return total / calls / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    model = torch.jit.load(str(sb.make_model(Path(tempfile.mkdtemp()) / "m") / "model.pt")).eval()
    runs: dict[str, list[float]] = {}
    load = os.getloadavg()
    for _ in range(args.rounds):  # interleaved: the machine's noise spreads over every case
        for batch in (1, 32):
            x = torch.rand(batch, 784)
            for name, how, gap in GAPS:
                runs.setdefault(f"{batch}|{name}", []).append(forward_cpu_us(model, x, how, gap, args.calls))
    summary = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_at_start": load,
        "calls": args.calls,
        "rounds": args.rounds,
        "median_cpu_us": summary,
        "runs": runs,
    }
    (HERE / "results" / "forward-gap.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# The forward after a gap",
        "",
        f"{record['date']}; load average {load[0]:.2f} at start (2 CPUs, shared). Script: "
        "bench/forward_gap.py. MLP 784-512-512-10 fp32 TorchScript, 1 thread, inference_mode; CPU µs "
        f"per forward (thread time), median of {args.rounds} interleaved rounds of {args.calls} calls.",
        "",
        "| gap before each forward | batch 1 | batch 32 | batch 32, per item |",
        "|---|---|---|---|",
    ]
    for name, _, _ in GAPS:
        one, many = summary[f"1|{name}"], summary[f"32|{name}"]
        lines.append(f"| {name} | {one:.0f} | {many:.0f} | {many / 32:.1f} |")
    (HERE / "results" / "forward-gap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
