"""Whether a local run's processes still run, read from ``/proc``.

A record is a file anyone could edit, so a process it names is signalled only when ``/proc`` shows it
is that run's: its pid and start time (a reused pid is never taken for it), then its command line
(the runner: `aiops train` or `aiops tune`) or its environment (the script: this run folder's
``SAGEMAKER_BASE_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiops.run_folder import RunFolder
    from aiops.runs import RunRecord


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid it names one process,
    never a later one that reuses the pid. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    return int(fields[19])


def runner_alive(record: RunRecord) -> bool:
    """The aiops process that runs a local record still runs: its recorded pid and start time, and
    a command line that is `aiops train` or `aiops tune` (a tuning trial), the console script or
    ``python -m aiops.cli.app``."""
    return runner_command(record) is not None


def runner_command(record: RunRecord) -> str | None:
    """ "train" or "tune": the aiops command running a local record, when it still runs (else None)."""
    pid = record.runner_pid
    if not process_alive(pid, record.runner_start_time):
        return None
    return _aiops_command(_cmdline(pid))


def script_alive(record: RunRecord, folder: RunFolder) -> bool:
    """The training script of a local run still runs: its recorded pid and start time, and the
    container contract's ``SAGEMAKER_BASE_DIR`` of this run folder in its environment."""
    pid = record.script_pid
    if not process_alive(pid, record.script_start_time):
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # another user's process: not this run's
        return False
    return f"SAGEMAKER_BASE_DIR={folder.base}".encode() in environ


def _cmdline(pid: int | None) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _aiops_command(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv[:3]):  # [python, ]aiops train | python -m aiops.cli.app train
        entry = os.path.basename(arg) == "aiops" or (arg == "aiops.cli.app" and i > 0 and argv[i - 1] == "-m")
        if entry:
            command = argv[i + 1] if len(argv) > i + 1 else None
            return command if command in ("train", "tune") else None
    return None


def process_alive(pid: int | None, start_time: int | None) -> bool:
    """The process recorded as (pid, start time) still runs (and is not a zombie)."""
    if not pid or start_time is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] != "Z" and int(fields[19]) == start_time
