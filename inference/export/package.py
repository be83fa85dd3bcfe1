"""Packaging for ``aiops export``: the paths it reads and writes, the staged model folder, the code/ it
ships (the original code or a generated ``inference.py``), and the candidate model.tar.gz files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from aiops.inference.export import templates

from aiops.artifacts.package import package_model
from aiops.artifacts.programs import CODE_DIR, DEFAULT_PROGRAM
from aiops.artifacts.resolve import ModelSource
from aiops.errors import UsageError
from aiops.runs import RunStore, read_record

#: files that hold weights: left out of the exported artifact (its model.pt / model.onnx replaces them)
WEIGHT_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin", ".safetensors", ".onnx", ".h5", ".joblib")


def default_out(fmt: str, quantize: str | None) -> Path:
    return Path(f"model-{fmt}{'-int8' if quantize else ''}.tar.gz")


def input_paths(model: str, runs_dir: Path) -> tuple[list[Path], Path | None]:
    """The paths that make up MODEL (never written to) and, for a local run, its run folder."""
    path = Path(model).expanduser()
    if path.exists():
        return [path.resolve()], None
    store = RunStore(runs_dir)
    if store.exists(model):
        run = store.folder(model)
        paths = [run.root.resolve()]
        record = read_record(run, strict=False)
        if record is not None and record.artifacts.model:
            paths.append(Path(record.artifacts.model).resolve())
        return paths, run.root
    return [], None


def check_out(out: Path, inputs: list[Path]) -> Path:
    """The resolved ``--out``: never one of the inputs or inside them, never a folder."""
    target = out.expanduser().resolve()
    for p in inputs:
        if target == p or (p.is_dir() and p in target.parents):
            raise UsageError(f"--out {out} would write over or into the input {p}; choose another path")
    if target.is_dir():
        raise UsageError(f"--out {out} is a folder; give the path of the model.tar.gz to write")
    return target


def stage_files(source: ModelSource, staging: Path) -> list[str]:
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
        shutil.copytree(
            source.code_dir,
            code,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"),
        )
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
    (code / program).write_text(templates.render(kind, fmt=fmt_label, original=original, cpu_only=cpu_only))


def _add_requirement(code: Path, line: str) -> None:
    req = code / "requirements.txt"
    lines = req.read_text().splitlines() if req.is_file() else []
    name = line.split(">")[0].split("=")[0].strip().lower()
    if not any(ln.strip().lower().startswith(name) for ln in lines):
        lines.append(line)
    req.write_text("\n".join(lines) + "\n")


def code_modes(fmt: str, quantize: str | None) -> list[str]:
    """The code/ to try, in order: ``kept`` (the original code, when its model_fn loads the new model.pt)
    only for plain TorchScript; ``generated`` always works."""
    return (["kept"] if fmt == "torchscript" and not quantize else []) + ["generated"]


def build_artifact(
    work: Path,
    staging: Path,
    source: ModelSource,
    script: Path | None,
    program: str,
    mode: str,
    fmt: str,
    quantize: str | None,
) -> Path:
    """``work/<mode>.tar.gz``: the staged model folder plus the code/ of that mode."""
    stage = work / f"stage-{mode}"
    shutil.copytree(staging, stage)
    code = stage / CODE_DIR
    _stage_code(source, script, code)
    if mode == "generated":
        fmt_label = fmt + (" dynamic-int8" if quantize else "")
        kind = "onnx" if fmt == "onnx" else "torchscript"
        _generate_code(code, program, fmt_label, kind, cpu_only=bool(quantize))
        if fmt == "onnx":
            import onnxruntime

            major_minor = ".".join(onnxruntime.__version__.split(".")[:2])
            _add_requirement(code, f"onnxruntime>={major_minor}")
    tar = work / f"{mode}.tar.gz"
    package_model(stage, tar)
    return tar


def before_artifact_bytes(source: ModelSource, inputs: list[Path], work: Path) -> int | None:
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
        for name in (DEFAULT_PROGRAM, "requirements.txt"):
            if (source.code_dir / name).is_file():
                shutil.copyfile(source.code_dir / name, stage / CODE_DIR / name)
    try:
        package_model(stage, tmp)
    except UsageError:
        return None
    return tmp.stat().st_size


def weight_bytes(model_dir: Path) -> int:
    """The bytes of the weight files directly in a model folder."""
    return sum(
        p.stat().st_size for p in model_dir.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file()
    )
