"""The LLM engine in-process: output tokens/s and time to first token (TTFT) at concurrency 1, 4 and 16,
vs a naive server that runs one ``model.generate`` per request (same model, prompts and lengths, same run).

Both sides get the same requests: prompts cut from the standard library's source at mixed lengths, greedy,
exactly ``--tokens`` new tokens each (EOS ignored by the engine, ``min_new_tokens`` for generate). At
concurrency c, c client threads each send requests one after another until ``--requests`` are answered.

- ``engine``: ``LLMEngine`` on its own thread (continuous batching, ``max_batch_size`` = 16); TTFT is the
  time from ``submit`` to the first token event;
- ``naive``: each client thread calls ``model.generate`` itself (the threads share the CPU; torch releases
  the GIL); TTFT is when generate hands its first new token to a streamer.

Models: the tests' tiny Llama (~140k parameters: per-step Python overhead dominates) and a small one
(~20M: compute shows). Writes bench/results/llm-engine.md and .json. Timings on a shared machine are noisy.

    python bench/llm_engine.py [--requests 32] [--tokens 64] [--conc 1,4,16] [--sizes tiny,small] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "bench" / "results"

from llm_workload import drive, make_model, median_round, prompts, run_meta  # noqa: E402


def bench_size(name: str, folder: Path, args) -> list[dict]:
    import torch
    from aiops.inference.llm.engine import LLMEngine
    from aiops.inference.llm.generation import GenerationRequest, Limits, SamplingParams
    from transformers.generation.streamers import BaseStreamer

    engine = LLMEngine.from_folder(
        folder, Limits(max_total_tokens=512, max_batch_size=16, max_queue=1024), device="cpu"
    )
    model, tokenizer = engine.model, engine.tokenizer
    jobs = prompts(tokenizer, args.requests)
    engine.start()

    def engine_one(prompt: str):
        # the first event's time is taken in the engine thread (notify), the rest is read at the end: one
        # wake-up per request instead of one per token, as an event loop draining several tokens at once
        start = time.perf_counter()
        first: list[float] = []
        request = GenerationRequest(prompt, SamplingParams(max_new_tokens=args.tokens, ignore_eos=True))
        handle = engine.submit(request, notify=lambda: first or first.append(time.perf_counter() - start))
        generated = handle.result().generated_tokens
        return first[0], generated

    class FirstToken(BaseStreamer):
        def __init__(self, start: float) -> None:
            self.start, self.first, self.calls = start, None, 0

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2 and self.first is None:  # the first put is the prompt
                self.first = time.perf_counter() - self.start

        def end(self) -> None:
            pass

    def naive_one(prompt: str):
        start = time.perf_counter()
        streamer = FirstToken(start)
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                streamer=streamer,
            )
        return streamer.first, out.shape[1] - inputs["input_ids"].shape[1]

    for warm in jobs[:2]:  # first calls allocate and load kernels
        naive_one(warm)
        engine_one(warm)
    rows = []
    for concurrency in args.conc:
        # rounds alternate naive and engine, so both see the same machine; each side's median round counts
        runs = {"naive": [], "engine": []}
        for _ in range(args.rounds):
            runs["naive"].append(drive(concurrency, jobs, naive_one))
            runs["engine"].append(drive(concurrency, jobs, engine_one))
        naive, batched = median_round(runs["naive"]), median_round(runs["engine"])
        rows.append(
            {
                "model": name,
                "params": sum(p.numel() for p in model.parameters()),
                "concurrency": concurrency,
                "naive": naive,
                "engine": batched,
                "speedup": batched["tokens_per_s"] / naive["tokens_per_s"],
            }
        )
        print(
            f"{name} c={concurrency}: naive {naive['tokens_per_s']:.0f} tok/s, "
            f"TTFT p50 {naive['ttft_p50_ms']:.1f} ms p99 {naive['ttft_p99_ms']:.1f} ms | "
            f"engine {batched['tokens_per_s']:.0f} tok/s, TTFT p50 {batched['ttft_p50_ms']:.1f} ms "
            f"p99 {batched['ttft_p99_ms']:.1f} ms | x{rows[-1]['speedup']:.2f}",
            flush=True,
        )
    engine.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--conc", default="1,4,16")
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds per level; the median counts"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)"
    )
    args = parser.parse_args()
    args.conc = [int(c) for c in args.conc.split(",")]
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes.split(","):
            folder = make_model(name, Path(tmp) / name)
            rows += bench_size(name, folder, args)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    RESULTS.mkdir(exist_ok=True)
    meta = run_meta(args)
    (RESULTS / "llm-engine.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# LLM engine vs one `model.generate` per request (in-process, CPU)",
        "",
        (
            f"`python bench/llm_engine.py --requests {args.requests} --tokens {args.tokens} "
            f"--rounds {args.rounds}` on {os.cpu_count()} shared cores, {args.threads} torch thread(s); "
            f"torch {meta['torch']}, transformers {meta['transformers']}. Greedy, {args.tokens} new tokens "
            f"per request, prompts of 8-120 tokens; the engine's max_batch_size is 16; rounds alternate "
            f"naive and engine, each side's median round is shown."
        ),
        "",
        (
            "| model | params | c | naive tok/s | naive TTFT p50 / p99 ms | engine tok/s "
            "| engine TTFT p50 / p99 ms | engine / naive |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        n, e = row["naive"], row["engine"]
        lines.append(
            f"| {row['model']} | {row['params'] / 1e6:.2f}M | {row['concurrency']} | "
            f"{n['tokens_per_s']:.0f} | {n['ttft_p50_ms']:.1f} / {n['ttft_p99_ms']:.1f} | "
            f"{e['tokens_per_s']:.0f} | {e['ttft_p50_ms']:.1f} / {e['ttft_p99_ms']:.1f} | "
            f"{row['speedup']:.2f}x |"
        )
    lines += [
        "",
        (
            "The naive side's TTFT is when `generate` hands its first new token to a streamer; a naive "
            "HTTP server without streaming would answer it only at the end."
        ),
        "",
    ]
    (RESULTS / "llm-engine.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
