"""The job definition: what the user asked for (`JobConfig`), the validated job (`PreparedJob`),
its preparation and the configuration a resumed run starts from.

Preparation is the same for every backend; what a backend accepts (S3 channels, MPI, a local
checkpoint folder to resume from) is its `Target`, so this module never asks where a job runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiops.training import contract, job_inputs, model_channel
from aiops.training.metrics import MetricDefinition, MetricSample
from aiops.training.requirements import RequirementProblem, check_requirements

from aiops import files
from aiops.errors import UsageError
from aiops.runs import RunConfig, RunRecord, RunStore, job_name_from_base, validate_job_name

_SAFE_ENTRY_POINT = re.compile(
    r"^[A-Za-z0-9._][A-Za-z0-9._+-]*(/[A-Za-z0-9._+-]+)*$"
)  # the toolkit's pattern


@dataclass
class JobConfig:
    """What the user asked for (SageMaker SDK names)."""

    entry_point: str
    source_dir: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)
    instance_type: str = "local"
    nproc: int | None = None
    job_name: str | None = None
    metric_definitions: list[MetricDefinition] = field(default_factory=list)
    resume: str | None = None
    distribution: str | None = None  # the SDK's `distribution`: none | torch_distributed | mpi
    follow_symlinks: bool = False  # ship what symlinks pointing outside the source dir point to
    input_modes: dict[str, str] = field(default_factory=dict)  # channel -> File | FastFile | Pipe
    channel_sharding: dict[str, str] = field(default_factory=dict)  # channel -> S3DataDistributionType
    environment: dict[str, str] = field(default_factory=dict)  # --env: the container's environment
    secrets: dict[str, str] = field(default_factory=dict)  # --secret: variable name -> Secrets Manager ARN
    framework: str | None = None  # the image's: pytorch (None) | huggingface, as the SDK's estimators
    transformers_version: str | None = None  # huggingface: the image's transformers

    def script_environment(self) -> dict[str, str]:
        """What the job adds to the script's environment: `--env`, and where each `--secret` is."""
        return {**self.environment, **job_inputs.secret_environment(self.secrets)}

    def to_record(self) -> RunConfig:
        # the framework only when asked for, so a PyTorch run's record keeps its keys
        framework = {
            k: v
            for k, v in (("framework", self.framework), ("transformers_version", self.transformers_version))
            if v
        }
        return RunConfig(
            **framework,
            entry_point=self.entry_point,
            source_dir=self.source_dir,
            hyperparameters=self.hyperparameters,
            channels=self.channels,
            instance_type=self.instance_type,
            nproc=self.nproc,
            distribution=self.distribution,
            follow_symlinks=self.follow_symlinks,
            input_modes=self.input_modes,
            channel_sharding=self.channel_sharding,
            environment=self.environment,
            secrets=self.secrets,
            metric_definitions=[d.as_sagemaker() for d in self.metric_definitions],
        )


@dataclass(frozen=True)
class Target:
    """What a backend accepts beyond the common contract."""

    s3_channels: bool = False  # channels may be s3:// URIs (they pass through untouched)
    mpi: bool = False  # --distribution mpi can run
    local_checkpoints: bool = True  # --resume restores an earlier local run's checkpoint folder
    instance_count: int = 1
    gpus_per_instance: int | None = (
        None  # a remote type's GPUs (aiops/data/gpus.json): its default processes per host
    )
    runs_here: bool = True  # the script runs on this machine's packages (a remote job: on its image's)


@dataclass(frozen=True)
class PreparedJob:
    """A validated job: every path resolved, nothing written yet."""

    config: JobConfig
    job_name: str
    code_source: Path  # the source dir, or the entry point file when there is no source dir
    entry_point: str  # relative to the code dir, as `sagemaker_program`
    channels: Mapping[str, Path]
    checkpoint_source: Path | None  # an earlier run's checkpoint folder (--resume)
    requirement_problems: Sequence[RequirementProblem]
    s3_channels: Mapping[str, str] = field(default_factory=dict)  # channels already in S3
    distribution: str = contract.DISTRIBUTION_NONE  # resolved with the SDK's defaults
    code_selection: files.Selection | None = None  # the files a run snapshots and a bundle ships
    channel_selections: Mapping[str, files.Selection] = field(default_factory=dict)
    warnings: Sequence[str] = ()  # shown before the run starts (secrets left out, secret-looking names)


class JobEvents(Protocol):
    """What a backend tells the user while it prepares, launches and follows a job (the CLI renders
    it; every method may be a no-op)."""

    def info(self, text: str) -> None: ...  # a plain line on stderr (the GPU-fit check)
    def note(self, text: str) -> None: ...
    def warning(self, text: str) -> None: ...
    # a local run
    def started(self, record: RunRecord) -> None: ...
    def line(self, text: str) -> None: ...
    def metric(self, sample: MetricSample, latest: Mapping[str, float]) -> None: ...
    def stopping(self, reason: str) -> None: ...
    def finished(self, record: RunRecord) -> None: ...
    # a remote job
    def upload(self, label: str, done: int, total: int) -> None: ...
    def estimate(
        self,
        estimate: Any,
        *,
        spot: bool,
        instance_count: int,
        instance_type: str,
        max_run: int,
        keep_alive: int | None = None,  # a warm pool: its seconds and what it may cost idle
        idle_cost: float | None = None,
    ) -> None: ...
    def accepted(self, record: RunRecord) -> None: ...
    def attempts(self, attempts: Sequence[Any]) -> None: ...  # capacity fallback: capacity.Attempt rows
    def status(self, status: str, secondary: str) -> None: ...
    def log(self, stream: str, message: str) -> None: ...
    def silent(self, seconds: float, status: str) -> None: ...


class NullEvents:
    """Events nobody watches."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@dataclass(frozen=True)
class LaunchResult:
    """The record a launch ended with, the exit status the command should end with and whether the
    job's log was shown live (so a summary does not repeat it)."""

    record: RunRecord
    exit_code: int = 0
    streamed: bool = False


class Detached(Exception):
    """The user interrupted following a job that keeps running (Ctrl-C while waiting)."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__(record.job_name)
        self.record = record


# ---------------------------------------------------------------------------------------------
# Preparation (no side effects)


def prepare(config: JobConfig, store: RunStore, target: Target = Target()) -> PreparedJob:
    """Check the whole request before anything is written; UsageError (exit 2) on bad input."""
    job_inputs.validate_hyperparameters(config.hyperparameters)
    job_inputs.refuse_secret_looking(config.hyperparameters, "--hp")
    job_inputs.validate_environment(config.environment, config.secrets)
    if config.nproc is not None and config.nproc < 1:
        raise UsageError(f"--nproc {config.nproc}: needs at least 1 process.")
    distribution = contract.resolve_distribution(
        config.distribution,
        instance_count=target.instance_count,
        processes_per_host=config.nproc,
        gpus_per_instance=target.gpus_per_instance,
    )
    if distribution == contract.DISTRIBUTION_MPI and not target.mpi:
        raise UsageError(
            "--distribution mpi is launched by mpirun inside the SageMaker container; run it with --remote, "
            "or use --distribution torch_distributed locally."
        )
    warnings: list[str] = []

    code_source, entry_point = _resolve_code(config.entry_point, config.source_dir)
    channels: dict[str, Path] = {}
    s3_channels: dict[str, str] = {}
    for name, location in config.channels.items():
        job_inputs.validate_channel_name(name)
        resolved = _channel(name, location, target)
        if isinstance(resolved, str):
            s3_channels[name] = resolved
        else:
            channels[name] = resolved
    # links inside a channel must stay inside it, as in the source dir
    channel_selections = {
        name: files.select(
            path,
            follow_symlinks=config.follow_symlinks,
            ignore_files=False,
            exclude_secrets=False,
            what=f"channel {name!r}",
        )
        for name, path in channels.items()
    }
    for selection in channel_selections.values():
        warnings += selection.warnings
    if model_channel.CHANNEL in channels:  # pretrained weights: a Hugging Face model folder
        model = channels[model_channel.CHANNEL]
        warnings += model_channel.check(model, runs_here=target.runs_here)
        model_channel.check_lora_targets(
            model_channel.local_listing(model), str(model), config.hyperparameters
        )

    checkpoint_source = None
    if config.resume and target.local_checkpoints:
        previous = store.load(config.resume)  # UsageError naming the known runs if unknown
        checkpoint_source = Path(previous.checkpoint_dir or previous.folder.checkpoints)

    if config.job_name:
        validate_job_name(config.job_name)
        if store.exists(config.job_name):
            raise UsageError(
                f"a run named {config.job_name!r} already exists; choose another --job-name, "
                f"or resume it with --resume {config.job_name}."
            )
        job_name = config.job_name
    else:
        job_name = job_name_from_base(Path(entry_point).stem.replace("_", "-"))

    code_selection = files.select(
        code_source, follow_symlinks=config.follow_symlinks, exclude_paths=[store.root]
    )
    if entry_point not in code_selection.entries:
        raise UsageError(
            f"entry point {entry_point} is excluded by .gitignore/.aiopsignore (or is a likely secret); "
            "un-ignore it or rename it."
        )
    warnings += code_selection.warnings

    requirements = code_source / "requirements.txt" if code_source.is_dir() else None
    problems = check_requirements(requirements) if requirements and requirements.is_file() else []
    return PreparedJob(
        config,
        job_name,
        code_source,
        entry_point,
        channels,
        checkpoint_source,
        problems,
        s3_channels,
        distribution=distribution,
        code_selection=code_selection,
        channel_selections=channel_selections,
        warnings=warnings,
    )


def _channel(name: str, location: str, target: Target) -> Path | str:
    """A channel's local folder (resolved), or its s3:// URI where the target reads S3."""
    if target.s3_channels:
        if location.startswith("s3://"):
            if not location[len("s3://") :].split("/", 1)[0]:
                raise UsageError(f"channel {name!r}: {location} is not an S3 URI like s3://bucket/prefix/.")
            return location
        if "://" in location:
            raise UsageError(f"channel {name!r}: {location} is neither a local path nor an s3:// URI.")
        path = Path(location).expanduser()
        if not path.exists():
            raise UsageError(
                f"channel {name!r}: {location} is neither an existing local path nor an s3:// URI."
            )
        return path.resolve()
    if location.startswith("s3://"):
        raise UsageError(
            f"channel {name!r} is an S3 URI ({location}); local runs read local files — "
            "download it first, or run with --remote."
        )
    path = Path(location).expanduser()
    if not path.exists():
        raise UsageError(f"channel {name!r}: {location} does not exist; pass an existing file or folder.")
    return path.resolve()


def _resolve_code(entry_point: str, source_dir: str | None) -> tuple[Path, str]:
    if source_dir is not None:
        root = Path(source_dir).expanduser()
        if not root.is_dir():
            raise UsageError(
                f"--source-dir {source_dir}: no such folder; point it at the folder holding your code."
            )
        relative = entry_point
        if Path(entry_point).is_absolute() or not (root / entry_point).is_file():
            # Accept a path to the script that lies inside the source dir, as the SDK does.
            candidate = Path(entry_point).expanduser().resolve()
            try:
                relative = candidate.relative_to(root.resolve()).as_posix()
            except ValueError:
                raise UsageError(
                    f"entry point {entry_point} is not a file inside --source-dir {source_dir}; "
                    "give its path relative to the source dir (e.g. train.py)."
                ) from None
            if not candidate.is_file():
                raise UsageError(
                    f"entry point {entry_point}: no such file in "
                    f"{source_dir}; give its path relative to the source dir."
                )
        _validate_entry_point_name(relative)
        return root.resolve(), relative
    path = Path(entry_point).expanduser()
    if not path.is_file():
        raise UsageError(
            f"entry point {entry_point}: no such file; give the path to your training script "
            "(and --source-dir for a folder of code)."
        )
    _validate_entry_point_name(path.name)
    return path.resolve(), path.name


def _validate_entry_point_name(name: str) -> None:
    """The toolkit's process.validate_entry_point: the same name must also run in the container."""
    if not _SAFE_ENTRY_POINT.match(name) or any(part in (".", "..") for part in name.split("/")):
        raise UsageError(
            f"entry point {name!r} cannot run in the SageMaker container: rename it to letters, digits, "
            "'.', '_', '+', '-' and '/' (e.g. train.py)."
        )


def absolute_config(job: PreparedJob) -> RunConfig:
    """The request with absolute paths, so --resume works from any working directory."""
    config = job.config.to_record()
    if job.code_source.is_dir():
        config.source_dir = str(job.code_source)
        config.entry_point = job.entry_point
    else:
        config.source_dir = None
        config.entry_point = str(job.code_source)
    config.channels = {name: str(path) for name, path in job.channels.items()}
    return config


# ---------------------------------------------------------------------------------------------
# The job the options ask for, and resume


def job_config(
    store: RunStore,
    *,
    entry_point: str | None,
    source_dir: str | None,
    resume: str | None,
    hyperparameters: dict[str, Any] | None,
    hp: Mapping[str, Any],
    channels: Mapping[str, str],
    metric_definitions: list[MetricDefinition],
    instance_type: str | None,
    nproc: int | None,
    job_name: str | None,
    default_instance_type: str = "local",
    distribution: str | None = None,
    follow_symlinks: bool = False,
    input_modes: Sequence[str] = (),
    channel_sharding: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    framework: str | None = None,
    transformers_version: str | None = None,
) -> JobConfig:
    """The job the options ask for. Without an entry point, `resume` names the run whose whole
    configuration is reused; options given (hyperparameters, channels, ...) override it."""
    if entry_point is None:
        if resume is None:
            raise UsageError("missing ENTRY_POINT: give the training script, e.g. aiops train train.py.")
        config = resume_config(store, resume)
    else:
        config = JobConfig(
            entry_point=entry_point,
            source_dir=source_dir,
            resume=resume,
            hyperparameters=dict(hyperparameters or {}),
        )
    if source_dir is not None:
        config.source_dir = source_dir
    config.hyperparameters.update(hp)
    config.channels.update(channels)
    config.environment.update(environment or {})
    config.secrets.update(secrets or {})
    config.transformers_version = transformers_version or config.transformers_version
    # a transformers version alone picks the Hugging Face image, as the SDK's HuggingFace estimator
    config.framework = (
        framework or config.framework or ("huggingface" if config.transformers_version else None)
    )
    config.metric_definitions += metric_definitions
    config.instance_type = instance_type or config.instance_type or default_instance_type
    config.nproc = nproc if nproc is not None else config.nproc
    config.distribution = distribution if distribution is not None else config.distribution
    config.follow_symlinks = follow_symlinks or config.follow_symlinks
    names = list(config.channels)
    config.input_modes.update(
        job_inputs.parse_channel_settings(input_modes, names, "--input-mode", job_inputs.INPUT_MODES)
    )
    config.channel_sharding.update(
        job_inputs.parse_channel_settings(
            channel_sharding, names, "--channel-sharding", job_inputs.S3_DISTRIBUTIONS
        )
    )
    config.job_name = job_name
    return config


def resume_config(store: RunStore, name: str) -> JobConfig:
    """The configuration an earlier run was started with, to run it again from its checkpoints."""
    previous = store.load(name)
    cfg = previous.config
    if cfg is None or not cfg.entry_point:
        raise UsageError(f"run {name} has no recorded configuration to resume from; give the ENTRY_POINT.")
    return JobConfig(
        entry_point=cfg.entry_point,
        source_dir=cfg.source_dir,
        hyperparameters=dict(cfg.hyperparameters),
        channels=dict(cfg.channels),
        instance_type=cfg.instance_type or "local",
        nproc=cfg.nproc,
        distribution=cfg.distribution,
        follow_symlinks=bool(cfg.follow_symlinks),
        input_modes=dict(cfg.input_modes),
        channel_sharding=dict(cfg.channel_sharding),
        environment=dict(cfg.environment),
        secrets=dict(cfg.secrets),
        framework=cfg.framework,
        transformers_version=cfg.transformers_version,
        metric_definitions=[MetricDefinition(d["Name"], d["Regex"]) for d in cfg.metric_definitions],
        resume=name,
    )
