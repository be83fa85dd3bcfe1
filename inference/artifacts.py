"""Model artifacts: find what to serve, and write ``model.tar.gz`` in the SageMaker layout.

Layout (what the PyTorch serving container unpacks into ``/opt/ml/model``)::

    model.pt              # weights at the root (any files the model folder holds)
    code/inference.py     # the handler script (SAGEMAKER_PROGRAM names another)
    code/requirements.txt # optional, pip-installed by the container at start

Packaging is deterministic (`aiops.archive`): same inputs, same bytes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from aiops import archive, programs
from aiops.errors import UsageError
from aiops.run_folder import RunFolder
from aiops.runs import STATUS_COMPLETED, RunRecord, RunStore, read_record

CODE_DIR = programs.CODE_DIR


@dataclass
class ModelSource:
    """A resolved MODEL argument: the unpacked model folder and its code folder (if any)."""

    model_dir: Path
    code_dir: Path | None
    origin: str
    tempdir: Path | None = None  # extracted tarball, removed by cleanup()
    program: str | None = None  # SAGEMAKER_PROGRAM this model wants (a run's inference script), if known

    def cleanup(self) -> None:
        if self.tempdir is not None:
            shutil.rmtree(self.tempdir, ignore_errors=True)
            self.tempdir = None


def run_model_dir(folder: RunFolder) -> tuple[Path, RunRecord]:
    """The model of a local training run: its container tree's model folder, else its model.tar.gz."""
    info = read_record(folder)
    assert info is not None  # strict
    if info.status not in (None, STATUS_COMPLETED):
        raise UsageError(f"run {folder.name} is {info.status}; only a Completed run has a model to serve")
    model_dir = folder.model_dir
    if not model_dir.is_dir():
        artifact = info.artifacts.model
        if artifact and Path(artifact).is_file():
            return Path(artifact), info
        raise UsageError(f"run {folder.name} has no model folder ({model_dir}) nor model.tar.gz")
    return model_dir, info


def defines_model_fn(script: Path) -> bool:
    """The script defines a top-level `model_fn` (read, never imported; the rule is `aiops.programs`)."""
    return programs.defines_model_fn(script)


def inference_program(source_dir: Path, entry_point: str | None) -> str | None:
    """SAGEMAKER_PROGRAM for a model trained from `source_dir`: its inference.py, else the training
    entry point when it defines model_fn (what SDK v2 `estimator.deploy()` does), else None.
    The one rule, `aiops.programs`, also used by `aiops deploy --model`."""
    return programs.program_in_dir(source_dir, entry_point)


@dataclass
class RunCode:
    """What serves a local run: its source dir, the program, and the files `code/` gets."""

    root: Path
    program: str
    entries: dict[str, Path]
    warnings: list[str]


def run_code(info: RunRecord) -> RunCode | None:
    """A run's inference code: the whole source dir (through `aiops.files`, as the remote bundle),
    as PyTorchModel repacks `source_dir` into code/; a single-script run ships that script (and an
    inference.py / requirements.txt beside it). None when nothing in it serves (defaults apply)."""
    from aiops import files

    root = info.code_root
    if root is None:
        return None
    single, entry = info.single_script, info.script_name
    program = inference_program(root, entry)
    if program is None:
        return None
    if single:
        names = {
            n for n in (entry, programs.DEFAULT_PROGRAM, "requirements.txt") if n and (root / n).is_file()
        }
        return RunCode(root, program, {n: root / n for n in sorted(names)}, [])
    selection = files.select(root, follow_symlinks=bool(info.config and info.config.follow_symlinks))
    if program not in selection.entries:
        return None
    return RunCode(root, program, selection.entries, selection.warnings)


def run_code_dir(info: RunRecord) -> Path | None:
    """A run's source folder when something in it serves the model (see `run_code`)."""
    code = run_code(info)
    return code.root if code else None


def extract_model(tar_path: Path, limits: dict | None = None) -> Path:
    """Unpack a model.tar.gz into a new temp folder with :func:`aiops.archive.extract_to_temp`
    (streaming, capped, removed again on failure); a refused or broken archive is a UsageError."""
    try:
        return archive.extract_to_temp(tar_path, prefix="aiops-model-", **(limits or {}))
    except archive.ArchiveError as err:
        raise UsageError(f"{tar_path}: {err}") from None
    except OSError as err:
        raise UsageError(f"{tar_path}: cannot unpack it ({err.strerror or err})") from None


def resolve_model(
    model: str,
    *,
    runs_dir: Path,
    entry_point: str | None = None,
    source_dir: str | None = None,
    archive_limits: dict | None = None,
) -> ModelSource:
    """MODEL may be a model.tar.gz, a model folder, or the name of a local training run.

    ``source_dir`` replaces the artifact's ``code/`` folder; ``entry_point`` names the script in it
    (a path to a file is also accepted, then its folder is the code folder).
    """
    path = Path(model).expanduser()
    store = RunStore(runs_dir)
    run = None if path.exists() or not store.exists(model) else store.folder(model)
    tempdir = None
    run_code_root: Path | None = None
    program = None
    run_entry = None  # the run's training entry point, which estimator.deploy() sets as SAGEMAKER_PROGRAM
    if run is not None:
        model_path, info = run_model_dir(run)
        run_entry = info.script_name
        code = run_code(info)
        if code is not None:
            run_code_root, program = code.root, code.program
        origin = f"run {model}"
    elif path.exists():
        model_path, origin = path, str(path)
    else:
        raise UsageError(
            f"{model}: no such model.tar.gz, folder, or local run (runs are looked up in {runs_dir})"
        )

    if model_path.is_file():
        tempdir = extract_model(model_path, archive_limits)
        model_dir = tempdir
    elif model_path.is_dir():
        model_dir = model_path
    else:
        raise UsageError(f"{model_path}: not a file or folder")

    code_dir: Path | None
    if (model_dir / CODE_DIR).is_dir():
        # the code/ the model carries decides, by the one rule, with the run's entry point (a training
        # script that copies itself into code/ and defines model_fn serves, as after estimator.deploy())
        code_dir = model_dir / CODE_DIR
        program = programs.program_in_dir(code_dir, run_entry)
    else:
        code_dir = run_code_root
    if source_dir is not None or entry_point is not None:
        program = None  # the caller chose the script
    if source_dir is not None:
        code_dir = Path(source_dir).expanduser().resolve()
        if not code_dir.is_dir():
            raise UsageError(f"--source-dir {source_dir}: no such folder")
    if entry_point is not None:
        ep = Path(entry_point).expanduser()
        if source_dir is None and ep.is_file():
            code_dir = ep.resolve().parent
        elif code_dir is None or not (code_dir / ep.name).is_file():
            raise UsageError(
                f"--entry-point {entry_point}: not found" + (f" in {code_dir}" if code_dir else "")
            )
    return ModelSource(
        model_dir=model_dir.resolve(), code_dir=code_dir, origin=origin, tempdir=tempdir, program=program
    )


# ---------------------------------------------------------------- packaging


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
