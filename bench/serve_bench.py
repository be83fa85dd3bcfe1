"""Serving benchmark: aiops serve vs mosec vs TorchServe (batched and not) vs a naive FastAPI server.

Same MLP (784-512-512-10, fp32, TorchScript), same JSON body of 784 floats, same wrk script (same
method, headers and body; only the URL path differs: TorchServe answers on /predictions/mlp), same
worker count (2), bounded runs on 127.0.0.1. Plus the raw in-process forward rate as the ceiling.
Writes bench/results/serve.md and serve.json. Not a test: run it by hand on a quiet machine:

    python bench/serve_bench.py [--duration 15] [--runs 3] [--conc 1,16,64,256] [--servers KEY,...]

Server keys: aiops, aiops-batch, aiops-batch-thread, mosec, torchserve, torchserve-batch,
torchserve-sm-batch, fastapi.
`pip install -e '.[bench]'` brings the peers (mosec 0.9.8, TorchServe + Java 17, FastAPI); a peer
that is missing is skipped (and said so). Also measured: the 4 MB JSON decode, RSS per worker and
the time to a 503 under overload (aiops serve with a small queue).
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
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[BODY]==]
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %f %f %d %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, summary.requests))
end
"""

FASTAPI_APP = """
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
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ping(port: int, timeout: float = 120, path: str = "/ping") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on {port} not ready")


def make_model(folder: Path) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    ).eval()
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


def run_wrk(url: str, lua: Path, conc: int, duration: int) -> dict:
    threads = 1 if conc < 16 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{conc}", f"-d{duration}s", "--timeout", "10s", "-s", str(lua), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    rps, p50, p99, errors, total = line.split()[1:]
    return {
        "rps": float(rps),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "errors": int(errors),
        "requests": int(total),
    }


def start(cmd: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
            cwd=cwd,
        )


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=40)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def post(url: str, body: bytes, timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_first_prediction(url: str, body: bytes, proc: subprocess.Popen, timeout: float = 180) -> bytes:
    """Retry until one prediction answers 200 (TorchServe's /ping can be up before its workers)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            status, data = post(url, body)
            if status == 200:
                return data
            last = f"HTTP {status}: {data[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.5)
    raise RuntimeError(f"no successful prediction from {url}: {last}")


def check_answer(data: bytes, expected: list[float]) -> list[float]:
    got = json.loads(data)
    if isinstance(got, list) and len(got) == 1 and isinstance(got[0], list):
        got = got[0]
    if len(got) != len(expected) or any(
        abs(a - b) > 1e-4 * (1 + abs(b)) for a, b in zip(got, expected, strict=True)
    ):
        raise RuntimeError(f"wrong answer: {got} != {expected}")
    return got


# --- TorchServe -------------------------------------------------------------------------------------

TS_LOG4J = """<?xml version="1.0" encoding="UTF-8"?>
<!-- serve_bench: TorchServe's own log4j2.xml with per-request logging off (no access log, no
     per-request metrics or "Backend response time" lines; warnings and errors still go to ts_log),
     as the other servers run without access logs. -->
<Configuration>
  <Appenders>
    <File name="ts_log" fileName="${env:LOG_LOCATION:-logs}/ts_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_LOG" level="warn"><AppenderRef ref="ts_log"/></Logger>
    <Logger name="org.pytorch.serve" level="warn" additivity="false"><AppenderRef ref="ts_log"/></Logger>
    <Root level="warn"><AppenderRef ref="ts_log"/></Root>
  </Loggers>
</Configuration>
"""


def torchserve_available() -> str | None:
    """None when TorchServe can run here, else why not."""
    bindir = Path(sys.executable).parent
    for tool in ("torchserve", "torch-model-archiver"):
        if not (bindir / tool).exists() and not shutil.which(tool):
            return f"{tool} not installed (pip install torchserve torch-model-archiver)"
    if not shutil.which("java"):
        return "java not found (TorchServe needs Java 17)"
    return None


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def make_mar(work: Path, model_dir: Path) -> Path:
    store = work / "ts-store"
    store.mkdir(exist_ok=True)
    subprocess.run(
        [
            _tool("torch-model-archiver"),
            "--model-name",
            "mlp",
            "--version",
            "1.0",
            "--serialized-file",
            str(model_dir / "model.pt"),
            "--handler",
            str(HERE / "torchserve_handler.py"),
            "--export-path",
            str(store),
            "--force",
        ],
        check=True,
        timeout=120,
    )
    return store


def torchserve_config(work: Path, store: Path, port: int, batch_size: int, max_batch_delay_ms: int) -> Path:
    """config.properties: 127.0.0.1 only, 2 workers, no token auth, no snapshots, quiet logs; the
    model (and its batching) is registered at start through `models=`, so the management API
    (off by default since 0.11) need not be opened."""
    mgmt, metrics = free_port(), free_port()
    models = {
        "mlp": {
            "1.0": {
                "defaultVersion": True,
                "marName": "mlp.mar",
                "minWorkers": 2,
                "maxWorkers": 2,
                "batchSize": batch_size,
                "maxBatchDelay": max_batch_delay_ms,
                "responseTimeout": 120,
            }
        }
    }
    cfg = work / f"ts-{port}.properties"
    cfg.write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{port}",
                f"management_address=http://127.0.0.1:{mgmt}",
                f"metrics_address=http://127.0.0.1:{metrics}",
                "grpc_inference_address=127.0.0.1",
                "grpc_inference_port=" + str(free_port()),
                "grpc_management_address=127.0.0.1",
                "grpc_management_port=" + str(free_port()),
                "enable_grpc_ssl=false",
                f"model_store={store}",
                "load_models=mlp.mar",
                "models=" + json.dumps(models),
                "default_workers_per_model=2",
                "disable_token_authorization=true",
                "enable_model_api=false",
                "enable_metrics_api=false",
                "disable_system_metrics=true",
                "async_logging=true",
                "decode_input_request=false",
                "job_queue_size=1000",
                "default_response_timeout=120",
                "install_py_dep_per_model=false",
                "",
            ]
        )
    )
    return cfg


def start_torchserve(
    work: Path, store: Path, port: int, batch_size: int, delay_ms: int, env: dict, quiet_logs: bool = True
) -> subprocess.Popen:
    cfg = torchserve_config(work, store, port, batch_size, delay_ms)
    logs = work / f"ts-logs-{port}"
    logs.mkdir(exist_ok=True)
    cmd = [
        _tool("torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--disable-token-auth",
        "--model-store",
        str(store),
        "--ts-config",
        str(cfg),
    ]
    if quiet_logs:  # else TorchServe's stock log4j2.xml: access log + INFO lines per request
        log4j = work / "ts-log4j2.xml"
        log4j.write_text(TS_LOG4J)
        cmd += ["--log-config", str(log4j)]
    return start(
        cmd, {**env, "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs)}, work / f"{port}.log", cwd=logs
    )


def stop_torchserve(proc: subprocess.Popen) -> None:
    """`torchserve --stop` when the pid file names our server (not someone else's), then make sure
    nothing of its process group (the JVM, the Python workers) is left."""
    pid_file = Path(tempfile.gettempdir()) / ".model_server.pid"
    try:
        ours = os.getsid(int(pid_file.read_text().split()[0])) == proc.pid
    except (OSError, ValueError, IndexError):
        ours = False
    if ours:
        subprocess.run([_tool("torchserve"), "--stop"], capture_output=True, timeout=60)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    stop(proc)
    try:  # the process group must be empty now
        os.killpg(proc.pid, 0)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


MOSEC_APP = """
import os
import numpy as np, orjson, torch
from mosec import Server, Worker

class Infer(Worker):
    def __init__(self):
        super().__init__()
        torch.set_num_threads(1)
        self.model = torch.jit.load(os.environ["MODEL"]).eval()

    def deserialize(self, data: bytes):
        return np.asarray(orjson.loads(data), dtype=np.float32)

    def serialize(self, data) -> bytes:
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)

    def forward(self, data: list):
        with torch.no_grad():
            return list(self.model(torch.from_numpy(np.stack(data))).numpy())

if __name__ == "__main__":
    server = Server()
    server.append_worker(Infer, num=2, max_batch_size=32, max_wait_time=5)
    server.run()
"""


def mosec_available() -> str | None:
    try:
        import mosec  # noqa: F401
    except ImportError:
        return "mosec is not installed (pip install mosec==0.9.8)"
    return None


def decode_4mb() -> dict:
    """The default JSON decoder on a 4 MB body (rows of 784 floats), in process, ms (median of 5)."""
    import random

    from aiops.inference import codecs

    random.seed(1)
    rows = []
    body = b""
    while len(body) < 4 * 1024 * 1024:
        rows.append([round(random.random(), 6) for _ in range(784)])
        if len(rows) % 32 == 0:
            body = json.dumps(rows).encode()
    body = json.dumps(rows).encode()
    import numpy as np
    from aiops.inference.handler import default_input_fn

    def timed(fn) -> list[float]:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return times

    start = time.perf_counter()
    array = codecs.decode(body, "application/json")  # the first parse sizes the thread's simdjson parser
    first_ms = (time.perf_counter() - start) * 1000
    times = timed(lambda: codecs.decode(body, "application/json"))
    # what a worker runs on such a body: the default input_fn, float32 values into a tensor
    tensor_times = timed(lambda: default_input_fn(body, "application/json"))
    assert np.array_equal(
        default_input_fn(body, "application/json").numpy(), np.array(json.loads(body), dtype=np.float32)
    )
    return {
        "bytes": len(body),
        "shape": list(array.shape),
        "ms_median": statistics.median(times),
        "ms_all": [round(t, 2) for t in times],
        "input_fn_ms_median": statistics.median(tensor_times),
        "input_fn_ms_all": [round(t, 2) for t in tensor_times],
        "first_ms": round(first_ms, 2),
    }


def worker_rss_mb(proc: subprocess.Popen) -> list[float]:
    """RSS of the server's child processes (its workers), MB."""
    out = []
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        return out
    for pid in children:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(round(int(line.split()[1]) / 1024, 1))
        except OSError:
            pass
    return out


def time_to_503(model_dir: Path, env: dict, work: Path, conns: int = 64, queue: int = 4) -> dict:
    """aiops serve with max_queue=4, 1 worker: 64 keep-alive clients fire at once; how fast a refusal
    comes."""
    import selectors

    port = free_port()
    proc = start(
        [
            sys.executable,
            "-m",
            "aiops.cli.app",
            "serve",
            str(model_dir),
            "--workers",
            "1",
            "--port",
            str(port),
        ],
        {**env, "AIOPS_SERVE__MAX_QUEUE": str(queue)},
        work / "overload.log",
    )
    try:
        wait_ping(port)
        body = json.dumps([0.5] * 784).encode()
        req = (
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        ) + body
        rounds = []
        for _ in range(5):
            socks = []
            for _ in range(conns):
                sk = socket.create_connection(("127.0.0.1", port))
                sk.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                sk.recv(4096)
                socks.append(sk)
            sel = selectors.DefaultSelector()
            start_t = time.perf_counter()
            for sk in socks:
                sk.sendall(req)
                sel.register(sk, selectors.EVENT_READ)
            got: dict = {}
            while len(got) < len(socks):
                for key, _ in sel.select(timeout=30):
                    data = key.fileobj.recv(65536)
                    if key.fileobj not in got:
                        got[key.fileobj] = (time.perf_counter() - start_t, data[:12])
                        sel.unregister(key.fileobj)
            for sk in socks:
                sk.close()
            rejected = sorted(t for t, head in got.values() if b" 503" in head)
            ok = sorted(t for t, head in got.values() if b" 200" in head)
            rounds.append(
                {
                    "rejected": len(rejected),
                    "ok": len(ok),
                    "first_503_ms": rejected[0] * 1000 if rejected else None,
                    "median_503_ms": statistics.median(rejected) * 1000 if rejected else None,
                    "median_200_ms": statistics.median(ok) * 1000 if ok else None,
                }
            )
        return {"connections": conns, "max_queue": queue, "rounds": rounds}
    finally:
        stop(proc)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (workers, their children), from /proc."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                stack += [int(x) for x in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def mosec_command(python: str, work: Path, port: int) -> list[str]:
    """mosec's app (written by ``side_by_side_setup`` or main) on 127.0.0.1:port; it answers /inference."""
    return [
        python,
        str(work / "mosec_app.py"),
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
        "--log-level",
        "warning",
    ]


def aiops_command(python: str, model_dir: Path, port: int, batched: bool) -> list[str]:
    """`aiops serve` with 2 workers (batch 32 / 5 ms when batched); it answers /invocations."""
    cmd = [python, "-m", "aiops.cli.app", "serve", str(model_dir), "--workers", "2", "--port", str(port)]
    return cmd + ["--batch-size", "32", "--max-batch-delay", "5"] if batched else cmd


def side_by_side_setup(work: Path) -> tuple[Path, str, Path, dict]:
    """What the scripts that run a few servers one after another share (serve_ab.py,
    serve_cpu_split.py): the model, the body, the wrk script, mosec's app and the environment."""
    import random

    model_dir = make_model(work / "model")
    random.seed(0)
    body = json.dumps([round(random.random(), 6) for _ in range(784)])
    lua = work / "post.lua"
    lua.write_text(LUA.replace("BODY", body))
    (work / "mosec_app.py").write_text(MOSEC_APP)
    env = {"MODEL": str(model_dir / "model.pt"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(work)}
    return model_dir, body, lua, env


def start_side_by_side(
    python: str, mosec: bool, batched: bool, work: Path, model_dir: Path, env: dict
) -> tuple[subprocess.Popen, str]:
    """mosec or `aiops serve` (2 workers, batch 32 / 5 ms when batched) from ``python``, started and
    answering: the process and its inference URL."""
    port = free_port()
    if mosec:
        proc = start(mosec_command(python, work, port), env, work / f"{port}.log", cwd=work)
        wait_ping(port, path="/")
        return proc, f"http://127.0.0.1:{port}/inference"
    proc = start(aiops_command(python, model_dir, port, batched), env, work / f"{port}.log", cwd=work)
    wait_ping(port)
    return proc, f"http://127.0.0.1:{port}/invocations"


# --- main ----------------------------------------------------------------------------------------------

SERVER_KEYS = {
    "aiops": "aiops serve, 2 workers",
    "aiops-batch": "aiops serve, 2 workers, batch 32 / 5 ms",
    "aiops-batch-thread": "aiops serve, 2 workers, batch 32 / 5 ms, inline mode off (inference thread)",
    "mosec": "mosec 0.9.8, 2 workers, batch 32 / 5 ms",
    "torchserve": "TorchServe, 2 workers",
    "torchserve-batch": "TorchServe, 2 workers, batch 32 / 5 ms",
    "torchserve-sm-batch": "TorchServe, 2 workers, batch 32 / 5 ms, SageMaker stock handler semantics",
    "fastapi": "FastAPI + uvicorn, 2 workers (naive)",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run (default 15)")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per point, the median is reported (default 3)"
    )
    parser.add_argument("--conc", default="1,16,64,256")
    parser.add_argument(
        "--servers", "--only", default="", help="comma list of server keys to run: " + ", ".join(SERVER_KEYS)
    )
    parser.add_argument(
        "--torchserve-logs",
        choices=("quiet", "stock"),
        default="quiet",
        help="quiet (default): no per-request logging, like the other servers; stock: "
        "TorchServe's own log4j2.xml (access log and INFO lines per request)",
    )
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for NAME.md / NAME.json")
    parser.add_argument(
        "--name", default="serve", help="result file stem (default serve: serve.md, serve.json)"
    )
    parser.add_argument(
        "--decode-only",
        action="store_true",
        help="only the 4 MB JSON decode (in process, no servers): writes NAME.md / NAME.json",
    )
    args = parser.parse_args()
    if args.decode_only:
        d = decode_4mb()
        out = Path(args.out)
        (out / f"{args.name}.json").write_text(
            json.dumps(
                {
                    "decode_4mb_json": d,
                    "load_at_start": os.getloadavg(),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC"),
                },
                indent=2,
            )
            + "\n"
        )
        (out / f"{args.name}.md").write_text(
            f"# 4 MB JSON decode\n\n{time.strftime('%Y-%m-%d %H:%M UTC')}; script: "
            f"bench/serve_bench.py --decode-only (each run: {d['ms_all']} ms; the "
            f"default input_fn: {d['input_fn_ms_all']} ms).\n\n{decode_line(d)}\n"
        )
        print((out / f"{args.name}.md").read_text())
        return
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    keys = [k.strip() for k in args.servers.split(",") if k.strip()] or list(SERVER_KEYS)
    unknown = [k for k in keys if k not in SERVER_KEYS]
    if unknown:
        sys.exit(f"unknown server key(s) {unknown}; choose from {list(SERVER_KEYS)}")
    concs = [int(c) for c in args.conc.split(",")]
    load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="aiops-bench-"))
    model_dir, body, lua, env = side_by_side_setup(work)
    import torch

    with torch.no_grad():
        expected = torch.jit.load(str(model_dir / "model.pt"))(
            torch.tensor(json.loads(body), dtype=torch.float32)
        ).tolist()
    (work / "fastapi_app.py").write_text(FASTAPI_APP)

    py = sys.executable
    ts_missing = torchserve_available() if any(k.startswith("torchserve") for k in keys) else None
    mosec_missing = mosec_available() if "mosec" in keys else None
    store = None

    def launch(key: str, port: int) -> tuple[subprocess.Popen, str]:
        nonlocal store
        if key == "aiops":
            return start(aiops_command(py, model_dir, port, False), env, work / f"{port}.log"), "/invocations"
        if key in ("aiops-batch", "aiops-batch-thread"):
            # -thread: the same worker with inline mode off (AIOPS_SERVE__INLINE_CALL_MS=0), the A/B of the
            # layout
            extra_env = {"AIOPS_SERVE__INLINE_CALL_MS": "0"} if key == "aiops-batch-thread" else {}
            return start(
                aiops_command(py, model_dir, port, True), {**env, **extra_env}, work / f"{port}.log"
            ), "/invocations"
        if key == "mosec":
            return start(mosec_command(py, work, port), env, work / f"{port}.log", cwd=work), "/inference"
        if key == "fastapi":
            return start(
                [
                    py,
                    "-m",
                    "uvicorn",
                    "fastapi_app:app",
                    "--port",
                    str(port),
                    "--workers",
                    "2",
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env,
                work / f"{port}.log",
                cwd=work,
            ), "/invocations"
        if store is None:
            store = make_mar(work, model_dir)
        batch = 32 if key.endswith("-batch") else 1
        ts_env = {**env, "AIOPS_BENCH_TS_MODE": "sagemaker"} if key == "torchserve-sm-batch" else env
        return (
            start_torchserve(
                work,
                store,
                port,
                batch,
                5 if batch > 1 else 0,
                ts_env,
                quiet_logs=args.torchserve_logs == "quiet",
            ),
            "/predictions/mlp",
        )

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load_at_start]},
        "duration_s": args.duration,
        "runs": args.runs,
        "concurrency": concs,
        "servers": {},
        "config": {},
        "versions": versions(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"load average at start: {load_at_start}", flush=True)
    results["raw_forward"] = raw_forward(model_dir / "model.pt")
    print("raw forward:", results["raw_forward"], flush=True)
    results["profile_us"] = profile(body.encode(), model_dir / "model.pt")
    skipped = {}
    for key in keys:
        name = SERVER_KEYS[key]
        if key.startswith("torchserve") and ts_missing:
            skipped[name] = ts_missing
            print(f"skip {name}: {ts_missing}", flush=True)
            continue
        if key == "mosec" and mosec_missing:
            skipped[name] = mosec_missing
            print(f"skip {name}: {mosec_missing}", flush=True)
            continue
        port = free_port()
        loadavg = os.getloadavg()
        proc, path = launch(key, port)
        url = f"http://127.0.0.1:{port}{path}"
        try:
            wait_ping(port, path="/" if key == "mosec" else "/ping")
            if key.startswith("aiops"):
                deadline = time.monotonic() + 120  # every worker loaded, not just the first
                while (work / f"{port}.log").read_text().count(
                    "INFO ready:"
                ) < 2 and time.monotonic() < deadline:
                    time.sleep(0.2)
            answer = check_answer(wait_first_prediction(url, body.encode(), proc), expected)
            for _ in range(200):  # warm-up, same for every server
                post(url, body.encode())
            print(
                f"{name}: answers {[round(v, 5) for v in answer[:3]]}... (checked against the in-process "
                f"forward)",
                flush=True,
            )
            per_c = {}
            for c in concs:
                runs = [run_wrk(url, lua, c, args.duration) for _ in range(args.runs)]
                med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
                med["errors"] = sum(r["errors"] for r in runs)
                per_c[str(c)] = {"median": med, "runs": runs}
                print(
                    f"  c={c}: {med['rps']:.0f} req/s, p50 {med['p50_ms']:.2f} "
                    f"ms, p99 {med['p99_ms']:.2f} ms, errors {med['errors']}",
                    flush=True,
                )
            results["servers"][name] = {
                "key": key,
                "path": path,
                "loadavg_at_start": [round(x, 2) for x in loadavg],
                "answer_head": answer[:3],
                "by_concurrency": per_c,
                "worker_rss_mb": worker_rss_mb(proc),
            }
        except Exception as e:  # one server failing must not lose the others' numbers
            skipped[name] = f"failed: {e}"
            print(f"{name} FAILED: {e}; log tail:\n" + tail(work / f"{port}.log"), flush=True)
        finally:
            if key.startswith("torchserve"):
                stop_torchserve(proc)
            else:
                stop(proc)
    results["skipped"] = skipped
    results["decode_4mb_json"] = decode_4mb()
    print("4 MB JSON decode:", results["decode_4mb_json"], flush=True)
    results["time_to_503"] = time_to_503(model_dir, env, work)
    print("time to 503:", results["time_to_503"], flush=True)
    results["config"] = dict(CONFIG_NOTES)
    if args.torchserve_logs == "stock":
        results["config"]["TorchServe"] = CONFIG_NOTES["TorchServe"].replace(
            "access log and per-request metric logs off (log4j2)",
            "its stock log4j2.xml (--torchserve-logs stock)",
        )
    results["comparison"] = compare(results)
    print(json.dumps(results["comparison"], indent=2), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{args.name}.md").write_text(render_md(results))
    print(f"wrote {out / (args.name + '.md')} and {args.name}.json", flush=True)
    shutil.rmtree(work, ignore_errors=True)


CONFIG_NOTES = {
    "common": "same TorchScript MLP, 2 worker processes, OMP_NUM_THREADS=1 (one intra-op thread per worker), "
    "127.0.0.1, same wrk Lua script (POST, Content-Type: application/json, same 784-float body), "
    "200 warm-up requests before measuring, answer checked against the in-process forward",
    "aiops serve": "aiops serve MODEL_DIR --workers 2 [--batch-size 32 --max-batch-delay 5], default handler "
    "(httptools + uvloop loop per process on its own SO_REUSEPORT "
    "socket, handler on the worker's inference thread)",
    "mosec": "mosec 0.9.8 (Rust HTTP front, Python workers over IPC): "
    "append_worker(num=2, max_batch_size=32, max_wait_time=5), orjson + np.asarray(float32) decode, "
    "np.stack + one forward per batch, orjson numpy encode; route /inference",
    "TorchServe": "torchserve --foreground --ncs --disable-token-auth, config.properties: 127.0.0.1, "
    "minWorkers=maxWorkers=2, batchSize 1 or 32 with maxBatchDelay 5 ms (models= at start), "
    "disable_token_authorization=true, decode_input_request=false (as the SageMaker container), "
    "job_queue_size=1000, async_logging, system metrics off, access log and per-request metric "
    "logs off (log4j2); handler bench/torchserve_handler.py: orjson+numpy decode, one stacked "
    "forward per batch, orjson encode (a tuned best case); the '-sm-' variant runs the SageMaker "
    "container's stock handler semantics instead: json.loads + np.array + FloatTensor and one "
    "forward per request inside each TorchServe batch, json.dumps",
    "FastAPI": "uvicorn --workers 2 --no-access-log, json.loads + torch.tensor + forward + json.dumps "
    "per request",
}


def compare(r: dict) -> dict:
    def at(name: str, c: str) -> dict | None:
        d = r["servers"].get(name, {}).get("by_concurrency", {}).get(c)
        return d["median"] if d else None

    out: dict = {}
    c = "64" if "64" in {str(x) for x in r["concurrency"]} else str(max(r["concurrency"]))
    ours = {n: at(n, c) for n in r["servers"] if r["servers"][n]["key"].startswith("aiops") and at(n, c)}
    peers = {n: at(n, c) for n in r["servers"] if not r["servers"][n]["key"].startswith("aiops") and at(n, c)}
    if ours and peers:
        best_ours = max(ours, key=lambda n: ours[n]["rps"])
        best_peer = max(peers, key=lambda n: peers[n]["rps"])
        out[f"c={c}"] = {
            "best aiops serve": best_ours,
            "its req/s": ours[best_ours]["rps"],
            "its p99 ms": ours[best_ours]["p99_ms"],
            "best peer": best_peer,
            "peer req/s": peers[best_peer]["rps"],
            "peer p99 ms": peers[best_peer]["p99_ms"],
            "ratio": ours[best_ours]["rps"] / peers[best_peer]["rps"],
            "goal (>= 2x, p99 no worse)": ours[best_ours]["rps"] >= 2 * peers[best_peer]["rps"]
            and ours[best_ours]["p99_ms"] <= peers[best_peer]["p99_ms"],
        }
    c1 = {n: at(n, "1") for n in r["servers"] if r["servers"][n]["key"].startswith("aiops") and at(n, "1")}
    if c1:
        best = min(c1, key=lambda n: c1[n]["p50_ms"])
        out["c=1"] = {
            "best aiops serve p50 ms": c1[best]["p50_ms"],
            "server": best,
            "goal (<= 0.30 ms)": c1[best]["p50_ms"] <= 0.30,
        }
    return out


def versions() -> dict:
    from importlib import metadata

    v = {"python": sys.version.split()[0]}
    for dist in (
        "torch",
        "torchserve",
        "mosec",
        "fastapi",
        "uvicorn",
        "orjson",
        "httptools",
        "uvloop",
        "aiops",
    ):
        try:
            v[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        v["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
        v["wrk"] = v["wrk"].removeprefix("wrk ").strip() or "?"
    except OSError:
        pass
    return v


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def decode_line(d: dict) -> str:
    """The 4 MB decode result as one Markdown bullet (serve.md and --decode-only)."""
    return (
        f"- default JSON decoder, {d['bytes'] / 1e6:.1f} MB body {d['shape']}: {d['ms_median']:.1f} ms "
        "(median of 5; goal <= 50 ms)"
        + (
            f"; the first body this large on a thread {d['first_ms']:.0f} ms (sizes its simdjson parser)"
            if "first_ms" in d
            else ""
        )
        + (
            f"; the default input_fn (float32 tensor, what a worker runs): {d['input_fn_ms_median']:.1f} ms"
            if "input_fn_ms_median" in d
            else ""
        )
    )


def render_md(r: dict) -> str:
    la = r["machine"]["loadavg_at_start"]
    lines = [
        "# Serving benchmark",
        "",
        f"MLP 784-512-512-10 fp32, JSON body of 784 floats, wrk, {r['runs']} run(s) of {r['duration_s']} s "
        f"per point (median), {r['machine']['cpus']} CPUs. Load average at start: "
        f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1/5/15 min; the machine is shared, a high value means a "
        f"noisy run). Started {r['started']}. Script: bench/serve_bench.py.",
        "",
        *(
            [
                "**Short run** (fewer than 3 runs of 15 s per point): indicative only, not the issue's "
                "measurement.",
                "",
            ]
            if r["runs"] < 3 or r["duration_s"] < 15
            else []
        ),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "",
        "| server | c | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in r["servers"].items():
        for c, x in d["by_concurrency"].items():
            m = x["median"]
            lines.append(
                f"| {name} | {c} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['errors']} |"
            )
    rf = r["raw_forward"]
    lines += [
        "",
        f"Ceiling, raw in-process forward (1 thread, no HTTP, no JSON): "
        f"{rf['batch1_items_per_s']:.0f} items/s at batch 1, {rf['batch64_items_per_s']:.0f} items/s at "
        f"batch 64.",
        "",
    ]
    for c, d in r["comparison"].items():
        if "ratio" in d:
            lines.append(
                f"At {c}: best aiops serve ({d['best aiops serve']}) {d['its req/s']:.0f} req/s, p99 "
                f"{d['its p99 ms']:.1f} ms vs best peer ({d['best peer']}) {d['peer req/s']:.0f} req/s, p99 "
                f"{d['peer p99 ms']:.1f} ms: ratio {d['ratio']:.2f}x; goal (>= 2x with p99 no worse) "
                f"{'met' if d['goal (>= 2x, p99 no worse)'] else 'not met'}."
            )
        else:
            lines.append(
                f"At {c}: best aiops serve p50 {d['best aiops serve p50 ms']:.2f} ms ({d['server']}); "
                f"goal (<= 0.30 ms on a quiet machine) {'met' if d['goal (<= 0.30 ms)'] else 'not met'}."
            )
    for name, why in r.get("skipped", {}).items():
        lines.append(f"Not measured: {name}: {why}")
    lines += ["", "## Memory, decode, overload", ""]
    for name, d in r["servers"].items():
        if d.get("worker_rss_mb"):
            lines.append(f"- RSS per worker process after the run, {name}: {d['worker_rss_mb']} MB")
    if r.get("decode_4mb_json"):
        lines.append(decode_line(r["decode_4mb_json"]))
    if r.get("time_to_503"):
        t = r["time_to_503"]
        for i, x in enumerate(t["rounds"]):
            lines.append(
                f"- overload round {i + 1}: {t['connections']} keep-alive clients at "
                f"once on 1 worker with max_queue={t['max_queue']}: {x['rejected']} "
                f"refused 503 (first after {x['first_503_ms'] or float('nan'):.2f} "
                f"ms, median {x['median_503_ms'] or float('nan'):.2f} ms), {x['ok']} "
                f"answered 200 (median {x['median_200_ms'] or float('nan'):.2f} ms)"
            )
    lines += ["", "## Configuration", ""] + [f"- {k}: {v}" for k, v in r["config"].items()]
    lines += [
        "",
        "## Where the time goes (in process, one thread, µs per request)",
        "",
        "| step | µs |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["profile_us"].items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
