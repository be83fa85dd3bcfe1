"""Where a served request's CPU goes, native code included: `perf` samples of the whole machine while
wrk drives a server at c=64, split by process (server, wrk) and by library, in µs of CPU per request.

py-spy (bench/serve_profile.py) sees Python frames; this sees what they call: the forward inside
libtorch, simdjson's parse, the kernel's TCP work, the interpreter itself. Same MLP, body and wrk
script as serve_bench.py; aiops serve batched (2 workers, batch 32 / 5 ms) and mosec with the same
batching, one after the other.

    python bench/serve_cpu_split.py [--servers aiops-batch,mosec] [--seconds 8]

Needs `perf` (Debian: linux-perf) and the right to sample the whole machine (root, or
kernel.perf_event_paranoid <= 0). Writes bench/results/serve-cpu-split.md and .json.
"""

from __future__ import annotations

import argparse
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

import serve_bench as sb  # noqa: E402

# shared object -> what it is doing for a request
GROUPS = [
    ("torch (the forward)", ("libtorch", "libc10", "libgomp", "libmkl", "libiomp")),
    ("JSON decode (simdjson)", ("csimdjson",)),
    ("JSON encode/decode (orjson)", ("orjson",)),
    ("numpy", ("_multiarray_umath", "numpy")),
    ("Python interpreter", ("libpython", "python3")),
    (
        "HTTP parsing + event loop (httptools, uvloop, asyncio C)",
        ("parser.cpython", "loop.cpython", "_asyncio"),
    ),
    ("libc (memcpy, malloc, syscall stubs)", ("libc.so", "libstdc++", "libm.so", "ld-linux", "[vdso]")),
    ("kernel (TCP over loopback, syscalls, scheduling)", ("[kernel",)),
    ("mosec's Rust front end", ("mosec",)),
]


def group_of(dso: str) -> str:
    for name, keys in GROUPS:
        if any(k in dso for k in keys):
            return name
    return "other"


def sample(url: str, lua: Path, server_pid: int, seconds: int, data: Path) -> dict:
    """wrk at c=64 for seconds + 4; perf samples the whole machine for `seconds` in the middle."""
    wrk = subprocess.Popen(
        ["wrk", "-t2", "-c64", f"-d{seconds + 4}s", "--timeout", "10s", "-s", str(lua), url],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    servers = set(sb.process_tree(server_pid))
    subprocess.run(
        [
            "perf",
            "record",
            "-q",
            "-a",
            "-e",
            "cpu-clock",
            "-F",
            "1000",
            "-o",
            str(data),
            "--",
            "sleep",
            str(seconds),
        ],
        check=True,
        capture_output=True,
    )
    out = wrk.communicate(timeout=60)[0]
    rps = float(next(ln for ln in out.splitlines() if ln.startswith("RESULT")).split()[1])
    report = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--stdio",
            "-g",
            "none",
            "-n",
            "--sort",
            "pid,dso",
            "--field-separator=|",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    split: dict[str, dict[str, int]] = {"server": {}, "wrk": {}, "idle": {}, "other": {}}
    others: dict[str, int] = {}
    for line in report.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 4:
            continue
        samples, pid_comm, dso = int(fields[1]), fields[2], fields[3]
        pid = int(pid_comm.split(":", 1)[0])
        comm = pid_comm.split(":", 1)[1]
        # mosec's Rust front end (tokio threads) is not a child of the Python process that starts it
        who = (
            "server"
            if pid in servers or comm.startswith(("tokio-", "mosec"))
            else "wrk"
            if comm == "wrk"
            else "idle"
            if comm == "swapper"
            else "other"
        )
        group = group_of(dso)
        if who == "other":
            others[comm] = others.get(comm, 0) + samples
        split[who][group] = split[who].get(group, 0) + samples
    requests = rps * seconds  # requests answered while perf sampled (1 sample = 1 ms of CPU)
    per_req = {
        who: {g: round(n * 1000.0 / requests, 1) for g, n in sorted(groups.items(), key=lambda kv: -kv[1])}
        for who, groups in split.items()
    }
    return {
        "rps": rps,
        "seconds": seconds,
        "requests": round(requests),
        "us_per_request": per_req,
        "other_processes_us_per_request": {
            c: round(n * 1000.0 / requests, 1) for c, n in sorted(others.items(), key=lambda kv: -kv[1])[:8]
        },
        "total_us_per_request": {who: round(sum(g.values()), 1) for who, g in per_req.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="aiops-batch,mosec")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--name", default="serve-cpu-split")
    args = parser.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf not found: apt-get install -y linux-perf")
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="aiops-cpusplit-"))
    model_dir, body, lua, env = sb.side_by_side_setup(work)
    results, load = {}, os.getloadavg()
    for key in args.servers.split(","):
        proc, url = sb.start_side_by_side(
            sys.executable, key == "mosec", key == "aiops-batch", work, model_dir, env
        )
        try:
            for _ in range(300):
                sb.post(url, body.encode())
            results[key] = sample(url, lua, proc.pid, args.seconds, work / f"{key}.data")
            print(key, results[key]["rps"], results[key]["total_us_per_request"], flush=True)
        finally:
            sb.stop(proc)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_at_start": load,
        "results": results,
    }
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Where a request's CPU goes (perf, whole machine, wrk c=64)",
        "",
        f"{record['date']}; load average {load[0]:.2f} at start (2 CPUs, shared). Script: "
        "bench/serve_cpu_split.py. perf samples every CPU at 1 kHz (cpu-clock) for "
        f"{args.seconds} s in the middle of a wrk run; each sample is 1 ms of CPU, divided by the requests "
        "answered meanwhile. 'server' is the server's whole process tree.",
        "",
    ]
    for key, r in results.items():
        lines += [
            f"## {key}: {r['rps']:.0f} req/s",
            "",
            f"server {r['total_us_per_request']['server']} µs of CPU per request, wrk "
            f"{r['total_us_per_request']['wrk']}, CPUs idle {r['total_us_per_request']['idle']}, "
            f"other processes {r['total_us_per_request']['other']}",
            "",
            "| server CPU per request | µs |",
            "|---|---|",
        ]
        lines += [f"| {g} | {us} |" for g, us in r["us_per_request"]["server"].items()]
        lines.append("")
    (HERE / "results" / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
