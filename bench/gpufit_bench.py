"""How long the GPU-fit check takes to size a model from its files, against loading it.

Writes a ~100M-parameter fp16 model (200 MB) as safetensors and as a torch.save state dict in a
temporary folder, then times (fresh each run): aiops.tensorstats.model_stats (header / pickle only),
torch.load(mmap=True) of the state dict, and safetensors' own load_file. Also sizes a Llama-2-7B
header (no data: the check reads only the header). Results: bench/results/gpufit.md and .json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import struct
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
OUT = Path(__file__).resolve().parent / "results"


def timed(fn) -> float:
    best = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    return statistics.median(best)


def main() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from aiops import tensorstats

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tensors = {f"layer{i}.weight": torch.zeros(4096, 3072, dtype=torch.float16) for i in range(8)}
        save_file(tensors, str(tmp / "model.safetensors"))
        torch.save(tensors, tmp / "model.pt")
        params = sum(t.numel() for t in tensors.values())
        size_mb = (tmp / "model.safetensors").stat().st_size / 1e6
        rows[f"safetensors header ({params / 1e6:.0f}M params, {size_mb:.0f} MB)"] = timed(
            lambda: tensorstats.model_stats(tmp / "model.safetensors")
        )
        rows["safetensors load_file (reads the data)"] = timed(
            lambda: load_file(str(tmp / "model.safetensors"))
        )
        rows["torch.save archive via restricted unpickler"] = timed(
            lambda: tensorstats.model_stats(tmp / "model.pt")
        )
        rows["torch.load(mmap=True, weights_only=True)"] = timed(
            lambda: torch.load(tmp / "model.pt", mmap=True, weights_only=True)
        )
        # Llama-2-7B's header alone (the check never reads the 13.5 GB of data)
        header = {}
        for i in range(291):
            header[f"t{i}"] = {"dtype": "F16", "shape": [4096, 4096], "data_offsets": [0, 0]}
        blob = json.dumps(header).encode()
        (tmp / "h.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
        rows["a 291-tensor header (Llama-2-7B's count)"] = timed(
            lambda: tensorstats.model_stats(tmp / "h.safetensors")
        )
    OUT.mkdir(exist_ok=True)
    result = {
        "runs": RUNS,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "median_seconds": rows,
    }
    (OUT / "gpufit.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# GPU-fit check: sizing a model from its files",
        "",
        f"Median of {RUNS} runs, {platform.machine()}, {os.cpu_count()} CPUs (shared machine: noisy). "
        "`python bench/gpufit_bench.py`.",
        "",
        "| what | median |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v * 1000:.1f} ms |" for k, v in rows.items()]
    (OUT / "gpufit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
