"""The LoRA fine-tuning example: training throughput.

1. Non-padding tokens/s of training/examples/finetune/train.py on CPU with 1 process and with 2
   processes (torchrun, DDP on gloo, one thread each, as torchrun sets OMP_NUM_THREADS=1), the same
   global batch; scaling efficiency = tokens/s(2 procs) / (2 x tokens/s(1 proc)). The median of the
   `tokens_per_second` windows after the first (warm-up) one. The model: `aiops example tiny-llm`
   with 4 layers, hidden 256 (~6M parameters).
2. `--device cuda`: one GPU, bf16 vs fp32 steps/s and peak GPU memory on a ~100M-parameter model made
   by tiny-llm with larger sizes (goal: bf16 >= 2x fp32).

    python bench/finetune_bench.py                 # CPU: writes bench/results/finetune.{md,json}
    python bench/finetune_bench.py --device cuda   # also the GPU comparison (needs a CUDA GPU)

A shared, noisy machine: the load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "examples" / "finetune" / "train.py"
RESULTS = Path(__file__).resolve().parent / "results"

CPU_MODEL = {"layers": 4, "hidden": 256, "heads": 8, "kv_heads": 4, "intermediate": 688, "vocab": 4096}
GPU_MODEL = {"layers": 12, "hidden": 768, "heads": 12, "kv_heads": 4, "intermediate": 2048, "vocab": 16384}
CPU_RUN = {
    "max-steps": 30,
    "batch-size": 8,
    "max-length": 256,
    "logging-steps": 5,
    "save-steps": 1000,
    "eval-samples": 8,
    "lora-dropout": 0,
}
GPU_RUN = {
    "max-steps": 60,
    "batch-size": 32,
    "max-length": 512,
    "logging-steps": 10,
    "save-steps": 1000,
    "eval-samples": 32,
    "lora-dropout": 0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(root: Path, sizes: dict) -> tuple[Path, Path]:
    from aiops.training.examples.finetune.prepare import write_channels
    from aiops.training.examples.finetune.tiny_llm import TinyLlmSize, write_model
    from transformers.utils import logging

    logging.disable_progress_bar()

    model, data = root / "model", root / "data"
    write_model(model, TinyLlmSize(**sizes, max_positions=1024))
    write_channels(data)
    return model, data


def run(nproc: int, hps: dict, model: Path, data: Path, work: Path, num_gpus: int = 0) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "AIOPS_"))}
    env.update(
        SM_CHANNEL_MODEL=str(model),
        SM_CHANNEL_TRAIN=str(data / "train"),
        SM_CHANNEL_TEST=str(data / "test"),
        SM_MODEL_DIR=str(work / "model"),
        SM_OUTPUT_DATA_DIR=str(work / "out"),
        SM_OUTPUT_DIR=str(work / "o"),
        AIOPS_CHECKPOINT_DIR=str(work / "ck"),
        SM_NUM_GPUS=str(num_gpus),
        PYTHONUNBUFFERED="1",
    )
    args = [a for k, v in hps.items() for a in (f"--{k}", str(v))]
    cmd = (
        [sys.executable, str(SCRIPT)]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(SCRIPT),
        ]
    )
    began = time.monotonic()
    proc = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"fine-tune failed ({nproc} proc):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    tps = [float(x) for x in re.findall(r"tokens_per_second=([0-9.]+);", proc.stdout)]
    memory = [float(x) for x in re.findall(r"peak_gpu_memory_gib=([0-9.]+);", proc.stdout)]
    head = next(line for line in proc.stdout.splitlines() if line.startswith("fine-tuning"))
    return {
        "tokens_per_second_windows": tps,
        "tokens_per_second": statistics.median(tps[1:] or tps),
        "peak_gpu_memory_gib": max(memory) if memory else None,
        "wall_seconds": time.monotonic() - began,
        "log_head": head,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per run (0: the defaults)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for finetune.md and finetune.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    from importlib.metadata import version

    result["versions"] = {p: version(p) for p in ("torch", "transformers", "peft", "accelerate")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cpu_run = {**CPU_RUN, **({"max-steps": args.steps} if args.steps else {}), "threads": 1}
        model, data = make_inputs(root / "cpu", CPU_MODEL)
        one = run(1, cpu_run, model, data, root / "w1")
        two = run(2, cpu_run, model, data, root / "w2")
        result["cpu"] = {
            "model": CPU_MODEL,
            "run": cpu_run,
            "one_process": one,
            "two_processes": two,
            "scaling_efficiency": two["tokens_per_second"] / (2 * one["tokens_per_second"]),
        }
        if args.device == "cuda":
            import torch

            gpu_run = {**GPU_RUN, **({"max-steps": args.steps} if args.steps else {})}
            model, data = make_inputs(root / "gpu", GPU_MODEL)
            fp32 = run(1, {**gpu_run, "precision": "fp32"}, model, data, root / "g32", num_gpus=1)
            bf16 = run(1, {**gpu_run, "precision": "bf16"}, model, data, root / "g16", num_gpus=1)
            result["gpu"] = {
                "name": torch.cuda.get_device_name(0),
                "model": GPU_MODEL,
                "run": gpu_run,
                "fp32": fp32,
                "bf16": bf16,
                "bf16_speedup": bf16["tokens_per_second"] / fp32["tokens_per_second"],
            }
    result["load_after"] = os.getloadavg()[0]
    (out / "finetune.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "finetune.md").write_text(render(result))
    print(render(result))
    return 0


def render(r: dict) -> str:
    cpu = r["cpu"]
    lines = [
        "# LoRA fine-tune example: throughput",
        "",
        f"{r['host']}, {r['cpus']} CPUs, load {r['load_before']:.1f} before / {r['load_after']:.1f} after; "
        + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "",
        f"CPU, model {cpu['model']}, {cpu['run']['max-steps']} steps, global batch "
        f"{cpu['run']['batch-size']}, one thread per process:",
        "",
        "| processes | non-padding tokens/s (median) | wall s |",
        "|---|---|---|",
        f"| 1 | {cpu['one_process']['tokens_per_second']:.0f} | {cpu['one_process']['wall_seconds']:.1f} |",
        f"| 2 (DDP) | {cpu['two_processes']['tokens_per_second']:.0f} | "
        f"{cpu['two_processes']['wall_seconds']:.1f} |",
        "",
        f"Scaling efficiency: {cpu['scaling_efficiency']:.2f}.",
        "",
    ]
    if "gpu" in r:
        gpu = r["gpu"]
        lines += [
            f"GPU {gpu['name']}, model {gpu['model']}:",
            "",
            "| precision | tokens/s | peak GPU memory GiB |",
            "|---|---|---|",
        ]
        for name in ("fp32", "bf16"):
            row = gpu[name]
            lines.append(f"| {name} | {row['tokens_per_second']:.0f} | {row['peak_gpu_memory_gib']} |")
        lines += ["", f"bf16 speed-up: {gpu['bf16_speedup']:.2f}x (goal >= 2x).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
