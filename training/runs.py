"""Local runs: one folder per job under ``<settings.home>/runs``, described by ``run.json``.

A run folder mirrors where SageMaker keeps a job's pieces:

    <runs>/<job>/run.json          the run record (status, timings, config, metrics, artifacts)
    <runs>/<job>/train.log         everything the script printed
    <runs>/<job>/metrics.jsonl     one metric sample a line
    <runs>/<job>/output/           model.tar.gz, output.tar.gz  (S3: <output_path>/<job>/output/)
    <runs>/<job>/opt/ml/...        the container tree the script ran in (SAGEMAKER_BASE_DIR)
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from aiops.errors import UsageError

RUN_RECORD = "run.json"
# CreateTrainingJob's TrainingJobName pattern (and length), so a local name also works remotely.
JOB_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

STATUS_IN_PROGRESS = "InProgress"
STATUS_COMPLETED = "Completed"
STATUS_FAILED = "Failed"
STATUS_STOPPED = "Stopped"
# Shown (never written) for a local record still InProgress whose runner process is gone: the
# aiops process was killed (SIGKILL, OOM, reboot) before it could record the end. Its script died
# with it (PR_SET_PDEATHSIG).
STATUS_STALE = "Stale"


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid it names one process,
    never a later one that reuses the pid. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and ')'
    return int(fields[19])


def process_alive(pid: int | None, start_time: int | None) -> bool:
    """The process recorded as (pid, start time) still runs (and is not a zombie)."""
    if not pid or start_time is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0] != "Z" and int(fields[19]) == start_time


def with_liveness(record: dict[str, Any]) -> dict[str, Any]:
    """A local InProgress record whose runner has died is shown as Stale (the file is left as is)."""
    if record.get("status") != STATUS_IN_PROGRESS or record.get("remote") or "runner_start_time" not in record:
        return record
    if process_alive(record.get("runner_pid"), record.get("runner_start_time")):
        return record
    return {**record, "status": STATUS_STALE,
            "failure_reason": f"Failed (runner died): the aiops process {record.get('runner_pid')} ended "
                              "without recording the end of the run; its script was stopped with it."}


def validate_job_name(name: str) -> None:
    if not JOB_NAME_PATTERN.match(name):
        raise UsageError(
            f"job name {name!r} is not valid for SageMaker: use 1-63 letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. --job-name digits-cnn-1)."
        )


def job_name_from_base(base: str, *, now: float | None = None) -> str:
    """`<base>-YYYY-mm-dd-HH-MM-SS-mmm`, the SageMaker SDK's name_from_base, kept within 63 chars."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"
    clean = re.sub(r"[^a-zA-Z0-9-]+", "-", base).strip("-") or "job"
    clean = clean[: 63 - len(stamp) - 1].rstrip("-")
    return f"{clean}-{stamp}"


@dataclass(frozen=True)
class RunStore:
    """The folder of local runs."""

    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return (self.path(name) / RUN_RECORD).is_file()

    def create(self, name: str) -> Path:
        validate_job_name(name)
        run_dir = self.path(name)
        # private: logs, configs and hyperparameters may be sensitive (0700 whatever the umask)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            run_dir.mkdir(mode=0o700, exist_ok=False)
            os.chmod(run_dir, 0o700)
        except FileExistsError:
            raise UsageError(
                f"a run named {name!r} already exists in {self.root}; choose another --job-name, "
                f"or resume it with --resume {name}."
            ) from None
        return run_dir

    def load(self, name: str) -> dict[str, Any]:
        record = self.path(name) / RUN_RECORD
        if not record.is_file():
            known = ", ".join(r["job_name"] for r in self.list()[:5]) or "none yet"
            raise UsageError(
                f"no local run named {name!r} in {self.root} (recent: {known}); "
                "see 'aiops jobs list'."
            )
        return with_liveness(json.loads(record.read_text()))

    def save(self, record: dict[str, Any]) -> None:
        """Write run.json atomically, so a reader never sees half a record."""
        path = self.path(record["job_name"]) / RUN_RECORD
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))  # keeps metrics in order of appearance
        os.replace(tmp, path)

    def iter_records(self) -> Iterator[dict[str, Any]]:
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            record = child / RUN_RECORD
            if record.is_file():
                try:
                    yield with_liveness(json.loads(record.read_text()))
                except ValueError:
                    continue  # a record being written; skip rather than fail the listing

    def list(self) -> list[dict[str, Any]]:
        """Newest first."""
        return sorted(self.iter_records(), key=lambda r: r.get("created_at", 0), reverse=True)
