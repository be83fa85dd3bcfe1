"""The FSDP language-model example: training throughput and checkpoint cost.

1. tokens/s of training/examples/lm/train.py on CPU with 1 process and with 2 processes (torchrun,
   FSDP on gloo, one thread each, as torchrun sets OMP_NUM_THREADS=1), plus 1 process with 2
   threads for reference; scaling efficiency = tokens/s(2 procs) / (2 x tokens/s(1 proc)). The
   median of the `tokens_per_second` windows after the first (warm-up) one.
2. DCP checkpoint save and restore time vs model size (model + AdamW state, one process, in this
   process), and the 2-process save/restore times the training runs log.
3. `--device cuda`: bf16 autocast vs fp32 tokens/s on one GPU (goal >= 1.5x), with the GPU's name.

    python bench/lm_train_bench.py                 # CPU: writes bench/results/lm_train.{md,json}
    python bench/lm_train_bench.py --device cuda   # also the GPU comparison (needs a CUDA GPU)

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
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "training" / "examples" / "lm"
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(EXAMPLE))
warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")  # one process: meant

MODEL = {"d-model": 128, "n-layers": 4, "n-heads": 4, "seq-len": 128}
CPU_RUN = {
    **MODEL,
    "batch-size": 16,
    "steps": 40,
    "log-every": 10,
    "eval-every": 1000,
    "checkpoint-every": 20,
    "eval-batches": 1,
    "warmup-steps": 5,
}
GPU_RUN = {
    "d-model": 512,
    "n-layers": 8,
    "n-heads": 8,
    "seq-len": 512,
    "batch-size": 32,
    "steps": 60,
    "log-every": 10,
    "eval-every": 1000,
    "checkpoint-every": 1000,
    "eval-batches": 1,
    "warmup-steps": 5,
}
CKPT_SIZES = [(128, 4), (256, 4), (512, 4), (768, 6)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(
    nproc: int, hps: dict, data: Path, work: Path, model_dir: str, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    """The example as the container runs it (torchrun when nproc > 1), its folders under ``work``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "AIOPS_"))}
    env.update(
        SM_CHANNEL_TRAIN=str(data / "train"),
        SM_CHANNEL_TEST=str(data / "test"),
        SM_MODEL_DIR=str(work / model_dir),
        SM_OUTPUT_DATA_DIR=str(work / "out"),
        SM_OUTPUT_DIR=str(work / "o"),
        AIOPS_CHECKPOINT_DIR=str(work / "ck"),
        PYTHONUNBUFFERED="1",
        **(extra_env or {}),
    )
    args = [a for k, v in hps.items() for a in (f"--{k}", str(v))]
    script = str(EXAMPLE / "train.py")
    cmd = (
        [sys.executable, script]
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
            script,
        ]
    )
    return subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=1800)


def run_training(nproc: int, hps: dict, data: Path, work: Path, extra_env: dict | None = None) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    proc = _train(nproc, hps, data, work, "model", extra_env)
    if proc.returncode:
        raise SystemExit(f"training failed ({nproc} proc):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    tps = [float(x) for x in re.findall(r"tokens_per_second=([0-9.]+);", proc.stdout)]
    saves = [float(x) for x in re.findall(r"checkpoint step-\d+ saved in ([0-9.]+)s", proc.stdout)]
    return {
        "tokens_per_second_windows": tps,
        "tokens_per_second": statistics.median(tps[1:] or tps),
        "checkpoint_save_seconds": saves,
        "log_head": proc.stdout.splitlines()[0],
    }


def restore_seconds(nproc: int, hps: dict, data: Path, work: Path) -> float:
    """Resume the finished run's last checkpoint at the same world size (it loads, then ends at once)."""
    proc = _train(nproc, hps, data, work, "model2")
    found = re.search(r"loaded in ([0-9.]+)s", proc.stdout)
    if proc.returncode or not found:
        raise SystemExit(f"resume failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return float(found.group(1))


def checkpoint_costs(tmp: Path) -> list[dict]:
    import torch
    import torch.distributed.checkpoint as dcp
    from lm_model import ByteLM, ModelConfig, count_parameters
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rows = []
    for d_model, layers in CKPT_SIZES:
        model = ByteLM(ModelConfig(d_model=d_model, n_layers=layers, n_heads=4, seq_len=128))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.zeros(1, 8, dtype=torch.long)).sum().backward()
        opt.step()  # the optimizer has its state: 3x the parameters in all
        saves, loads = [], []
        for i in range(3):
            path = tmp / f"ck-{d_model}-{i}"
            msd, osd = get_state_dict(model, opt)
            t = time.perf_counter()
            dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(path))
            saves.append(time.perf_counter() - t)
            msd, osd = get_state_dict(model, opt)
            t = time.perf_counter()
            state = {"model": msd, "optimizer": osd}
            dcp.load(state, checkpoint_id=str(path))
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
            loads.append(time.perf_counter() - t)
        size = sum(f.stat().st_size for f in (tmp / f"ck-{d_model}-0").iterdir())
        rows.append(
            {
                "d_model": d_model,
                "n_layers": layers,
                "parameters": count_parameters(model),
                "checkpoint_mb": round(size / 1e6, 2),
                "save_s": round(statistics.median(saves), 4),
                "restore_s": round(statistics.median(loads), 4),
            }
        )
        for i in range(3):
            shutil.rmtree(tmp / f"ck-{d_model}-{i}")
    return rows


def gpu_comparison(data: Path, tmp: Path) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"measured": False, "reason": "no CUDA device on this machine"}
    out = {"measured": True, "gpu": torch.cuda.get_device_name(0), "config": GPU_RUN}
    for precision in ("fp32", "bf16"):
        out[precision] = run_training(
            1, {**GPU_RUN, "precision": precision, "num-gpus": 1}, data, tmp / f"gpu-{precision}"
        )["tokens_per_second"]
    out["bf16_speedup"] = round(out["bf16"] / out["fp32"], 3)
    out["meets_goal_1_5x"] = out["bf16_speedup"] >= 1.5
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from aiops.training.examples.lm.prepare import write_channels

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        write_channels(data, train_bytes=4_000_000, test_bytes=200_000, seed=0)
        runs = {
            "1 process, 1 thread": run_training(1, {**CPU_RUN, "threads": 1}, data, tmp / "p1"),
            "2 processes (FSDP), 1 thread each": run_training(2, CPU_RUN, data, tmp / "p2"),
            "1 process, 2 threads": run_training(1, {**CPU_RUN, "threads": 2}, data, tmp / "p1t2"),
        }
        restore = {
            "1 process": restore_seconds(1, {**CPU_RUN, "threads": 1}, data, tmp / "p1"),
            "2 processes": restore_seconds(2, CPU_RUN, data, tmp / "p2"),
        }
        ckpt = checkpoint_costs(tmp)
        gpu = (
            gpu_comparison(data, tmp)
            if args.device == "cuda"
            else {"measured": False, "reason": "not requested (run with --device cuda on a GPU machine)"}
        )
    t1 = runs["1 process, 1 thread"]["tokens_per_second"]
    t2 = runs["2 processes (FSDP), 1 thread each"]["tokens_per_second"]
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
            "note": "noisy shared machine: other work ran on the same cores",
        },
        "cpu_run": CPU_RUN,
        "training": runs,
        "scaling_efficiency_2_procs": round(t2 / (2 * t1), 3),
        "resume_load_seconds": restore,
        "checkpoint_vs_size": ckpt,
        "gpu_bf16_vs_fp32": gpu,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lm_train.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "lm_train.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# FSDP language-model example: throughput and checkpoints (bench/lm_train_bench.py)",
        "",
        f"Machine: {m['platform']}, {m['cpus']} cores, Python {m['python']}. **Noisy shared machine**: "
        f"1-minute load average {m['load_average_before']} before, {m['load_average_after']} after "
        "(other work shared the cores; above the core count, the figures are low and scattered).",
        "",
        f"Model d_model {r['cpu_run']['d-model']}, {r['cpu_run']['n-layers']} layers, seq_len "
        f"{r['cpu_run']['seq-len']}, global batch {r['cpu_run']['batch-size']}, "
        f"{r['cpu_run']['steps']} steps; tokens/s is the median of the 10-step windows after the first.",
        "",
        "| run | tokens/s | windows | checkpoint save (s) |",
        "|---|---|---|---|",
    ]
    for name, run in r["training"].items():
        lines.append(
            f"| {name} | {run['tokens_per_second']:.0f} | "
            f"{', '.join(f'{x:.0f}' for x in run['tokens_per_second_windows'])} | "
            f"{', '.join(f'{x:.2f}' for x in run['checkpoint_save_seconds'])} |"
        )
    lines += [
        "",
        f"Scaling efficiency, 2 processes vs 1 (one thread each): **{r['scaling_efficiency_2_procs']:.2f}** "
        "(1.0 = linear). On CPU, FSDP's all-gather / reduce-scatter over gloo and two processes "
        "sharing two cores with everything else bound it.",
        "",
        "Resume (DCP load + set_state_dict) of the same run: "
        f"1 process {r['resume_load_seconds']['1 process']:.2f} s, "
        f"2 processes {r['resume_load_seconds']['2 processes']:.2f} s.",
        "",
        "## DCP checkpoint vs model size (model + AdamW state, 1 process, median of 3)",
        "",
        "| d_model x layers | parameters | checkpoint MB | save s | restore s |",
        "|---|---|---|---|---|",
    ]
    for row in r["checkpoint_vs_size"]:
        lines.append(
            f"| {row['d_model']} x {row['n_layers']} | {row['parameters']:,} | {row['checkpoint_mb']} | "
            f"{row['save_s']} | {row['restore_s']} |"
        )
    g = r["gpu_bf16_vs_fp32"]
    lines += ["", "## GPU: bf16 autocast vs fp32 (goal >= 1.5x)", ""]
    if g["measured"]:
        lines.append(
            f"{g['gpu']}: fp32 {g['fp32']:.0f} tokens/s, bf16 {g['bf16']:.0f} tokens/s, "
            f"speed-up {g['bf16_speedup']}x ({'meets' if g['meets_goal_1_5x'] else 'MISSES'} the goal)."
        )
    else:
        lines.append(
            f"Not measured: {g['reason']}. `python bench/lm_train_bench.py --device cuda` on a GPU "
            "machine runs it (d_model 512, 8 layers, seq_len 512, batch 32)."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
