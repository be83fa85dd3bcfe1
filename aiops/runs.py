"""The run store: one folder per training job under ``<settings.home>/runs``, described by ``run.json``.

This module is the one owner of the run record (`RunRecord`, the typed ``run.json``) and of the
store of run folders (`RunStore`); the folder's layout is `aiops.run_folder`'s, whether a run's
processes still run `aiops.run_processes`'. Training writes runs through them; serving, export,
packaging and deploy read them through them; nothing else spells ``run.json`` or ``opt/ml/model``.

``run.json`` stays plain JSON with the keys it always had: a record is written with exactly the
fields that were set (older files, which lack newer keys, load unchanged; keys this version does
not know are kept and written back).

A record is a file anyone could edit, so what it says is checked before it is acted on: its
``job_name`` must be a valid job name and the name of its folder (it names the file a record is
written back to), and a process it names is signalled only when ``/proc`` shows it is that run's
(`aiops.run_processes`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiops.errors import UsageError
from aiops.names import SAGEMAKER_NAME
from aiops.run_folder import RUN_RECORD, RunFolder
from aiops.run_processes import runner_alive

# CreateTrainingJob's TrainingJobName pattern (and length), so a local name also works remotely.
JOB_NAME_PATTERN = SAGEMAKER_NAME

STATUS_PENDING = "Pending"  # a remote record between "about to create" and SageMaker's answer
STATUS_NOT_CREATED = "NotCreated"  # a pending remote record whose job SageMaker never got
STATUS_IN_PROGRESS = "InProgress"
STATUS_COMPLETED = "Completed"
STATUS_FAILED = "Failed"
STATUS_STOPPED = "Stopped"
TERMINAL = (STATUS_COMPLETED, STATUS_FAILED, STATUS_STOPPED)
# Shown (never written) for a local record still InProgress whose runner process is gone: the
# aiops process was killed (SIGKILL, OOM, reboot) before it could record the end. Its script died
# with it (PR_SET_PDEATHSIG).
STATUS_STALE = "Stale"


# ---------------------------------------------------------------------------------------------
# Names


def validate_job_name(name: str) -> None:
    if not JOB_NAME_PATTERN.match(name):
        raise UsageError(
            f"job name {_shown(name)} is not valid for SageMaker: use 1-63 letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. --job-name digits-cnn-1)."
        )


def _shown(name: str, limit: int = 80) -> str:
    """A name quoted for a one-line message, cut when it is long."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(name)} characters)"


def job_name_from_base(base: str, *, now: float | None = None) -> str:
    """`<base>-YYYY-mm-dd-HH-MM-SS-mmm`, the SageMaker SDK's name_from_base, kept within 63 chars."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"
    clean = re.sub(r"[^a-zA-Z0-9-]+", "-", base).strip("-") or "job"
    clean = clean[: 63 - len(stamp) - 1].rstrip("-")
    return f"{clean}-{stamp}"


# ---------------------------------------------------------------------------------------------
# The record


class _Record(BaseModel):
    # extra="allow": keys written by another aiops version survive a load and save
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class RunConfig(_Record):
    """The request a run was started with (SageMaker SDK names), with absolute paths, so
    ``--resume`` works from any working directory. Remote records also hold the resources."""

    entry_point: str | None = None
    source_dir: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    channels: dict[str, str] = Field(default_factory=dict)
    instance_type: str | None = None
    nproc: int | None = None
    distribution: str | None = None
    follow_symlinks: bool = False
    input_modes: dict[str, str] = Field(default_factory=dict)
    channel_sharding: dict[str, str] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)  # --env: set in the script's environment
    secrets: dict[str, str] = Field(default_factory=dict)  # --secret: name -> Secrets Manager ARN (no value)
    framework: str | None = None  # the image's framework: pytorch | huggingface
    transformers_version: str | None = None  # huggingface: the transformers version asked for
    metric_definitions: list[dict[str, str]] = Field(default_factory=list)  # [{"Name", "Regex"}]
    # remote jobs
    instance_count: int | None = None
    spot: bool | None = None
    network_isolation: bool | None = None
    vpc: bool | None = None


class Artifacts(_Record):
    """Where a run's outputs are: local files (``model``, ``output``, ``model_dir``) and, for a
    remote job, the S3 URI SageMaker wrote (``model_s3``)."""

    model: str | None = None
    output: str | None = None
    model_dir: str | None = None
    model_s3: str | None = None

    def items(self) -> list[tuple[str, str]]:
        """The artifacts recorded (name, path or URI)."""
        data = self.model_dump(exclude_unset=True, exclude_none=True)
        return [(k, v) for k, v in data.items() if isinstance(v, str)]

    def __bool__(self) -> bool:
        return bool(self.items())


class CodeBundle(_Record):
    """A remote job's ``sourcedir.tar.gz``: where it is and what it holds."""

    uri: str
    sha256: str | None = None
    files: list[str] = Field(default_factory=list)
    bytes: int | None = None


class JobSummary(_Record):
    """What DescribeTrainingJob said last (a remote job), in the record's words."""

    job_name: str | None = None
    status: str | None = None
    secondary_status: str | None = None
    failure_reason: str | None = None
    model_artifact: str | None = None
    training_seconds: int | float | None = None  # as SageMaker answered (whole seconds)
    billable_seconds: int | float | None = None
    spot_saving_percent: float | None = None
    arn: str | None = None
    # WarmPoolStatus (a job with KeepAlivePeriodInSeconds): Status, ResourceRetainedBillableTimeInSeconds,
    # ReusedByJob
    warm_pool_status: str | None = None
    warm_pool_billable_seconds: int | None = None
    warm_pool_reused_by: str | None = None


class RunRecord(_Record):
    """``run.json``: one training run, local or remote."""

    job_name: str = ""  # always written by aiops; optional so any older file still loads
    status: str | None = None
    created_at: float | None = None
    ended_at: float | None = None
    duration_seconds: float | None = None
    run_dir: str | None = None
    base_dir: str | None = None
    checkpoint_dir: str | None = None
    resumed_from: str | None = None
    entry_point: str | None = None
    source_dir: str | None = None
    config: RunConfig | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    command: list[str] | None = None
    exit_code: int | None = None
    failure_reason: str | None = None
    final_metrics: dict[str, float] = Field(default_factory=dict)
    artifacts: Artifacts = Field(default_factory=Artifacts)
    exported_artifacts: dict[str, str] | None = None
    requirement_problems: list[dict[str, Any]] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    distribution: str | None = None
    log_tail: list[str] | None = None
    stopped_by: str | None = None
    # local runs: the processes, each as (pid, start time) so a reused pid is never signalled
    runner_pid: int | None = None
    runner_start_time: int | None = None
    script_pid: int | None = None
    script_start_time: int | None = None
    # remote jobs
    remote: bool = False
    region: str | None = None
    stack: str | None = None
    large_files: list[tuple[str, int]] = Field(default_factory=list)
    estimated_max_cost_usd: float | None = None
    estimated_idle_cost_usd: float | None = None  # a warm pool kept after the job (--keep-alive)
    code_bundle: CodeBundle | None = None
    uploaded_bytes: int | None = None
    request: dict[str, Any] | None = None  # the CreateTrainingJob request, as sent
    client_token: str | None = None
    create_outcome: str | None = None
    accepted_seconds: float | None = None
    remote_summary: JobSummary | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        return cls.model_validate(data)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to run.json (and printed by ``jobs describe --json``): only the
        fields that were set, so a record keeps the keys it was written with."""
        return self.model_dump(mode="json", exclude_unset=True)

    def update(self, **fields: Any) -> RunRecord:
        """Set fields in place (validated); returns the record."""
        for key, value in fields.items():
            if key == "artifacts" and isinstance(value, dict):
                value = Artifacts.model_validate(value)
            elif key == "config" and isinstance(value, dict):
                value = RunConfig.model_validate(value)
            elif key == "code_bundle" and isinstance(value, dict):
                value = CodeBundle.model_validate(value)
            elif key == "remote_summary" and isinstance(value, dict):
                value = JobSummary.model_validate(value)
            setattr(self, key, value)
        return self

    @property
    def folder(self) -> RunFolder:
        if not self.run_dir:
            raise UsageError(f"run {self.job_name} has no run folder recorded in its {RUN_RECORD}.")
        return RunFolder(Path(self.run_dir))

    @property
    def single_script(self) -> bool:
        """Started from one script, not a source dir (its recorded config has no source_dir)."""
        config = self.config
        return (
            config is not None
            and bool(config.model_fields_set or config.model_extra)
            and config.source_dir is None
        )

    @property
    def script_name(self) -> str | None:
        """The training script relative to the code folder (a single-script run: its file name)."""
        if self.single_script:
            return Path(self.config.entry_point or self.entry_point or "").name or None  # type: ignore[union-attr]
        return self.entry_point

    @property
    def code_root(self) -> Path | None:
        """The folder the run's code came from, when it still exists."""
        return Path(self.source_dir) if self.source_dir and Path(self.source_dir).is_dir() else None


def with_liveness(record: RunRecord) -> RunRecord:
    """A local InProgress record whose runner has died is shown as Stale (the file is left as is)."""
    if (
        record.status != STATUS_IN_PROGRESS
        or record.remote
        or "runner_start_time" not in record.model_fields_set
    ):
        return record
    if runner_alive(record):
        return record
    stale = record.model_copy(deep=True)
    return stale.update(
        status=STATUS_STALE,
        failure_reason=f"Failed (runner died): the aiops process {record.runner_pid} ended "
        "without recording the end of the run; its script was stopped with it.",
    )


def read_record(folder: RunFolder, *, strict: bool = True) -> RunRecord | None:
    """The record in a run folder; UsageError naming the file when it cannot be read or its
    ``job_name`` is not its folder's name (None instead with ``strict=False``). A record without a
    ``job_name`` (an old file) takes its folder's."""
    try:
        record = RunRecord.from_json(json.loads(folder.record_file.read_text()))
    except (OSError, ValueError, ValidationError) as err:
        if not strict:
            return None
        detail = err.strerror if isinstance(err, OSError) else str(err).splitlines()[0]
        raise UsageError(f"{folder.record_file}: cannot read it ({detail}).") from None
    if not record.job_name and JOB_NAME_PATTERN.match(folder.name):
        record.job_name = folder.name
    if record.job_name != folder.name or not JOB_NAME_PATTERN.match(record.job_name):
        if not strict:
            return None
        raise UsageError(
            f"{folder.record_file}: its job_name {_shown(record.job_name)} is not the name of its folder "
            f"({_shown(folder.name)}); the record was edited or moved, so aiops will not act on it. Put the "
            "folder's name back in job_name, or remove the folder."
        )
    return with_liveness(record)


def find_run(spec: str, runs_dir: Path | None = None) -> RunFolder | None:
    """The run SPEC names: a folder holding run.json, or (with ``runs_dir``) a run's name there."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / RUN_RECORD).is_file():
        return RunFolder(path)
    if (
        runs_dir is not None
        and not path.exists()
        and JOB_NAME_PATTERN.match(spec)
        and (Path(runs_dir) / spec / RUN_RECORD).is_file()
    ):
        return RunFolder(Path(runs_dir) / spec)
    return None


# ---------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class RunStore:
    """The folder of runs (``settings.runs_dir``)."""

    root: Path

    def folder(self, name: str) -> RunFolder:
        return RunFolder(self.root / name)

    def path(self, name: str) -> Path:
        return self.folder(name).root

    def exists(self, name: str) -> bool:
        # a job name first: nothing else is looked up on disk (a 300-character name would be an OSError)
        return bool(JOB_NAME_PATTERN.match(name)) and self.folder(name).record_file.is_file()

    def find(self, spec: str) -> RunFolder | None:
        """The run SPEC names: a folder holding run.json, or a run's name in this store."""
        return find_run(spec, self.root)

    def create(self, name: str) -> RunFolder:
        validate_job_name(name)
        folder = self.folder(name)
        # private: logs, configs and hyperparameters may be sensitive (0700 whatever the umask)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            folder.root.mkdir(mode=0o700, exist_ok=False)
            os.chmod(folder.root, 0o700)
        except FileExistsError:
            raise UsageError(
                f"a run named {name!r} already exists in {self.root}; choose another --job-name, "
                f"or resume it with --resume {name}."
            ) from None
        return folder

    def load(self, name: str) -> RunRecord:
        validate_job_name(name)
        if not self.exists(name):
            known = ", ".join(r.job_name for r in self.list()[:5]) or "none yet"
            raise UsageError(
                f"no local run named {name!r} in {self.root} (recent: {known}); see 'aiops jobs list'."
            )
        record = read_record(self.folder(name))
        assert record is not None  # strict
        return record

    def save(self, record: RunRecord) -> RunRecord:
        """Write run.json atomically, so a reader never sees half a record; only under this store,
        in the folder its (valid) job name names."""
        validate_job_name(record.job_name)
        path = self.folder(record.job_name).record_file
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps(record.to_json(), indent=2, default=str)
        )  # metrics stay in order of appearance
        os.replace(tmp, path)
        return record

    def iter_records(self) -> Iterator[RunRecord]:
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if (child / RUN_RECORD).is_file():
                # None: a record being written, or one whose job_name is not its folder's: left out
                # rather than failing the listing (describe names the problem)
                record = read_record(RunFolder(child), strict=False)
                if record is not None:
                    yield record

    def list(self) -> list[RunRecord]:
        """Newest first."""
        return sorted(self.iter_records(), key=lambda r: r.created_at or 0, reverse=True)
