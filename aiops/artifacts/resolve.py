"""A local model to serve or export (`aiops serve MODEL`, `aiops export MODEL`): a model.tar.gz (unpacked
into a temp folder), a model folder, or a local training run's model with the code that serves it.

A model.tar.gz is laid out as the PyTorch serving container unpacks it into ``/opt/ml/model``: weights at
the root, the handler script in ``code/`` (`aiops.artifacts.package` writes one).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from aiops import archive
from aiops.artifacts import programs
from aiops.artifacts.programs import CODE_DIR
from aiops.errors import UsageError
from aiops.run_folder import RunFolder
from aiops.runs import STATUS_COMPLETED, RunRecord, RunStore, read_record


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
    program = programs.program_in_dir(root, entry)  # inference.py, else an entry point defining model_fn
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
