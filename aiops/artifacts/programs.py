"""Which script serves a trained model: the one rule, shared by `aiops serve RUN`, `aiops model package`,
`aiops export` and `aiops deploy --model` (which sets the endpoint container's ``SAGEMAKER_PROGRAM``).

A model.tar.gz cannot say which module of its ``code/`` is the handler, so the rule reads the
training code: its ``inference.py`` (the serving toolkit's default ``SAGEMAKER_PROGRAM``), else the
training entry point when it defines a top-level ``model_fn`` (what SDK v2 ``estimator.deploy()``
serves), else none (the container's default handlers). Scripts are parsed (``ast``), never imported.
"""

from __future__ import annotations

import ast
import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

DEFAULT_PROGRAM = "inference.py"  # the serving toolkit's default SAGEMAKER_PROGRAM
CODE_DIR = "code"  # a model package's handler folder (model.tar.gz's code/, /opt/ml/model/code)
SUBMIT_DIRECTORY = (
    "/opt/ml/model/code"  # SAGEMAKER_SUBMIT_DIRECTORY: code/ of the unpacked model, as the SDK sets it
)
MAX_SCRIPT_BYTES = 8 * 1024 * 1024  # a larger "script" is not parsed (it is data, not a handler)


def source_defines_model_fn(source: str, filename: str = "<script>") -> bool:
    """The Python source defines a top-level ``model_fn``."""
    try:
        tree = ast.parse(source, filename=filename)
    except (SyntaxError, ValueError):
        return False
    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "model_fn"
        for node in tree.body
    )


def defines_model_fn(script: Path) -> bool:
    try:
        return source_defines_model_fn(Path(script).read_text(errors="replace"), str(script))
    except OSError:
        return False


def choose_program(names: set[str], entry_point: str | None, read: Callable[[str], str | None]) -> str | None:
    """The rule over a code folder given as its file ``names`` (relative POSIX paths) and ``read``."""
    if DEFAULT_PROGRAM in names:
        return DEFAULT_PROGRAM
    if entry_point and entry_point in names:
        source = read(entry_point)
        if source is not None and source_defines_model_fn(source, entry_point):
            return entry_point
    return None


def program_in_dir(source_dir: Path, entry_point: str | None) -> str | None:
    """The rule over a local source folder."""
    source_dir = Path(source_dir)
    names = {n for n in (DEFAULT_PROGRAM, entry_point) if n and (source_dir / n).is_file()}
    return choose_program(names, entry_point, lambda n: (source_dir / n).read_text(errors="replace"))


class TarProgram(NamedTuple):
    has_prefix: bool  # the archive holds files under the prefix (a model.tar.gz's code/)
    program: str | None


def scan_tar(source: bytes | Path, entry_point: str | None, *, prefix: str = "") -> TarProgram:
    """The rule over a tar(.gz): a ``sourcedir.tar.gz`` (``prefix=""``) or a model.tar.gz's ``code/``
    (``prefix="code/"``), in memory or on disk (streamed, never read whole). Only regular members
    are read. tarfile.TarError if unreadable."""
    opened = (
        tarfile.open(fileobj=io.BytesIO(source), mode="r:*")
        if isinstance(source, bytes)
        else tarfile.open(Path(source), mode="r:*")
    )
    with opened as tar:
        members = {}
        for m in tar.getmembers():
            name = m.name.removeprefix("./")
            if m.isfile() and name.startswith(prefix):
                members[name[len(prefix) :]] = m

        def read(name: str) -> str | None:
            member = members[name]
            if member.size > MAX_SCRIPT_BYTES:
                return None
            fh = tar.extractfile(member)
            return fh.read().decode("utf-8", errors="replace") if fh else None

        return TarProgram(bool(members), choose_program(set(members), entry_point, read))


def program_in_tar(source: bytes | Path, entry_point: str | None, *, prefix: str = "") -> str | None:
    return scan_tar(source, entry_point, prefix=prefix).program
