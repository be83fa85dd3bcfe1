"""Why a local run failed, as the SageMaker container says it: the `failure` file (the toolkit's
`AlgorithmError: ExecuteUserScriptError` line, or the script's own) and, under torchrun, the rank
that failed first and its traceback, ahead of torchrun's own frames."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from aiops.runs import RunFolder

FAILURE_TAIL_CHARS = 1024  # DescribeTrainingJob shows the first 1024 characters of `failure`


def write_failure(
    folder: RunFolder, exit_code: int, tail: list[str], *, distributed: bool
) -> tuple[str, list[str]]:
    """Write (or complete) the run's failure file; returns the failure reason and the log tail to
    show (under torchrun: the lines before torchrun's own traceback, which stay in train.log)."""
    failure_file = folder.container.output / "failure"
    rank = rank_failure(folder.log, folder.torchrun_error) if distributed else None
    if not failure_file.is_file():  # the toolkit writes one when the script did not
        reason = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}"
        failure_file.write_text(
            f"AlgorithmError: ExecuteUserScriptError: {reason}\n" + (rank or "\n".join(tail[-5:]))
        )
    elif rank:  # the script's own line first, then the rank that failed and its traceback
        failure_file.write_text(failure_file.read_text(errors="replace").rstrip("\n") + "\n" + rank)
    if rank:
        tail = tail_before_torchrun(folder.log, len(tail)) or tail
    return failure_file.read_text(errors="replace")[:FAILURE_TAIL_CHARS], tail


_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+)", re.S)
_TRACEBACK_START = "Traceback (most recent call last):"


def rank_failure(log: Path, error_file: Path, *, limit: int = FAILURE_TAIL_CHARS - 100) -> str | None:
    """Under torchrun, the rank that failed first and its traceback, ahead of torchrun's own frames:
    the rank from torchrun's root-cause summary, the traceback from its error file (a script under
    torch's ``@record``) or else the first traceback in the log that is not torchrun's. The
    traceback keeps its last lines, within `limit` characters (the failure reason's budget)."""
    text = _log_end(log)
    match = _ROOT_CAUSE.search(text)
    traceback = _error_file_traceback(error_file) or _script_traceback(text)
    if traceback is None:
        return None
    lines = traceback.rstrip("\n").splitlines()
    while len(lines) > 2 and sum(len(line) + 1 for line in lines) > limit:
        del lines[1]  # the oldest frames go first: the exception and the frames nearest it stay
    head = f"rank {match.group(1)} failed first:" if match else "a rank failed:"
    return "\n".join([head, *lines])


def _log_end(log: Path, size: int = 1 << 20) -> str:
    """The last `size` bytes of the log, where a failure's tracebacks are (a long run's log is large)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def tail_before_torchrun(log: Path, lines: int) -> list[str] | None:
    """The last `lines` lines of the log before torchrun's own traceback (its ChildFailedError)."""
    text = _log_end(log).splitlines()
    starts = [i for i, line in enumerate(text) if line.strip() == _TRACEBACK_START]
    for start in reversed(starts):
        if any("torch/distributed/run.py" in line for line in text[start : start + 40]):
            return text[max(0, start - lines) : start]
    return None


def _error_file_traceback(error_file: Path) -> str | None:
    try:
        message = json.loads(error_file.read_text())["message"]
        callstack = message["extraInfo"]["py_callstack"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _without_torch_frames(callstack) if isinstance(callstack, str) else None


def _without_torch_frames(traceback: str) -> str:
    """The traceback less the frames of torch.distributed's own wrappers (``@record``)."""
    out: list[str] = []
    skipping = False
    for line in traceback.splitlines():
        if line.startswith("  File "):
            skipping = "/torch/distributed/" in line
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out)


def _script_traceback(text: str) -> str | None:
    """The first Python traceback in the log that is not torchrun's own (ChildFailedError)."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if line.strip() != _TRACEBACK_START:
            continue
        end = start + 1
        while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
            end += 1
        block = lines[start : end + 1]
        if not any("torch/distributed/run.py" in b or "ChildFailedError" in b for b in block):
            return "\n".join(block)
    return None
