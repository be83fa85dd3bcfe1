"""Serving benchmark: aiops serve vs a naive FastAPI server (and TorchServe when installed).

Same MLP (784-512-512-10, fp32), same JSON body of 784 floats, same load generator (wrk), bounded
runs. Writes bench/results/serve.md and serve.json. Not a test: run it by hand on a quiet machine:

    python bench/serve_bench.py [--duration 15] [--runs 3] [--conc 1,16,64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[BODY]==]
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %f %f %d %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout, summary.requests))
end
"""

FASTAPI_APP = '''
import json, os, torch
from fastapi import FastAPI, Request, Response
torch.set_num_threads(1)
model = torch.jit.load(os.environ["MODEL"]).eval()
app = FastAPI()
@app.get("/ping")
def ping():
    return {"status": "ok"}
@app.post("/invocations")
async def invocations(request: Request):
    data = json.loads(await request.body())
    with torch.no_grad():
        out = model(torch.tensor(data, dtype=torch.float32))
    return Response(json.dumps(out.tolist()), media_type="application/json")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ping(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on {port} not ready")


def make_model(folder: Path) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                torch.nn.ReLU(), torch.nn.Linear(512, 10)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model), str(folder / "model.pt"))
    return folder


def raw_forward(model_path: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    model = torch.jit.load(str(model_path)).eval()
    out = {}
    with torch.no_grad():
        for batch in (1, 64):
            x = torch.randn(batch, 784)
            for _ in range(50):
                model(x)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 2:
                model(x)
                n += 1
            out[f"batch{batch}_items_per_s"] = n * batch / (time.perf_counter() - start)
    return out


def profile(body: bytes, model_path: Path) -> dict:
    """Per-request costs in-process, µs (one thread)."""
    import numpy as np
    import orjson
    import torch

    from aiops.inference.handler import Context, Handler

    torch.set_num_threads(1)
    h = Handler(model_path.parent)
    h.load()
    ctx = Context(model_dir=str(model_path.parent))

    def t(fn, n=2000):
        for _ in range(50):
            fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n * 1e6

    text = body.decode()
    x = h.decode(body, "application/json", ctx)
    with torch.no_grad():
        y = h.model(x)
    return {
        "json.loads": t(lambda: json.loads(text)),
        "orjson.loads+np.asarray": t(lambda: np.asarray(orjson.loads(body), dtype=np.float32)),
        "default input_fn (JSON -> tensor)": t(lambda: h.decode(body, "application/json", ctx)),
        "forward, batch 1": t(lambda: h.predict(x, ctx)),
        "default output_fn (JSON)": t(lambda: h.encode(y, "application/json", ctx)),
        "whole handler, one request": t(lambda: h.invoke(body, "application/json", None, ctx)),
    }


def run_wrk(port: int, lua: Path, conc: int, duration: int) -> dict:
    threads = 1 if conc < 16 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{conc}", f"-d{duration}s", "--timeout", "10s", "-s", str(lua),
           f"http://127.0.0.1:{port}/invocations"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    rps, p50, p99, errors, total = line.split()[1:]
    return {"rps": float(rps), "p50_ms": float(p50), "p99_ms": float(p99), "errors": int(errors),
            "requests": int(total)}


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=40)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--conc", default="1,16,64")
    parser.add_argument("--only", default="", help="comma list of server names to run")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    concs = [int(c) for c in args.conc.split(",")]
    work = Path(tempfile.mkdtemp(prefix="aiops-bench-"))
    model_dir = make_model(work / "model")
    import random

    random.seed(0)
    body = json.dumps([round(random.random(), 6) for _ in range(784)])
    lua = work / "post.lua"
    lua.write_text(LUA.replace("BODY", body))
    (work / "fastapi_app.py").write_text(FASTAPI_APP)

    py = sys.executable
    servers = {
        "aiops serve, 2 workers": lambda port: [py, "-m", "aiops.cli.app", "serve", str(model_dir), "--port",
                                                 str(port), "--workers", "2"],
        "aiops serve, 2 workers, batch 32": lambda port: [py, "-m", "aiops.cli.app", "serve", str(model_dir),
                                                           "--port", str(port), "--workers", "2", "--batch-size",
                                                           "32", "--max-batch-delay", "5"],
        "FastAPI + uvicorn, 2 workers (naive)": lambda port: [py, "-m", "uvicorn", "fastapi_app:app", "--port",
                                                               str(port), "--workers", "2", "--log-level",
                                                               "warning", "--no-access-log"],
    }
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    results: dict = {"machine": {"cpus": os.cpu_count()}, "duration_s": args.duration, "runs": args.runs,
                     "servers": {}}
    results["raw_forward"] = raw_forward(model_dir / "model.pt")
    results["profile_us"] = profile(body.encode(), model_dir / "model.pt")
    for name, cmd in servers.items():
        if only and name not in only:
            continue
        port = free_port()
        env = {"MODEL": str(model_dir / "model.pt"), "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}
        proc = start(cmd(port), env, work / f"{port}.log")
        try:
            wait_ping(port)
            per_c = {}
            for c in concs:
                runs = [run_wrk(port, lua, c, args.duration) for _ in range(args.runs)]
                med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
                med["errors"] = sum(r["errors"] for r in runs)
                per_c[str(c)] = {"median": med, "runs": runs}
                print(name, c, med, flush=True)
            results["servers"][name] = per_c
        finally:
            stop(proc)
    results["torchserve"] = ("not measured in this run: TorchServe (pip torchserve + Java 17) was not set up "
                             "in the time available; see the issue's anchors")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "serve.json").write_text(json.dumps(results, indent=2))
    write_md(results)
    shutil.rmtree(work, ignore_errors=True)


def write_md(r: dict) -> None:
    lines = ["# Serving benchmark", "",
             f"MLP 784-512-512-10 fp32, JSON body of 784 floats, wrk, {r['runs']} run(s) of {r['duration_s']} s "
             f"per point (median), {r['machine']['cpus']} CPUs shared with other work. Script: bench/serve_bench.py.",
             "", "| server | c | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for name, per_c in r["servers"].items():
        for c, d in per_c.items():
            m = d["median"]
            lines.append(f"| {name} | {c} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['errors']} |")
    lines += ["", "Raw in-process forward (1 thread): " + ", ".join(f"{k} {v:.0f}" for k, v in r["raw_forward"].items()),
              "", "## Where the time goes (in process, one thread, µs per request)", "", "| step | µs |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["profile_us"].items()]
    lines += ["", f"TorchServe: {r['torchserve']}", ""]
    (HERE / "results" / "serve.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
