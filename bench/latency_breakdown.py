"""Where one c=1 request's time goes: in process (each step alone) and over HTTP (wrk -c1), plus a
py-spy profile of a worker under wrk -c1. Same MLP (784-512-512-10 TorchScript) and 784-float JSON
body as serve_bench.py. Writes bench/results/latency-breakdown.md (+ .json, + the raw py-spy stacks).
Not a test; the machine is shared, so read the numbers of one run against each other.

    python bench/latency_breakdown.py [--duration 5] [--no-http] [--no-profile]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve_bench import LUA, free_port, make_model, run_wrk, start, stop, wait_ping  # noqa: E402
from serve_profile import children, summarise  # noqa: E402

PING_LUA = """
wrk.method = "GET"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %f %f %d %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, summary.requests))
end
"""


def timeit(fn, n: int = 2000, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean µs per call of ``n`` calls (after a warm-up)."""
    for _ in range(100):
        fn()
    per = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        per.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(per)


def _without_simdjson(fn) -> float:
    from aiops.inference import codecs

    had = getattr(codecs._SIMD, "parser", 0)
    codecs._SIMD.parser = None
    try:
        return timeit(fn)
    finally:
        codecs._SIMD.parser = had


def in_process(model_dir: Path, body: bytes) -> dict[str, float]:
    import numpy as np
    import orjson
    import torch
    from aiops.inference import codecs
    from aiops.inference.contract import Context
    from aiops.inference.handler import Handler, default_output_fn

    torch.set_num_threads(1)  # as a worker with OMP_NUM_THREADS=1
    h = Handler(model_dir)
    h.load()
    ctx = Context(model_dir=str(model_dir))
    x = h.decode(body, codecs.JSON, ctx)
    model = h.model
    raw = torch.jit.load(str(model_dir / "model.pt")).eval()
    frozen = torch.jit.freeze(torch.jit.load(str(model_dir / "model.pt")).eval())
    optimized = torch.jit.optimize_for_inference(torch.jit.load(str(model_dir / "model.pt")).eval())
    with torch.no_grad():
        y = model(x)
        ref = raw(x)
        assert torch.equal(frozen(x), ref), "freeze changed the output"
    yn = y.numpy()

    def under(mode, m):
        def run():
            with mode():
                return m(x)

        return run

    out = {
        "orjson.loads (Python list)": timeit(lambda: orjson.loads(body)),
        "orjson.loads + np.asarray(float32)": timeit(
            lambda: np.asarray(orjson.loads(body), dtype=np.float32)
        ),
        "orjson.loads + np.array(float32)": timeit(lambda: np.array(orjson.loads(body), dtype=np.float32)),
        "np.fromstring(body[1:-1], sep=',') float32 (no list)": timeit(
            lambda: np.fromstring(body[1:-1], dtype=np.float32, sep=",")
        ),
        "orjson path alone (codecs without simdjson)": _without_simdjson(
            lambda: codecs.decode(body, codecs.JSON, np.float32)
        ),
        "codecs.decode (default JSON decoder)": timeit(lambda: codecs.decode(body, codecs.JSON, np.float32)),
        "Handler.decode (default input_fn -> tensor)": timeit(lambda: h.decode(body, codecs.JSON, ctx)),
        "forward b1, no_grad, jit.load (the default before)": timeit(under(torch.no_grad, raw)),
        "forward b1, inference_mode, jit.load (the default now)": timeit(under(torch.inference_mode, raw)),
        "forward b1, no_grad, jit.freeze": timeit(under(torch.no_grad, frozen)),
        "forward b1, inference_mode, jit.freeze": timeit(under(torch.inference_mode, frozen)),
        "forward b1, no_grad, optimize_for_inference": timeit(under(torch.no_grad, optimized)),
        "forward b1, no_grad, loaded model, 2 torch threads": (
            torch.set_num_threads(2),
            timeit(under(torch.no_grad, raw)),
            torch.set_num_threads(1),
        )[1],
        "Handler.predict (default predict_fn, as served)": timeit(lambda: h.predict(x, ctx)),
        "default_output_fn (tensor -> JSON)": timeit(lambda: default_output_fn(y, codecs.JSON)),
        "orjson.dumps(numpy row)": timeit(lambda: orjson.dumps(yn, option=orjson.OPT_SERIALIZE_NUMPY)),
        "Handler.encode (as served)": timeit(lambda: h.encode(y, None, ctx)),
        "Handler.invoke (whole handler, as the server calls it)": timeit(
            lambda: h.invoke(body, codecs.JSON, None, ctx)
        ),
        "Context(...) per request": timeit(
            lambda: Context(
                model_dir=str(model_dir),
                request_id="r",
                content_type=codecs.JSON,
                accept=None,
                custom_attributes=None,
                headers=None,
            )
        ),
    }
    return out


def over_http(model_dir: Path, body: str, work: Path, duration: int, profile_s: int, out_dir: Path) -> dict:
    lua = work / "post.lua"
    lua.write_text(LUA.replace("BODY", body))
    ping_lua = work / "ping.lua"
    ping_lua.write_text(PING_LUA)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    results: dict = {}
    modes = (("unbatched", []), ("batch32", ["--batch-size", "32", "--max-batch-delay", "5"]))
    for mode, extra in modes:
        port = free_port()
        log = work / f"{mode}.log"
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
            {"OMP_NUM_THREADS": "1"},
            log,
        )
        try:
            wait_ping(port)
            deadline = time.monotonic() + 120
            while log.read_text().count("INFO ready:") < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            url = f"http://127.0.0.1:{port}"
            run_wrk(url + "/invocations", lua, 1, 2)  # warm-up (inline mode switches on after a few calls)
            results[mode] = {
                "ping": run_wrk(url + "/ping", ping_lua, 1, duration),
                "invocations": run_wrk(url + "/invocations", lua, 1, duration),
            }
            if profile_s and Path(spy).exists():
                # wrk -c1 holds one connection: it lands on one worker; sample both, keep the busy one
                workers = children(proc.pid)
                wrk = subprocess.Popen(
                    ["wrk", "-t1", "-c1", f"-d{profile_s + 2}s", "-s", str(lua), url + "/invocations"],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                time.sleep(1)
                spies, raws = [], []
                for i, pid in enumerate(workers):
                    raw = work / f"spy-{mode}-{i}.txt"
                    raws.append(raw)
                    spies.append(
                        subprocess.Popen(
                            [
                                spy,
                                "record",
                                "-p",
                                str(pid),
                                "-d",
                                str(profile_s),
                                "-r",
                                "500",
                                "-f",
                                "raw",
                                "-o",
                                str(raw),
                                "--native",
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
                for s in spies:
                    s.wait()
                wrk.communicate()
                best = None
                for raw in raws:
                    if raw.exists():  # active samples only (no --idle): the busy worker has the most
                        total = summarise(raw)[0]
                        if best is None or total > best[0]:
                            best = (total, raw)
                if best is not None:
                    dest = out_dir / f"latency-profile-{mode}.txt"
                    shutil.copy(best[1], dest)
                    results[mode]["profile"] = str(dest.name)
        finally:
            stop(proc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--profile", type=int, default=6, help="py-spy seconds per mode (0: none)")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default="latency-breakdown")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aiops-latency-"))
    model_dir = make_model(work / "model")
    random.seed(0)
    body = json.dumps([round(random.random(), 6) for _ in range(784)])
    load = os.getloadavg()
    steps = in_process(model_dir, body.encode())
    http = {} if args.no_http else over_http(model_dir, body, work, args.duration, args.profile, out_dir)
    (out_dir / f"{args.name}.json").write_text(
        json.dumps({"load": load, "steps_us": steps, "http": http}, indent=1)
    )
    lines = [
        "# Latency breakdown of one c=1 request",
        "",
        f"Load average at start {load[0]:.2f} / {load[1]:.2f} (2 CPUs, "
        "shared). Script: bench/latency_breakdown.py. In process: one thread "
        "(torch.set_num_threads(1)), median of 5 rounds of the mean per call.",
        "",
        "| step (in process) | µs |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in steps.items()]
    if http:
        lines += [
            "",
            "Over HTTP, wrk -t1 -c1 (the bench's client), aiops serve --workers 2, OMP_NUM_THREADS=1:",
            "",
            "| mode | route | req/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|",
        ]
        for mode, r in http.items():
            for route in ("ping", "invocations"):
                m = r[route]
                lines.append(
                    f"| {mode} | /{route} | {m['rps']:.0f} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} |"
                )
        for mode, r in http.items():
            if "profile" in r:
                total, own, incl = summarise(out_dir / r["profile"], top=20)
                lines += [
                    "",
                    f"## py-spy --native, {mode}, wrk -c1: {total} active samples "
                    f"at 500/s over {args.profile} s; raw stacks {r['profile']}",
                    "",
                    "| self % | frame |",
                    "|---|---|",
                ]
                lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in own]
                lines += ["", "| inclusive % | frame |", "|---|---|"]
                lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in incl]
    (out_dir / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
