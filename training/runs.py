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
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
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
        return json.loads(record.read_text())

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
                    yield json.loads(record.read_text())
                except ValueError:
                    continue  # a record being written; skip rather than fail the listing

    def list(self) -> list[dict[str, Any]]:
        """Newest first."""
        return sorted(self.iter_records(), key=lambda r: r.get("created_at", 0), reverse=True)
