"""`aiops model package`: ``model.tar.gz`` in the SageMaker layout, from a model folder or a local run.

Layout (what the PyTorch serving container unpacks into ``/opt/ml/model``)::

    model.pt              # weights at the root (any files the model folder holds)
    code/inference.py     # the handler script (SAGEMAKER_PROGRAM names another)
    code/requirements.txt # optional, pip-installed by the container at start

Packaging is deterministic (`aiops.archive`): same inputs, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiops import archive
from aiops.artifacts.programs import CODE_DIR
from aiops.artifacts.resolve import run_code, run_model_dir
from aiops.errors import UsageError
from aiops.runs import RunStore


def package_model(
    model_dir: Path,
    out: Path,
    *,
    entry_point: Path | None = None,
    source_dir: Path | None = None,
    requirements: Path | None = None,
    code_files: dict[str, Path] | None = None,
) -> dict:
    """Write ``out`` (model.tar.gz) from a model folder plus code; returns a summary.

    Model files go to the archive root, chosen by `aiops.files.select_model_folder` (no link out of
    the folder, secrets left out with a warning in ``summary["warnings"]``; an existing ``code/`` in
    the model folder is replaced when ``entry_point``, ``source_dir`` or ``code_files`` is given).
    ``source_dir`` is copied whole into
    ``code/`` through `aiops.files` (the remote bundle's policy); ``code_files`` are code/ entries
    already selected (a run's, from `run_code`);
    ``entry_point`` alone is copied as ``code/<name>``. ``requirements`` becomes ``code/requirements.txt``.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir}: no such model folder")
    out = Path(out)
    if out.is_dir():  # --out FOLDER: the archive goes inside it, under the name SageMaker expects
        out = out / "model.tar.gz"
        if out.is_dir():
            raise UsageError(f"--out {out.parent}: {out} is a folder; name the file to write")
    from aiops import files

    entries: dict[str, Path] = {}
    replace_code = entry_point is not None or source_dir is not None or code_files is not None
    model_files = files.select_model_folder(model_dir)
    warnings = list(model_files.warnings)
    for rel, p in model_files.entries.items():
        if replace_code and (rel == CODE_DIR or rel.startswith(CODE_DIR + "/")):
            continue
        entries[rel] = p
    if source_dir is not None:
        source_dir = Path(source_dir)
        if not source_dir.is_dir():
            raise UsageError(f"--source-dir {source_dir}: no such folder")
        code = files.select(source_dir)
        warnings += code.warnings
        for rel, p in code.entries.items():
            entries[f"{CODE_DIR}/{rel}"] = p
    for rel, p in (code_files or {}).items():
        entries[f"{CODE_DIR}/{rel}"] = p
    if entry_point is not None:
        ep = Path(entry_point)
        if source_dir is not None and not ep.is_absolute() and (source_dir / ep).is_file():
            ep = source_dir / ep
        if not ep.is_file():
            raise UsageError(f"--entry-point {entry_point}: no such file")
        entries[f"{CODE_DIR}/{ep.name}"] = ep
    if requirements is not None:
        if not Path(requirements).is_file():
            raise UsageError(f"--requirements {requirements}: no such file")
        entries[f"{CODE_DIR}/requirements.txt"] = Path(requirements)
    if not any("/" not in rel for rel in entries if not rel.startswith(CODE_DIR + "/")):
        raise UsageError(f"{model_dir}: holds no model files to package")

    out = archive.write_tar_gz_file(entries, Path(out), with_directories=True)
    return {"path": str(out), "files": sorted(entries), "bytes": out.stat().st_size, "warnings": warnings}


@dataclass(frozen=True)
class Packaged:
    """What `package` wrote: ``summary`` as `package_model` returns it; ``program`` the inference
    script a run's code put in code/ (None: not chosen from a run); ``warnings`` about that code."""

    summary: dict
    program: str | None = None
    warnings: tuple[str, ...] = ()


def package(
    model: str,
    out: Path,
    *,
    runs_dir: Path,
    entry_point: Path | None = None,
    source_dir: Path | None = None,
    requirements: Path | None = None,
) -> Packaged:
    """`aiops model package MODEL`: MODEL is a model folder or a local run's name. A run's model
    folder is packaged with the run's whole source dir in code/ (as PyTorchModel repacks
    source_dir), unless ``entry_point`` or ``source_dir`` choose the code."""
    path = Path(model).expanduser()
    if path.is_dir():
        summary = package_model(
            path, out, entry_point=entry_point, source_dir=source_dir, requirements=requirements
        )
        return Packaged(summary, warnings=tuple(summary["warnings"]))
    store = RunStore(runs_dir)
    if not store.exists(model):
        raise UsageError(f"{model}: no such model folder or local run (runs are in {store.root})")
    model_dir, info = run_model_dir(store.folder(model))
    if model_dir.is_file():
        raise UsageError(f"run {model} has only {model_dir}; it is already packaged")
    code = run_code(info) if entry_point is None and source_dir is None else None
    summary = package_model(
        model_dir,
        out,
        entry_point=entry_point,
        source_dir=source_dir,
        requirements=requirements,
        code_files=code.entries if code else None,
    )
    return Packaged(
        summary,
        code.program if code else None,
        tuple(summary["warnings"]) + (tuple(code.warnings) if code else ()),
    )
