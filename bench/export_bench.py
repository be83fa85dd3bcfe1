"""Size and latency of the digits model before and after `aiops export`, per format, at batch 1 and 64.

The digits example is trained once (10 epochs, in a temporary AIOPS_HOME); each case (TorchScript,
TorchScript int8, ONNX, ONNX int8) is exported through the library call `aiops export` makes, with a
64-row sample from the test channel, ROUNDS times; each round's latency figure is the median of the
forward passes run in SECONDS (what `aiops export` reports), and the table gives the median of the
rounds. Latency is the model call alone (no HTTP, no decoding), in this process, torch/onnxruntime
default threads. The development machine is shared (2 cores, another engineer's benchmarks
running), so figures are noisy: compare ratios within one run, not across runs.

    python bench/export_bench.py [--rounds 3] [--seconds 1.0]   # writes bench/results/export.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "examples" / "digits" / "train.py"
RESULTS = Path(__file__).resolve().parent / "results"
CASES = [("torchscript", None), ("torchscript", "dynamic-int8"), ("onnx", None), ("onnx", "dynamic-int8")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()

    import numpy as np
    import onnxruntime
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="export-bench-"))
    home, data = tmp / "home", tmp / "data"
    env = {**os.environ, "AIOPS_HOME": str(home)}
    aiops = [sys.executable, "-m", "aiops.cli.app"]
    subprocess.run([*aiops, "example", "digits-data", str(data)], check=True, env=env, capture_output=True)
    subprocess.run(
        [
            *aiops,
            "train",
            str(SCRIPT),
            "--channel",
            f"train={data / 'train'}",
            "--channel",
            f"test={data / 'test'}",
            "--hp",
            f"epochs={args.epochs}",
            "--job-name",
            "digits-export-bench",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    test = np.load(data / "test" / "digits.npz")
    sample = tmp / "sample.npz"
    np.savez(sample, x=test["x"][:64], y=test["y"][:64])
    full = tmp / "full.npz"
    np.savez(full, x=test["x"], y=test["y"])

    os.environ["AIOPS_HOME"] = str(home)
    from aiops.inference.export.pipeline import ExportOptions, export_model

    from aiops.settings import Settings

    runs_dir = Settings(home=home).runs_dir

    rows = []
    for fmt, quantize in CASES:
        rounds = []
        for i in range(args.rounds):
            rounds.append(
                export_model(
                    ExportOptions(
                        model="digits-export-bench",
                        format=fmt,
                        quantize=quantize,
                        sample=sample,
                        out=tmp / f"{fmt}-{quantize}-{i}.tar.gz",
                        runs_dir=runs_dir,
                        timing_seconds=args.seconds,
                    )
                )
            )
        # agreement on the whole test set (360 rows), timing skipped
        whole = export_model(
            ExportOptions(
                model="digits-export-bench",
                format=fmt,
                quantize=quantize,
                sample=full,
                out=tmp / f"{fmt}-{quantize}-full.tar.gz",
                runs_dir=runs_dir,
                timing_seconds=0,
            )
        )
        lat = {
            b: {
                k: statistics.median(r["latency_ms"][b][k] for r in rounds) for k in ("before_ms", "after_ms")
            }
            for b in ("batch_1", "batch_64")
        }
        s = rounds[0]
        rows.append(
            {
                "format": fmt,
                "quantize": quantize,
                "method": s["method"],
                "code": s["code"],
                "size_bytes": s["size_bytes"],
                "latency_ms": lat,
                "latency_rounds": [r["latency_ms"] for r in rounds],
                "max_abs_diff_test_set": whole["max_abs_diff"],
                "top1_agreement_test_set": whole["top1_agreement"],
                "accuracy_test_set": whole["accuracy"],
                "sha256_same_every_round": len({r["sha256"] for r in rounds}) == 1,
            }
        )
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_at_end": os.getloadavg(),
            "shared": "yes: another engineer's benchmarks ran on the same 2 cores",
        },
        "rounds": args.rounds,
        "seconds_per_figure": args.seconds,
        "train_epochs": args.epochs,
        "cases": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "export.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# `aiops export`: size and latency of the digits model, before -> after",
        "",
        f"Machine: {m['cpus']} CPUs ({m['platform']}), Python {m['python']}, torch "
        f"{m['torch']}, onnxruntime {m['onnxruntime']}, {m['torch_threads']} torch threads. "
        "**Shared** with another engineer's benchmarks (load average at the end "
        f"{', '.join(f'{v:.2f}' for v in m['loadavg_at_end'])}): noisy; compare within a row.",
        "",
        f"Digits CNN trained {r['train_epochs']} epochs. Latency: the model call alone (no HTTP), median of "
        f"the forward passes in {r['seconds_per_figure']} s, then the median of {r['rounds']} rounds. "
        "'before' is the original TorchScript model as model_fn loads it. Agreement and accuracy: the whole "
        "test channel (360 rows). Sizes: model file (before: model.pt + model.pth, as trained) and the "
        "model.tar.gz (before: the run's packaged artifact).",
        "",
        "| format | model file | model.tar.gz | b1 before | b1 after | b64 before | b64 after "
        "| max abs diff | top-1 agreement | accuracy before -> after | same bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        s, lat, acc = c["size_bytes"], c["latency_ms"], c["accuracy_test_set"]
        kib = lambda n: "n/a" if n is None else f"{n / 1024:.0f} KiB"  # noqa: E731
        lines.append(
            f"| {c['format']}{' int8' if c['quantize'] else ''} | {kib(s['model_file_before'])} -> "
            f"{kib(s['model_file_after'])} | {kib(s['artifact_before'])} -> {kib(s['artifact_after'])} | "
            f"{lat['batch_1']['before_ms']:.3f} ms | {lat['batch_1']['after_ms']:.3f} ms | "
            f"{lat['batch_64']['before_ms']:.3f} ms | {lat['batch_64']['after_ms']:.3f} ms | "
            f"{c['max_abs_diff_test_set']:.2g} | {c['top1_agreement_test_set']:.4f} | {acc['before']:.4f} "
            f"-> {acc['after']:.4f} | {'yes' if c['sha256_same_every_round'] else 'NO'} |"
        )
    lines += [
        "",
        "Methods: "
        + "; ".join(
            f"{c['format']}{' int8' if c['quantize'] else ''}: {c['method']} (code {c['code']})"
            for c in r["cases"]
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
