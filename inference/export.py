"""``aiops export``: a model to TorchScript or ONNX (optionally dynamic int8), verified, packaged.

The model is loaded through the handler contract exactly as ``aiops serve`` loads it
(:func:`aiops.inference.artifacts.resolve_model`, :class:`aiops.inference.handler.Handler`), so
MODEL is a ``model.tar.gz``, a model folder or a local run name, and the user's ``model_fn`` builds
the model. The exported artifact is written in the SageMaker layout, then loaded back through the
same contract and compared with the original on a sample batch (max abs difference, top-1
agreement, size, median latency). Only a result inside the tolerances is moved to ``--out``.

torch, numpy, onnx and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiops.errors import AiopsError, UsageError
from aiops.inference import export_templates
from aiops.inference.artifacts import CODE_DIR, ModelSource, package_model, resolve_model
from aiops.inference.handler import DEFAULT_PROGRAM, Context, Handler, find_script

FORMATS = ("torchscript", "onnx")
QUANTIZE = ("dynamic-int8",)
SAMPLE_SUFFIXES = (".npy", ".npz", ".json", ".csv")
#: files that hold weights: left out of the exported artifact (its model.pt / model.onnx replaces them)
WEIGHT_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin", ".safetensors", ".onnx", ".h5", ".joblib")
#: (max abs difference, min top-1 agreement); None = not checked (still reported)
DEFAULT_TOLERANCES = {None: (1e-4, 0.999), "dynamic-int8": (None, 0.99)}
ONNX_OPSET = 17
#: ONNX dynamic int8 (onnxruntime.quantization.quantize_dynamic) quantizes these ops only
ONNX_INT8_OPS = ("MatMul", "Gemm")
#: torch dynamic int8 (torch.ao.quantization.quantize_dynamic, qint8 defaults) replaces these modules
TORCH_INT8_MODULES = ("Linear", "LSTM", "GRU", "LSTMCell", "RNNCell", "GRUCell")

log = logging.getLogger("aiops.export")


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


def default_out(fmt: str, quantize: str | None) -> Path:
    return Path(f"model-{fmt}{'-int8' if quantize else ''}.tar.gz")


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
        if not opts.sample.is_file():
            raise UsageError(f"--sample {opts.sample}: no such file")
        if opts.sample.suffix.lower() not in SAMPLE_SUFFIXES:
            raise UsageError(f"--sample {opts.sample}: use a {', '.join(SAMPLE_SUFFIXES)} file")
    if opts.format == "onnx":
        for mod in ("onnx", "onnxruntime"):
            try:
                __import__(mod)
            except ImportError:
                raise UsageError(f"--format onnx needs {mod}: pip install 'aiops[onnx]'") from None


# ---------------------------------------------------------------- inputs


def _input_paths(opts: ExportOptions, runs_dir: Path) -> tuple[list[Path], Path | None]:
    """The paths that make up MODEL (never written to) and, for a local run, its run folder."""
    path = Path(opts.model).expanduser()
    if path.exists():
        return [path.resolve()], None
    run = runs_dir / opts.model
    if "/" not in opts.model and (run / "run.json").is_file():
        paths = [run.resolve()]
        with contextlib.suppress(OSError, ValueError):
            import json

            artifact = (json.loads((run / "run.json").read_text()).get("artifacts") or {}).get("model")
            if artifact:
                paths.append(Path(artifact).resolve())
        return paths, run
    return [], None


def _check_out(out: Path, inputs: list[Path]) -> Path:
    target = out.expanduser().resolve()
    for p in inputs:
        if target == p or (p.is_dir() and p in target.parents):
            raise UsageError(f"--out {out} would write over or into the input {p}; choose another path")
    if target.is_dir():
        raise UsageError(f"--out {out} is a folder; give the path of the model.tar.gz to write")
    return target


def load_sample(path: Path) -> tuple[Any, Any]:
    """``(x, labels or None)`` from a .npy/.npz/.json/.csv file; JSON/CSV and float64 become float32."""
    import numpy as np

    suffix = path.suffix.lower()
    labels = None
    try:
        if suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if "x" in keys:
                    x = z["x"]
                    labels = z["y"] if "y" in keys else None
                elif len(keys) == 1:
                    x = z[keys[0]]
                else:
                    raise UsageError(f"--sample {path}: holds {keys}; name the inputs 'x' (and labels 'y')")
        elif suffix == ".json":
            import orjson

            data = orjson.loads(path.read_bytes())
            if isinstance(data, dict):
                if "instances" in data:
                    data = data["instances"]
                elif "x" in data:
                    labels = np.asarray(data["y"]) if "y" in data else None
                    data = data["x"]
                else:
                    raise UsageError(f"--sample {path}: a JSON object needs 'instances' or 'x'")
            x = np.asarray(data, dtype=np.float32)
        elif suffix == ".csv":
            x = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        else:
            raise UsageError(f"--sample {path}: use a {', '.join(SAMPLE_SUFFIXES)} file")
    except UsageError:
        raise
    except Exception as err:  # any parser failure: the file is not what its suffix says
        raise UsageError(f"--sample {path}: cannot read it ({' '.join(str(err).split())[:160]})") from None
    if x.dtype == object or x.dtype.kind not in "biuf":
        raise UsageError(f"--sample {path}: needs numbers, got {x.dtype}")
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    if x.ndim == 0 or x.shape[0] == 0:
        raise UsageError(f"--sample {path}: needs a batch (at least one row along the first axis), got shape "
                         f"{list(x.shape)}")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(x)):
        labels = None
    return x, labels


def find_run_sample(run_dir: Path) -> Path | None:
    """The first sample file in a local run's test channel (opt/ml/input/data/test)."""
    folder = run_dir / "opt" / "ml" / "input" / "data" / "test"
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SAMPLE_SUFFIXES)
    return files[0] if files else None


# ---------------------------------------------------------------- model helpers


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = next((ln.strip() for ln in text if ln.strip()), type(err).__name__)
    return line[:240]


def _tensors(out: Any) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return list(out)
    if isinstance(out, dict) and out and all(isinstance(o, torch.Tensor) for o in out.values()):
        return [out[k] for k in sorted(out)]
    raise UsageError(f"the model returns {type(out).__name__}; export needs a tensor (or a tuple of tensors)")


def _run(model: Any, x: Any) -> list:
    import torch

    with torch.no_grad():
        return [t.detach().float().cpu() for t in _tensors(model(x))]


def _compare(ref: list, got: list) -> tuple[float, float | None]:
    """Max abs difference over all outputs; top-1 agreement on the first ([N, C>1] outputs only)."""
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return math.inf, 0.0
    diff = max(float((a - b).abs().max()) if a.numel() else 0.0 for a, b in zip(ref, got))
    if math.isnan(diff):
        diff = math.inf
    first, other = ref[0], got[0]
    if first.dim() == 2 and first.shape[1] > 1:
        return diff, float((first.argmax(1) == other.argmax(1)).float().mean())
    return diff, None


def _median_ms(fn, x, seconds: float, min_runs: int = 5, max_runs: int = 1000) -> float:
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


def _is_script(model: Any) -> bool:
    import torch

    return isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction))


@contextlib.contextmanager
def _quiet():
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


def _to_torchscript(model: Any, example: Any, quantize: str | None) -> tuple[Any, str, int]:
    """``(script module, how, quantized layers)``."""
    import copy

    import torch

    if _is_script(model):
        module, how = model, "already TorchScript"
        if quantize:
            from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic_jit

            try:
                with _quiet():
                    module = quantize_dynamic_jit(model, {"": default_dynamic_qconfig})
            except Exception as err:  # noqa: BLE001 - reported as a usage error
                raise UsageError(f"cannot quantize the TorchScript model: {_first_line(err)}") from None
            how += ", graph-mode dynamic int8 (quantize_dynamic_jit)"
            return module, how, str(module.graph).count("quantized::linear_dynamic")
        return module, how, 0
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"model_fn returned {type(model).__name__}, not a torch.nn.Module; cannot export it")
    eager = model
    layers = 0
    if quantize:
        eager = copy.deepcopy(model).cpu().eval()
        with _quiet():
            eager = torch.ao.quantization.quantize_dynamic(eager, dtype=torch.qint8)
        layers = sum(1 for m in eager.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic"))
    eager.eval()
    try:
        with _quiet():
            return torch.jit.script(eager), "torch.jit.script" + (", eager dynamic int8" if quantize else ""), layers
    except Exception as script_err:  # noqa: BLE001 - fall back to tracing
        try:
            with _quiet(), torch.no_grad():
                traced = torch.jit.trace(eager, example, check_trace=False)
        except Exception as err:  # noqa: BLE001
            raise UsageError(f"cannot export the model to TorchScript: torch.jit.script failed "
                             f"({_first_line(script_err)}) and torch.jit.trace failed ({_first_line(err)})") from None
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


def _to_onnx(model: Any, example: Any, path: Path, quantize: str | None) -> tuple[str, int]:
    import torch

    if not isinstance(model, torch.nn.Module) and not _is_script(model):
        raise UsageError(f"model_fn returned {type(model).__name__}, not a torch.nn.Module; cannot export it")
    fp32 = path.with_name("fp32.onnx")
    try:
        with _quiet(), torch.no_grad():
            out = model(example)
            n_out = len(_tensors(out))
            names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
            torch.onnx.export(
                model, (example,), str(fp32), dynamo=False, opset_version=ONNX_OPSET, input_names=["input"],
                output_names=names, dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
                do_constant_folding=True, external_data=False,
            )
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - an untraceable model is bad input
        raise UsageError(f"cannot export the model to ONNX: {_first_line(err)}") from None
    _canonical_onnx(fp32)
    how = f"torch.onnx.export (TorchScript-based exporter, dynamo=False, opset {ONNX_OPSET})"
    if not quantize:
        os.replace(fp32, path)
        return how, 0
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(ONNX_INT8_OPS))
    fp32.unlink()
    layers = sum(1 for n in onnx.load(str(path)).graph.node if n.op_type in ("MatMulInteger", "ConvInteger"))
    return how + ", onnxruntime quantize_dynamic (QInt8 weights, MatMul/Gemm)", layers


# ---------------------------------------------------------------- packaging


def _stage_files(source: ModelSource, staging: Path) -> list[str]:
    """Copy the model folder's non-weight files (label maps, vocabularies...) to the staging folder."""
    kept = []
    for p in sorted(source.model_dir.iterdir()):
        if p.name == CODE_DIR or p.name.startswith(".") or p.name == "__pycache__":
            continue
        if p.is_file() and p.suffix.lower() not in WEIGHT_SUFFIXES:
            shutil.copyfile(p, staging / p.name)
            kept.append(p.name)
        elif p.is_dir():
            shutil.copytree(p, staging / p.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            kept.append(p.name + "/")
    return kept


def _stage_code(source: ModelSource, script: Path | None, code: Path) -> None:
    """The original code: the whole code/ folder of an artifact; a run's inference.py (+ requirements.txt)."""
    if source.code_dir is None:
        return
    code.mkdir(parents=True, exist_ok=True)
    inside = source.code_dir.resolve() == (source.model_dir / CODE_DIR).resolve()
    if inside:
        shutil.copytree(source.code_dir, code, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
        return
    for name in {script.name if script else DEFAULT_PROGRAM, "requirements.txt"}:
        if (source.code_dir / name).is_file():
            shutil.copyfile(source.code_dir / name, code / name)


def _generate_code(code: Path, program: str, fmt_label: str, kind: str, cpu_only: bool) -> None:
    """Rename the original script to original_<program> and write the generated one as <program>."""
    original = None
    if (code / program).is_file():
        original = f"original_{program}"
        os.replace(code / program, code / original)
    code.mkdir(parents=True, exist_ok=True)
    (code / program).write_text(export_templates.render(kind, fmt=fmt_label, original=original, cpu_only=cpu_only))


def _add_requirement(code: Path, line: str) -> None:
    req = code / "requirements.txt"
    lines = req.read_text().splitlines() if req.is_file() else []
    name = line.split(">")[0].split("=")[0].strip().lower()
    if not any(ln.strip().lower().startswith(name) for ln in lines):
        lines.append(line)
    req.write_text("\n".join(lines) + "\n")


def _load(tar: Path, program: str) -> tuple[ModelSource, Handler, Any]:
    """Load an artifact exactly as ``aiops serve`` does."""
    src = resolve_model(str(tar), runs_dir=Path(tempfile.gettempdir()))
    try:
        handler = Handler(src.model_dir, script=find_script(src.code_dir, program), code_dir=src.code_dir)
        with _quiet():
            model = handler.load()
    except BaseException:
        src.cleanup()
        raise
    return src, handler, model


def _predict_ok(handler: Handler, x: Any) -> BaseException | None:
    try:
        with _quiet():
            handler.predict(x, Context(model_dir=handler.model_dir))
    except Exception as err:  # noqa: BLE001 - returned to the caller
        return err
    return None


def _bytes_of(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


# ---------------------------------------------------------------- the command


def export_model(opts: ExportOptions) -> dict:
    """Export, verify and write ``opts.out``; returns the summary (raises ExportFailed outside tolerance)."""
    from aiops.settings import get_settings

    validate(opts)
    runs_dir = opts.runs_dir or get_settings().runs_dir
    program = opts.program or os.environ.get("SAGEMAKER_PROGRAM") or DEFAULT_PROGRAM
    if not program.endswith(".py"):
        program += ".py"
    inputs, run_dir = _input_paths(opts, runs_dir)
    out = _check_out(opts.out or default_out(opts.format, opts.quantize), inputs)
    sample_path = opts.sample
    if sample_path is None:
        sample_path = find_run_sample(run_dir) if run_dir is not None else None
        if sample_path is None:
            where = (f"run {opts.model} has no .npy/.npz/.json/.csv file in its test channel"
                     if run_dir is not None else f"{opts.model} is not a local run with a test channel")
            raise UsageError(f"no sample to verify the export with: {where}; give --sample FILE")
    x_np, labels = load_sample(sample_path)

    default_diff, default_agree = DEFAULT_TOLERANCES[opts.quantize]
    max_diff = opts.max_abs_diff if opts.max_abs_diff is not None else default_diff
    min_agree = opts.min_agreement if opts.min_agreement is not None else default_agree

    import torch

    source = resolve_model(opts.model, runs_dir=runs_dir)
    work = Path(tempfile.mkdtemp(prefix=".aiops-export-", dir=out.parent if out.parent.is_dir() else None))
    loaded: list[ModelSource] = []
    try:
        script = find_script(source.code_dir, program)
        original_handler = Handler(source.model_dir, script=script, code_dir=source.code_dir)
        with _quiet():
            original = original_handler.load()
        x = torch.from_numpy(x_np)
        try:
            ref = _run(original, x)
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001 - the sample does not fit the model
            raise UsageError(f"the sample {sample_path} (shape {list(x_np.shape)}, {x_np.dtype}) does not fit the "
                             f"model: {_first_line(err)}") from None
        ref1 = _run(original, x[:1])
        example = x[: min(len(x), 2)]

        staging = work / "model"
        staging.mkdir()
        _stage_files(source, staging)
        fmt_label = opts.format + (" dynamic-int8" if opts.quantize else "")
        if opts.format == "torchscript":
            module, how, layers = _to_torchscript(original, example, opts.quantize)
            with _quiet():
                torch.jit.save(module, str(staging / "model.pt"))
            model_file = staging / "model.pt"
        else:
            how, layers = _to_onnx(original, example, staging / "model.onnx", opts.quantize)
            model_file = staging / "model.onnx"
        if opts.quantize and layers == 0:
            covered = TORCH_INT8_MODULES if opts.format == "torchscript" else ONNX_INT8_OPS
            raise UsageError(f"dynamic int8 found nothing to quantize in this model (it covers "
                             f"{', '.join(covered)}; convolutions are not quantized)")

        original_pred_err = _predict_ok(original_handler, x[:1])
        candidates = []
        if opts.format == "torchscript" and not opts.quantize:
            candidates.append("kept")  # the original code/, when its model_fn loads the new model.pt
        candidates.append("generated")
        verdict = None
        for mode in candidates:
            stage = work / f"stage-{mode}"
            shutil.copytree(staging, stage)
            code = stage / CODE_DIR
            _stage_code(source, script, code)
            if mode == "generated":
                kind = "onnx" if opts.format == "onnx" else "torchscript"
                _generate_code(code, program, fmt_label, kind, cpu_only=bool(opts.quantize))
                if opts.format == "onnx":
                    import onnxruntime

                    major_minor = ".".join(onnxruntime.__version__.split(".")[:2])
                    _add_requirement(code, f"onnxruntime>={major_minor}")
            tar = work / f"{mode}.tar.gz"
            package_model(stage, tar)
            try:
                src, handler, exported = _load(tar, program)
            except Exception as err:  # noqa: BLE001
                if mode == "kept":
                    continue
                raise AiopsError(f"the exported artifact does not load: {_first_line(err)}") from None
            loaded.append(src)
            try:
                got = _run(exported, x)
                got1 = _run(exported, x[:1])
            except Exception as err:  # noqa: BLE001
                if mode == "kept":
                    continue
                raise AiopsError(f"the exported model fails on the sample: {_first_line(err)}") from None
            pred_err = _predict_ok(handler, x[:1])
            if mode == "kept":
                # keep the original code only when it serves exactly the exported model
                with _quiet():
                    direct = _run(module, x)
                if pred_err is not None and original_pred_err is None:
                    continue
                if not _is_script(exported) or _compare(direct, got)[0] != 0.0:
                    continue
            elif pred_err is not None and original_pred_err is None:
                raise AiopsError(f"the exported artifact's predict_fn fails: {_first_line(pred_err)} (the original "
                                 "predict_fn uses more of the model than calling it)")
            verdict = (mode, tar, handler, exported, got, got1)
            break
        assert verdict is not None
        mode, tar, handler, exported, got, got1 = verdict

        diff, agreement = _compare(ref, got)
        diff1, agreement1 = _compare(ref1, got1)
        diff = max(diff, diff1)
        accuracy = None
        if labels is not None and ref[0].dim() == 2:
            lab = torch.from_numpy(labels.astype("int64"))
            accuracy = {"before": float((ref[0].argmax(1) == lab).float().mean()),
                        "after": float((got[0].argmax(1) == lab).float().mean())}

        before_artifact = _before_artifact_bytes(opts.model, source, inputs, work)
        weights_before = _bytes_of([p for p in source.model_dir.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES])
        n = len(x)
        latency = {}
        for label, batch in (("batch_1", x[:1]), (f"batch_{n}", x)):
            if label in latency:
                continue
            latency[label] = {
                "before_ms": round(_median_ms(original, batch, opts.timing_seconds), 4),
                "after_ms": round(_median_ms(exported, batch, opts.timing_seconds), 4),
            }
        summary = {
            "model": opts.model,
            "format": opts.format,
            "quantize": opts.quantize,
            "out": str(out),
            "method": how,
            "quantized_layers": layers,
            "code": mode,
            "program": program,
            "sample": {"path": str(sample_path), "shape": list(x_np.shape), "dtype": str(x_np.dtype),
                       "labels": labels is not None},
            "max_abs_diff": diff,
            "top1_agreement": agreement,
            "top1_agreement_batch_1": agreement1,
            "accuracy": accuracy,
            "tolerance": {"max_abs_diff": max_diff, "min_agreement": min_agree},
            "size_bytes": {"artifact_before": before_artifact, "artifact_after": tar.stat().st_size,
                           "model_file_before": weights_before, "model_file_after": model_file.stat().st_size},
            "latency_ms": latency,
            "torch_threads": torch.get_num_threads(),
        }
        problems = []
        if max_diff is not None and not diff <= max_diff:
            problems.append(f"max abs difference {diff:.3g} > {max_diff:.3g}")
        if agreement is not None and agreement < min_agree:
            problems.append(f"top-1 agreement {agreement:.4f} < {min_agree:.4f}")
        summary["passed"] = not problems
        if problems:
            summary["out"] = None
            raise ExportFailed(f"export outside tolerance: {'; '.join(problems)} (on {n} sample rows; nothing "
                               f"written to {out}; loosen with --max-abs-diff / --min-agreement)", summary)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tar, out)
        summary["sha256"] = _sha256(out)
        return summary
    finally:
        for src in loaded:
            src.cleanup()
        source.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def _before_artifact_bytes(model: str, source: ModelSource, inputs: list[Path], work: Path) -> int | None:
    """The input's model.tar.gz size, or what `aiops model package` would write for a folder or run
    (None when the folder holds no model file: its model_fn builds the model from code alone)."""
    for p in inputs:
        if p.is_file():
            return p.stat().st_size
    tmp = work / "before.tar.gz"
    stage = work / "before"
    shutil.copytree(source.model_dir, stage, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if source.code_dir is not None and not (stage / CODE_DIR).is_dir():
        (stage / CODE_DIR).mkdir()
        for name in ("inference.py", "requirements.txt"):
            if (source.code_dir / name).is_file():
                shutil.copyfile(source.code_dir / name, stage / CODE_DIR / name)
    try:
        package_model(stage, tmp)
    except UsageError:
        return None
    return tmp.stat().st_size


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
