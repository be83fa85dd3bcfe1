"""What the two LLM benchmarks (llm_engine.py in-process, llm_http.py over HTTP) share, so their numbers
compare: the model sizes, the prompts, the client threads that drive a side and their percentiles, the
median round, and the run's environment."""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time

SIZES = {
    "tiny": {},
    "small": {
        "hidden": 512,
        "layers": 6,
        "heads": 8,
        "kv_heads": 4,
        "intermediate": 1408,
        "max_positions": 1024,
    },
    # tiny-llm's documented ~100M shape (docs/finetune.md), made by `aiops example tiny-llm`'s own code
    "100m": {"layers": 12, "hidden": 768, "heads": 12, "kv_heads": 4, "intermediate": 2048, "vocab": 16384},
}


def make_model(name: str, folder):
    """The model of size ``name`` in ``folder``: the tests' tiny Llama for the small sizes, `aiops example
    tiny-llm` (its 2 MB tokenizer corpus fills the 16k vocabulary) for the 100M one."""
    from pathlib import Path

    if name == "100m":
        from aiops.training.examples.finetune.tiny_llm import TinyLlmSize, write_model

        write_model(folder, TinyLlmSize(**SIZES[name]))
        return Path(folder)
    from tiny_llm import make_tiny_llm

    return make_tiny_llm(Path(folder), **SIZES[name])


def prompts(tokenizer, count: int) -> list[str]:
    """Prompts of 8 to ~120 tokens cut from the standard library's source, in a fixed order."""
    from tiny_llm import corpus

    text = "".join(corpus(200_000))
    ids = tokenizer(text)["input_ids"]
    out, at = [], 0
    for i in range(count):
        length = 8 + (i * 37) % 112
        out.append(tokenizer.decode(ids[at : at + length]))
        at += length
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def drive(concurrency: int, jobs: list, run_one) -> dict:
    """c client threads taking jobs in turn; run_one(job) -> (ttft_s, tokens)."""
    lock = threading.Lock()
    queue = list(jobs)
    ttfts: list[float] = []
    tokens = 0

    def client() -> None:
        nonlocal tokens
        while True:
            with lock:
                if not queue:
                    return
                job = queue.pop(0)
            ttft, n = run_one(job)
            with lock:
                ttfts.append(ttft)
                tokens += n

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": statistics.median(ttfts) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 0.99) * 1e3,
        "requests": len(jobs),
        "wall_s": wall,
    }


def median_round(rounds: list[dict]) -> dict:
    """The round with the median throughput (the lower middle one for an even count)."""
    return sorted(rounds, key=lambda r: r["tokens_per_s"])[(len(rounds) - 1) // 2]


def run_meta(args) -> dict:
    """The versions, machine and request shape a result was measured with."""
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "requests": args.requests,
        "tokens": args.tokens,
        "device": "cpu",
    }
