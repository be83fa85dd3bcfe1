"""Conversion for ``aiops export``: an eager (or TorchScript) model to TorchScript or ONNX, optionally
dynamic int8. torch, onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from aiops.errors import UsageError

FORMATS = ("torchscript", "onnx")
QUANTIZE = ("dynamic-int8",)
ONNX_OPSET = 17
#: ONNX dynamic int8 (onnxruntime.quantization.quantize_dynamic) quantizes these ops only
ONNX_INT8_OPS = ("MatMul", "Gemm")
#: torch dynamic int8 (torch.ao.quantization.quantize_dynamic, qint8 defaults) replaces these modules
TORCH_INT8_MODULES = ("Linear", "LSTM", "GRU", "LSTMCell", "RNNCell", "GRUCell")


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = next((ln.strip() for ln in text if ln.strip()), type(err).__name__)
    return line[:240]


@contextlib.contextmanager
def quiet():
    """torch and onnxruntime warn a lot while tracing and quantizing; keep the CLI output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def tensors(out: Any) -> list:
    """A model's output as a list of tensors (a dict's in key order)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return list(out)
    if isinstance(out, dict) and out and all(isinstance(o, torch.Tensor) for o in out.values()):
        return [out[k] for k in sorted(out)]
    raise UsageError(f"the model returns {type(out).__name__}; export needs a tensor (or a tuple of tensors)")


def is_script(model: Any) -> bool:
    import torch

    return isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction))


def to_torchscript(model: Any, example: Any, quantize: str | None) -> tuple[Any, str, int]:
    """``(script module, how, quantized layers)``."""
    import copy

    import torch

    if is_script(model):
        module, how = model, "already TorchScript"
        if quantize:
            from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic_jit

            try:
                with quiet():
                    module = quantize_dynamic_jit(model, {"": default_dynamic_qconfig})
            except Exception as err:  # noqa: BLE001 - reported as a usage error
                raise UsageError(f"cannot quantize the TorchScript model: {first_line(err)}") from None
            how += ", graph-mode dynamic int8 (quantize_dynamic_jit)"
            return module, how, str(module.graph).count("quantized::linear_dynamic")
        return module, how, 0
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"model_fn returned {type(model).__name__}, not a torch.nn.Module; cannot export it")
    eager = model
    layers = 0
    if quantize:
        eager = copy.deepcopy(model).cpu().eval()
        with quiet():
            eager = torch.ao.quantization.quantize_dynamic(eager, dtype=torch.qint8)
        layers = sum(
            1 for m in eager.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")
        )
    eager.eval()
    try:
        with quiet():
            return (
                torch.jit.script(eager),
                "torch.jit.script" + (", eager dynamic int8" if quantize else ""),
                layers,
            )
    except Exception as script_err:  # noqa: BLE001 - fall back to tracing
        try:
            with quiet(), torch.no_grad():
                traced = torch.jit.trace(eager, example, check_trace=False)
        except Exception as err:  # noqa: BLE001
            raise UsageError(
                f"cannot export the model to TorchScript: torch.jit.script failed "
                f"({first_line(script_err)}) and torch.jit.trace failed ({first_line(err)})"
            ) from None
        return traced, "torch.jit.trace" + (", eager dynamic int8" if quantize else ""), layers


def _canonical_onnx(path: Path) -> None:
    """Give nodes positional names and drop doc strings: the exporter's names depend on process state
    (the first export in a process keeps module scopes, later ones do not), so bytes would too."""
    import onnx

    model = onnx.load(str(path))
    model.doc_string = ""
    model.graph.doc_string = ""
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type}_{i}"
        node.doc_string = ""
    onnx.save(model, str(path))


def to_onnx(model: Any, example: Any, path: Path, quantize: str | None) -> tuple[str, int]:
    """Write ``path``; ``(how, quantized layers)``."""
    import torch

    if not isinstance(model, torch.nn.Module) and not is_script(model):
        raise UsageError(f"model_fn returned {type(model).__name__}, not a torch.nn.Module; cannot export it")
    fp32 = path.with_name("fp32.onnx")
    try:
        with quiet(), torch.no_grad():
            out = model(example)
            n_out = len(tensors(out))
            names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
            torch.onnx.export(
                model,
                (example,),
                str(fp32),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=names,
                dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
                do_constant_folding=True,
                external_data=False,
            )
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - an untraceable model is bad input
        raise UsageError(f"cannot export the model to ONNX: {first_line(err)}") from None
    _canonical_onnx(fp32)
    how = f"torch.onnx.export (TorchScript-based exporter, dynamo=False, opset {ONNX_OPSET})"
    if not quantize:
        os.replace(fp32, path)
        return how, 0
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(
            str(fp32), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=list(ONNX_INT8_OPS)
        )
    fp32.unlink()
    layers = sum(1 for n in onnx.load(str(path)).graph.node if n.op_type in ("MatMulInteger", "ConvInteger"))
    return how + ", onnxruntime quantize_dynamic (QInt8 weights, MatMul/Gemm)", layers


def convert(
    model: Any, example: Any, fmt: str, quantize: str | None, staging: Path
) -> tuple[Path, Any, str, int]:
    """Write the converted model into ``staging``: ``(model file, script module or None, how, quantized
    layers)``. A usage error when int8 was asked for and found nothing to quantize."""
    module = None
    if fmt == "torchscript":
        import torch

        module, how, layers = to_torchscript(model, example, quantize)
        model_file = staging / "model.pt"
        with quiet():
            torch.jit.save(module, str(model_file))
    else:
        model_file = staging / "model.onnx"
        how, layers = to_onnx(model, example, model_file, quantize)
    if quantize and layers == 0:
        covered = TORCH_INT8_MODULES if fmt == "torchscript" else ONNX_INT8_OPS
        raise UsageError(
            f"dynamic int8 found nothing to quantize in this model (it covers "
            f"{', '.join(covered)}; convolutions are not quantized)"
        )
    return model_file, module, how, layers
