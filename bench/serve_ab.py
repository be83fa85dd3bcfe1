"""A/B of two `aiops serve` builds (and mosec) in one window: req/s, latency and server CPU per request.

For a shared, noisy machine: the variants are interleaved round by round, and besides wrk's req/s
and latencies it records the CPU time of the server's whole process tree per request (user +
system from /proc), which moves much less with other jobs' load than rates do. Same MLP, body
and wrk script as serve_bench.py.

    python bench/serve_ab.py --old-python /work/main/.venv/bin/python \\
        --variants old,new,old-b,new-b,mosec --conc 1,64 --duration 5 --rounds 2 --name serve-ab

Without --old-python both builds are this one (an A/A run: how noisy the window is). Variant keys:
``old`` / ``new`` (the build importable by --old-python / --new-python), with ``-b`` for ``--batch-size
32 --max-batch-delay 5``; ``mosec`` (2 workers, batch 32 / 5 ms). Writes bench/results/NAME.md and
NAME.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import serve_bench as sb  # noqa: E402


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in sb.process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--old-python",
        default=sys.executable,
        help="a python whose `aiops` is the A build (default: this one, an A/A noise check)",
    )
    parser.add_argument("--new-python", default=sys.executable, help="a python whose `aiops` is the B build")
    parser.add_argument("--variants", default="old,new,old-b,new-b,mosec")
    parser.add_argument("--conc", default="1,64")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="serve-ab")
    args = parser.parse_args()
    variants = args.variants.split(",")
    concs = [int(c) for c in args.conc.split(",")]
    work = Path(tempfile.mkdtemp(prefix="aiops-ab-"))
    model_dir, body, lua, env = sb.side_by_side_setup(work)
    python = {"old": args.old_python, "new": args.new_python}
    load_start = os.getloadavg()
    results: dict[str, list] = {}
    for round_ in range(args.rounds):
        for key in variants:
            build, _, batched = key.partition("-")
            proc, url = sb.start_side_by_side(
                args.new_python if key == "mosec" else python[build],
                key == "mosec",
                bool(batched),
                work,
                model_dir,
                env,
            )
            try:
                for _ in range(300):  # warm-up (every worker, every path)
                    sb.post(url, body.encode())
                for c in concs:
                    cpu0 = tree_cpu(proc.pid)
                    out = sb.run_wrk(url, lua, c, args.duration)
                    out["cpu_us_per_req"] = (tree_cpu(proc.pid) - cpu0) / max(1, out["requests"]) * 1e6
                    out["load"] = round(os.getloadavg()[0], 2)
                    results.setdefault(f"{key} c={c}", []).append(out)
                    print(round_, key, c, out, flush=True)
            finally:
                sb.stop(proc)
    summary = {
        name: {
            k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")
        }
        | {"errors": sum(r["errors"] for r in runs)}
        for name, runs in results.items()
    }
    record = {
        "started_load": load_start,
        "ended_load": os.getloadavg(),
        "variants": variants,
        "conc": concs,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "old_python": args.old_python,
        "new_python": args.new_python,
        "summary": summary,
        "runs": results,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# A/B: {args.name}",
        "",
        f"{record['date']}; load average {load_start[0]:.1f} at start, {record['ended_load'][0]:.1f} at "
        "the end (a shared 2-core machine: other sessions' tests run meanwhile, so rates are noisy; "
        f"compare variants within this file, prefer the CPU column). Medians of {args.rounds} "
        f"interleaved rounds of {args.duration} s. old = `{args.old_python}`, new = `{args.new_python}`.",
        "",
        "Command: `python bench/serve_ab.py --old-python " + args.old_python + f" --variants {args.variants} "
        f"--conc {args.conc} --duration {args.duration} --rounds {args.rounds} --name {args.name}`",
        "",
        "| variant | req/s | p50 ms | p99 ms | server CPU µs/request | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(summary, key=lambda n: (int(n.split("c=")[1]), n)):
        s = summary[name]
        lines.append(
            f"| {name} | {s['rps']:.0f} | {s['p50_ms']:.2f} | "
            f"{s['p99_ms']:.1f} | {s['cpu_us_per_req']:.0f} | {s['errors']} |"
        )
    (HERE / "results" / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
