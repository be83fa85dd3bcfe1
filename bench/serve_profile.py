"""Where a worker's time goes under load: py-spy samples one `aiops serve` worker while wrk drives it.

Same MLP and body as serve_bench.py. For each mode (unbatched, batch 32 / 5 ms) it starts
`aiops serve --workers 2`, runs wrk at c=64, samples one worker with `py-spy record --format raw`
(the folded stacks flamegraph.pl / speedscope read), and writes the top frames (self and
inclusive) to bench/results/serve-profile.md plus the raw stacks beside it. Not a test.

    pip install py-spy && apt-get install -y wrk
    python bench/serve_profile.py [--duration 8] [--rate 250]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve_bench import LUA, free_port, make_model, start, stop, wait_ping  # noqa: E402


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def summarise(raw: Path, top: int = 25) -> tuple[int, list, list]:
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    return total, own.most_common(top), incl.most_common(top)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() or not shutil.which("wrk"):
        sys.exit("needs py-spy (pip install py-spy) and wrk (apt-get install -y wrk)")
    work = Path(tempfile.mkdtemp(prefix="aiops-profile-"))
    model_dir = make_model(work / "model")
    body = json.dumps([0.5] * 784)
    lua = work / "post.lua"
    lua.write_text(LUA.replace("BODY", body))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Serving profile (py-spy, one worker of two, wrk c=64)",
        "",
        f"Load average at start: {os.getloadavg()[0]:.2f} (2 CPUs, shared machine). Script: "
        "bench/serve_profile.py. Frames are `function (file:line)`; self = samples where the frame was on "
        "top, inclusive = samples where it was anywhere on the stack. Raw folded stacks: "
        "serve-profile-<mode>.txt (flamegraph.pl or speedscope render them).",
        "",
    ]
    env = {"OMP_NUM_THREADS": "1"}
    for mode, extra in (("unbatched", []), ("batch32", ["--batch-size", "32", "--max-batch-delay", "5"])):
        port = free_port()
        proc = start(
            [
                sys.executable,
                "-m",
                "aiops.cli.app",
                "serve",
                str(model_dir),
                "--workers",
                "2",
                "--port",
                str(port),
                *extra,
            ],
            env,
            work / f"{mode}.log",
        )
        try:
            wait_ping(port)
            deadline = time.monotonic() + 120  # both workers loaded, not just the first
            while (work / f"{mode}.log").read_text().count("INFO ready:") < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            worker = children(proc.pid)[0]
            wrk = subprocess.Popen(
                [
                    "wrk",
                    "-t2",
                    "-c64",
                    f"-d{args.duration + 2}s",
                    "-s",
                    str(lua),
                    f"http://127.0.0.1:{port}/invocations",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1)  # let wrk reach steady state before sampling
            raw = out / f"serve-profile-{mode}.txt"
            subprocess.run(
                [
                    spy,
                    "record",
                    "-p",
                    str(worker),
                    "-d",
                    str(args.duration),
                    "-r",
                    str(args.rate),
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    "--nonblocking",
                ],
                check=True,
                capture_output=True,
            )
            rps = next(
                (ln.split()[-1] for ln in wrk.communicate()[0].splitlines() if "Requests/sec" in ln), "?"
            )
            total, own, incl = summarise(raw)
            lines += [
                f"## {mode} ({' '.join(extra) or 'no batching'}): "
                f"{rps} req/s during sampling, {total} samples",
                "",
                "| self % | frame |",
                "|---|---|",
            ]
            lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in own]
            lines += ["", "| inclusive % | frame |", "|---|---|"]
            lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in incl]
            lines.append("")
        finally:
            stop(proc)
    (out / "serve-profile.md").write_text("\n".join(lines))
    print(f"wrote {out / 'serve-profile.md'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
