"""``aiops export``: a model to TorchScript or ONNX (optionally dynamic int8), verified, packaged.

The model is loaded through the handler contract exactly as ``aiops serve`` loads it
(:func:`aiops.artifacts.resolve.resolve_model`, :class:`aiops.inference.handler.Handler`), so
MODEL is a ``model.tar.gz``, a model folder or a local run name, and the user's ``model_fn`` builds
the model. The exported artifact is written in the SageMaker layout, then loaded back through the
same contract and compared with the original on a sample batch (max abs difference, top-1
agreement, size, median latency). Only a result inside the tolerances is moved to ``--out``.

This module is the command; its ideas live next to it: the sample (``export_samples``), the
conversion (``export_convert``), the verification (``export_verify``) and the packaging
(``export_package``). torch, numpy, onnx and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiops.inference.export import package, verify
from aiops.inference.export.convert import FORMATS, QUANTIZE, convert, quiet
from aiops.inference.export.package import default_out
from aiops.inference.export.samples import check_sample_path, load_sample, resolve_sample
from aiops.inference.handler import Handler, find_script

from aiops.archive import file_sha256
from aiops.artifacts.programs import DEFAULT_PROGRAM
from aiops.artifacts.resolve import ModelSource, resolve_model
from aiops.errors import AiopsError, UsageError
from aiops.extras import check_extra

__all__ = ["ExportFailed", "ExportOptions", "default_out", "export_model", "validate"]


class ExportFailed(AiopsError):
    """The exported model is outside the tolerances (exit 1); ``summary`` holds the numbers."""

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class ExportOptions:
    model: str
    format: str
    out: Path | None = None
    quantize: str | None = None
    sample: Path | None = None
    max_abs_diff: float | None = None
    min_agreement: float | None = None
    runs_dir: Path | None = None
    program: str | None = None  # SAGEMAKER_PROGRAM
    timing_seconds: float = 0.3  # per latency figure (median of the runs in that time, at least 5)


def validate(opts: ExportOptions) -> None:
    """Everything checkable before loading torch."""
    if opts.format not in FORMATS:
        raise UsageError(f"unknown format {opts.format!r}; choose one of {', '.join(FORMATS)}")
    if opts.quantize is not None and opts.quantize not in QUANTIZE:
        raise UsageError(f"unknown --quantize {opts.quantize!r}; choose {', '.join(QUANTIZE)}")
    if opts.max_abs_diff is not None and not (opts.max_abs_diff >= 0 and math.isfinite(opts.max_abs_diff)):
        raise UsageError(f"--max-abs-diff must be a finite number >= 0, got {opts.max_abs_diff}")
    if opts.min_agreement is not None and not 0 <= opts.min_agreement <= 1:
        raise UsageError(f"--min-agreement must be between 0 and 1, got {opts.min_agreement}")
    if opts.sample is not None:
        check_sample_path(opts.sample)
    if opts.format == "onnx":
        check_extra("onnx", "--format onnx", "onnx", "onnxruntime")


def export_model(opts: ExportOptions) -> dict:
    """Export, verify and write ``opts.out``; returns the summary (raises ExportFailed outside tolerance)."""
    from aiops.settings import get_settings

    validate(opts)
    runs_dir = opts.runs_dir or get_settings().runs_dir
    program = opts.program or os.environ.get("SAGEMAKER_PROGRAM") or DEFAULT_PROGRAM
    if not program.endswith(".py"):
        program += ".py"
    inputs, run_dir = package.input_paths(opts.model, runs_dir)
    out = package.check_out(opts.out or default_out(opts.format, opts.quantize), inputs)
    sample_path = resolve_sample(opts.sample, opts.model, run_dir)
    x_np, labels = load_sample(sample_path)
    max_diff, min_agree = verify.tolerances(opts.quantize, opts.max_abs_diff, opts.min_agreement)

    import torch

    source = resolve_model(opts.model, runs_dir=runs_dir)
    work = Path(tempfile.mkdtemp(prefix=".aiops-export-", dir=out.parent if out.parent.is_dir() else None))
    loaded: list[ModelSource] = []
    try:
        script = find_script(source.code_dir, program)
        original_handler = Handler(source.model_dir, script=script, code_dir=source.code_dir)
        with quiet():
            original = original_handler.load()
        x = torch.from_numpy(x_np)
        ref, ref1 = verify.reference(original, x, sample_path, x_np)

        staging = work / "model"
        staging.mkdir()
        package.stage_files(source, staging)
        model_file, module, how, layers = convert(
            original, x[: min(len(x), 2)], opts.format, opts.quantize, staging
        )

        def build(mode: str) -> Path:
            return package.build_artifact(
                work, staging, source, script, program, mode, opts.format, opts.quantize
            )

        chosen = verify.choose_artifact(
            package.code_modes(opts.format, opts.quantize),
            build,
            program,
            module,
            original_handler,
            x,
            loaded,
        )
        diff, agreement = verify.compare(ref, chosen.got)
        diff1, agreement1 = verify.compare(ref1, chosen.got1)
        diff = max(diff, diff1)
        summary = {
            "model": opts.model,
            "format": opts.format,
            "quantize": opts.quantize,
            "out": str(out),
            "method": how,
            "quantized_layers": layers,
            "code": chosen.mode,
            "program": program,
            "sample": {
                "path": str(sample_path),
                "shape": list(x_np.shape),
                "dtype": str(x_np.dtype),
                "labels": labels is not None,
            },
            "max_abs_diff": diff,
            "top1_agreement": agreement,
            "top1_agreement_batch_1": agreement1,
            "accuracy": verify.accuracy(ref, chosen.got, labels),
            "tolerance": {"max_abs_diff": max_diff, "min_agreement": min_agree},
            "size_bytes": {
                "artifact_before": package.before_artifact_bytes(source, inputs, work),
                "artifact_after": chosen.tar.stat().st_size,
                "model_file_before": package.weight_bytes(source.model_dir),
                "model_file_after": model_file.stat().st_size,
            },
            "latency_ms": verify.latency(original, chosen.exported, x, opts.timing_seconds),
            "torch_threads": torch.get_num_threads(),
        }
        problems = verify.problems(diff, agreement, max_diff, min_agree)
        summary["passed"] = not problems
        if problems:
            summary["out"] = None
            raise ExportFailed(
                f"export outside tolerance: {'; '.join(problems)} (on {len(x)} sample rows; nothing "
                f"written to {out}; loosen with --max-abs-diff / --min-agreement)",
                summary,
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(chosen.tar, out)
        summary["sha256"] = file_sha256(out)
        return summary
    finally:
        for src in loaded:
            src.cleanup()
        source.cleanup()
        shutil.rmtree(work, ignore_errors=True)
