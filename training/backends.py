"""Job backends: one interface, two places a job runs, switched by one `Mode` the way the
SageMaker SDK v3's ``ModelTrainer(training_mode=Mode...)`` switches between a local run and a
training job.

    backend = backends.create(
        Mode.SAGEMAKER_TRAINING_JOB, store=store, settings=settings, options=..., events=...
    )
    job = backend.prepare(config)       # validate everything (exit 2), nothing written
    result = backend.launch(job)        # LaunchResult(record, exit_code, streamed)
    backends.of(record, ...).describe(record) / logs / metrics / stop / refresh

`Mode.LOCAL_PROCESS` (aiops's own: the script as a plain local process under the container
contract; the SDK's local mode runs the container instead) is `training.local.LocalBackend`;
`Mode.SAGEMAKER_TRAINING_JOB` is `training.remote.SageMakerBackend`. A record remembers its mode
(``remote`` in run.json), so the `jobs` commands never ask.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from aiops.training.jobs import JobConfig, JobEvents, LaunchResult, PreparedJob
from aiops.training.launch import LaunchOptions

from aiops.runs import RunRecord, RunStore

if TYPE_CHECKING:  # typing only
    from aiops.settings import Settings


class Mode(str, Enum):
    LOCAL_PROCESS = "LOCAL_PROCESS"
    SAGEMAKER_TRAINING_JOB = "SAGEMAKER_TRAINING_JOB"

    @classmethod
    def of(cls, record: RunRecord) -> Mode:
        return cls.SAGEMAKER_TRAINING_JOB if record.remote else cls.LOCAL_PROCESS

    @classmethod
    def choose(cls, *, remote: bool) -> Mode:
        """The mode `aiops train [--remote]` asks for."""
        return cls.SAGEMAKER_TRAINING_JOB if remote else cls.LOCAL_PROCESS


class JobBackend(Protocol):
    def prepare(self, config: JobConfig) -> PreparedJob: ...
    def launch(self, job: PreparedJob) -> LaunchResult: ...
    def describe(self, record: RunRecord) -> RunRecord: ...  # current (remote: DescribeTrainingJob)
    def refresh(self, record: RunRecord) -> RunRecord: ...  # cheap: settle an interrupted create
    def logs(self, record: RunRecord) -> list[tuple[str | None, str]]: ...  # (host stream or None, line)
    def metrics(self, record: RunRecord) -> dict[str, list[Any]]: ...  # {name: [Point]}
    def latest_metrics(self, record: RunRecord) -> dict[str, float]: ...
    def stop(self, record: RunRecord) -> str | None: ...  # what was signalled, when there is one to name


def create(
    mode: Mode,
    *,
    store: RunStore,
    settings: Settings,
    options: LaunchOptions | None = None,
    events: JobEvents | None = None,
) -> JobBackend:
    if Mode(mode) is Mode.SAGEMAKER_TRAINING_JOB:
        from aiops.training.remote import SageMakerBackend

        return SageMakerBackend(store, settings, options, events)
    from aiops.training.local import LocalBackend

    return LocalBackend(store, settings, options, events)


def of(record: RunRecord, *, store: RunStore, settings: Settings) -> JobBackend:
    """The backend that runs the job a record describes."""
    return create(Mode.of(record), store=store, settings=settings)


def open_run(name: str, *, store: RunStore, settings: Settings) -> tuple[RunRecord, JobBackend]:
    """A run's record (a UsageError naming recent runs when there is none) and its backend."""
    record = store.load(name)
    return record, of(record, store=store, settings=settings)


def list_runs(*, store: RunStore, settings: Settings) -> list[tuple[RunRecord, JobBackend]]:
    """Every run, newest first, each refreshed by its backend (which settles a create that was
    interrupted, and never relaunches it), with that backend."""
    rows = []
    for record in store.list():
        backend = of(record, store=store, settings=settings)
        rows.append((backend.refresh(record), backend))
    return rows
