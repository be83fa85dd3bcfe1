"""Verification for ``aiops export``: load each candidate artifact exactly as ``aiops serve`` does, run it
on the sample next to the original, and measure the difference, top-1 agreement, accuracy and latency
against the tolerances. torch is imported inside the functions.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiops.inference.contract import Context
from aiops.inference.export.convert import first_line, is_script, quiet, tensors
from aiops.inference.handler import Handler, find_script

from aiops.artifacts.resolve import ModelSource, resolve_model
from aiops.errors import AiopsError, UsageError

#: (max abs difference, min top-1 agreement); None = not checked (still reported)
DEFAULT_TOLERANCES = {None: (1e-4, 0.999), "dynamic-int8": (None, 0.99)}


def tolerances(
    quantize: str | None, max_abs_diff: float | None, min_agreement: float | None
) -> tuple[float | None, float]:
    """The given tolerances, else the defaults for fp32 or int8."""
    default_diff, default_agree = DEFAULT_TOLERANCES[quantize]
    return (
        max_abs_diff if max_abs_diff is not None else default_diff,
        min_agreement if min_agreement is not None else default_agree,
    )


def run(model: Any, x: Any) -> list:
    """The model's outputs on ``x`` as float CPU tensors."""
    import torch

    with torch.no_grad():
        return [t.detach().float().cpu() for t in tensors(model(x))]


def reference(original: Any, x: Any, sample_path: Path, x_np: Any) -> tuple[list, list]:
    """The original's outputs on the whole sample and on its first row; a usage error when it does not fit."""
    try:
        ref = run(original, x)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - the sample does not fit the model
        raise UsageError(
            f"the sample {sample_path} (shape {list(x_np.shape)}, {x_np.dtype}) does not fit the "
            f"model: {first_line(err)}"
        ) from None
    return ref, run(original, x[:1])


def compare(ref: list, got: list) -> tuple[float, float | None]:
    """Max abs difference over all outputs; top-1 agreement on the first ([N, C>1] outputs only)."""
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got, strict=True)):
        return math.inf, 0.0
    diff = max(float((a - b).abs().max()) if a.numel() else 0.0 for a, b in zip(ref, got, strict=True))
    if math.isnan(diff):
        diff = math.inf
    first, other = ref[0], got[0]
    if first.dim() == 2 and first.shape[1] > 1:
        return diff, float((first.argmax(1) == other.argmax(1)).float().mean())
    return diff, None


def median_ms(fn, x, seconds: float, min_runs: int = 5, max_runs: int = 1000) -> float:
    import torch

    with torch.no_grad():
        fn(x)
        fn(x)
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - began < seconds):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def latency(original: Any, exported: Any, x: Any, seconds: float) -> dict:
    """Median latency before and after, on one row and on the whole sample."""
    out: dict = {}
    for label, batch in (("batch_1", x[:1]), (f"batch_{len(x)}", x)):
        if label in out:
            continue
        out[label] = {
            "before_ms": round(median_ms(original, batch, seconds), 4),
            "after_ms": round(median_ms(exported, batch, seconds), 4),
        }
    return out


def accuracy(ref: list, got: list, labels: Any) -> dict | None:
    """Top-1 accuracy before and after, when the sample has labels and the model gives [N, C] scores."""
    if labels is None or ref[0].dim() != 2:
        return None
    import torch

    lab = torch.from_numpy(labels.astype("int64"))
    return {
        "before": float((ref[0].argmax(1) == lab).float().mean()),
        "after": float((got[0].argmax(1) == lab).float().mean()),
    }


def problems(diff: float, agreement: float | None, max_diff: float | None, min_agree: float) -> list[str]:
    """What is outside the tolerances (empty: passed)."""
    found = []
    if max_diff is not None and not diff <= max_diff:
        found.append(f"max abs difference {diff:.3g} > {max_diff:.3g}")
    if agreement is not None and agreement < min_agree:
        found.append(f"top-1 agreement {agreement:.4f} < {min_agree:.4f}")
    return found


def load_as_served(tar: Path, program: str) -> tuple[ModelSource, Handler, Any]:
    """Load an artifact exactly as ``aiops serve`` does."""
    src = resolve_model(str(tar), runs_dir=Path(tempfile.gettempdir()))
    try:
        handler = Handler(src.model_dir, script=find_script(src.code_dir, program), code_dir=src.code_dir)
        with quiet():
            model = handler.load()
    except BaseException:
        src.cleanup()
        raise
    return src, handler, model


def predict_error(handler: Handler, x: Any) -> BaseException | None:
    """What the handler's predict_fn raises on ``x`` (None: it works)."""
    try:
        with quiet():
            handler.predict(x, Context(model_dir=handler.model_dir))
    except Exception as err:  # noqa: BLE001 - returned to the caller
        return err
    return None


@dataclass
class Verified:
    mode: str  # "kept" (the original code/) or "generated"
    tar: Path
    handler: Handler
    exported: Any
    got: list  # outputs on the whole sample
    got1: list  # outputs on the first row


def choose_artifact(
    modes: list[str],
    build: Callable[[str], Path],
    program: str,
    module: Any,
    original_handler: Handler,
    x: Any,
    loaded: list[ModelSource],
) -> Verified:
    """The first code mode whose artifact loads as served and runs the sample; ``kept`` only when the
    original code serves exactly the exported model. Every loaded source is appended to ``loaded``
    (the caller cleans them up)."""
    original_pred_err = predict_error(original_handler, x[:1])
    for mode in modes:
        tar = build(mode)
        try:
            src, handler, exported = load_as_served(tar, program)
        except Exception as err:  # noqa: BLE001
            if mode == "kept":
                continue
            raise AiopsError(f"the exported artifact does not load: {first_line(err)}") from None
        loaded.append(src)
        try:
            got = run(exported, x)
            got1 = run(exported, x[:1])
        except Exception as err:  # noqa: BLE001
            if mode == "kept":
                continue
            raise AiopsError(f"the exported model fails on the sample: {first_line(err)}") from None
        pred_err = predict_error(handler, x[:1])
        if mode == "kept":
            # keep the original code only when it serves exactly the exported model
            with quiet():
                direct = run(module, x)
            if pred_err is not None and original_pred_err is None:
                continue
            if not is_script(exported) or compare(direct, got)[0] != 0.0:
                continue
        elif pred_err is not None and original_pred_err is None:
            raise AiopsError(
                f"the exported artifact's predict_fn fails: {first_line(pred_err)} (the original "
                "predict_fn uses more of the model than calling it)"
            )
        return Verified(mode, tar, handler, exported, got, got1)
    raise AssertionError("the generated code mode always returns or raises")
