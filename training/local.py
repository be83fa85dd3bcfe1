"""Run a SageMaker-style training script locally, as a plain process, under the container contract.

The runner plays the part of the PyTorch training container and its toolkit: it lays out the
``/opt/ml`` tree under a run folder, snapshots the code into ``code/``, copies the channels into
``input/data/<channel>``, sets the toolkit's environment and argv (``contract``), starts the
script (or torchrun), streams its output with metrics, stops it the way SageMaker stops a job
(SIGTERM, then SIGKILL after a grace period), and packs ``model.tar.gz`` / ``output.tar.gz``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from aiops import archive, files
from aiops.errors import UsageError
from aiops.training import contract
from aiops.training.metrics import MetricDefinition, MetricParser, MetricSample
from aiops.training.requirements import RequirementProblem, check_requirements
from aiops.training.runs import (
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_IN_PROGRESS,
    STATUS_STALE,
    STATUS_STOPPED,
    RunStore,
    process_alive,
    process_start_time,
    job_name_from_base,
    validate_job_name,
)

FAILURE_TAIL_CHARS = 1024
_SAFE_ENTRY_POINT = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._+-]*(/[A-Za-z0-9._+-]+)*$")  # the toolkit's pattern  # DescribeTrainingJob shows the first 1024 characters of `failure`


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

    def to_record(self) -> dict[str, Any]:
        return {
            "entry_point": self.entry_point,
            "source_dir": self.source_dir,
            "hyperparameters": self.hyperparameters,
            "channels": self.channels,
            "instance_type": self.instance_type,
            "nproc": self.nproc,
            "distribution": self.distribution,
            "follow_symlinks": self.follow_symlinks,
            "input_modes": self.input_modes,
            "channel_sharding": self.channel_sharding,
            "metric_definitions": [d.as_sagemaker() for d in self.metric_definitions],
        }


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
    s3_channels: Mapping[str, str] = field(default_factory=dict)  # remote jobs only
    distribution: str = contract.DISTRIBUTION_NONE  # resolved with the SDK's defaults
    code_selection: files.Selection | None = None  # the files a run snapshots and a bundle ships
    channel_selections: Mapping[str, files.Selection] = field(default_factory=dict)
    warnings: Sequence[str] = ()  # shown before the run starts (secrets left out, secret-looking names)


class RunReporter(Protocol):
    def started(self, record: Mapping[str, Any]) -> None: ...
    def line(self, text: str) -> None: ...
    def metric(self, sample: MetricSample, latest: Mapping[str, float]) -> None: ...
    def stopping(self, reason: str) -> None: ...
    def finished(self, record: Mapping[str, Any]) -> None: ...


class NullReporter:
    def started(self, record: Mapping[str, Any]) -> None: ...
    def line(self, text: str) -> None: ...
    def metric(self, sample: MetricSample, latest: Mapping[str, float]) -> None: ...
    def stopping(self, reason: str) -> None: ...
    def finished(self, record: Mapping[str, Any]) -> None: ...


# ---------------------------------------------------------------------------------------------
# Validation (no side effects)


def prepare(config: JobConfig, store: RunStore, *, remote: bool = False, instance_count: int = 1) -> PreparedJob:
    """Check the whole request before anything is written; UsageError (exit 2) on bad input.

    Remote jobs may also take `s3://` channels, which pass through untouched.
    """
    contract.validate_hyperparameters(config.hyperparameters)
    if config.nproc is not None and config.nproc < 1:
        raise UsageError(f"--nproc {config.nproc}: needs at least 1 process.")
    from aiops.gpufit import gpu_count  # a remote type's GPUs: its default processes per host

    gpus = gpu_count(config.instance_type) if remote and config.instance_type else None
    distribution = contract.resolve_distribution(config.distribution, instance_count=instance_count,
                                                 processes_per_host=config.nproc, gpus_per_instance=gpus)
    if distribution == contract.DISTRIBUTION_MPI and not remote:
        raise UsageError(
            "--distribution mpi is launched by mpirun inside the SageMaker container; run it with --remote, "
            "or use --distribution torch_distributed locally."
        )
    warnings = [
        f"hyperparameter {name!r} looks like a secret: hyperparameters are stored and shown in the clear "
        "(run record, DescribeTrainingJob, the console); read secrets from AWS Secrets Manager or an "
        "environment variable instead."
        for name in contract.secret_looking_hyperparameters(config.hyperparameters)
    ]

    code_source, entry_point = _resolve_code(config.entry_point, config.source_dir)
    channels: dict[str, Path] = {}
    s3_channels: dict[str, str] = {}
    for name, location in config.channels.items():
        contract.validate_channel_name(name)
        if remote and location.startswith("s3://"):
            if not location[len("s3://"):].split("/", 1)[0]:
                raise UsageError(f"channel {name!r}: {location} is not an S3 URI like s3://bucket/prefix/.")
            s3_channels[name] = location
            continue
        if remote and "://" in location:
            raise UsageError(f"channel {name!r}: {location} is neither a local path nor an s3:// URI.")
        if location.startswith("s3://"):
            raise UsageError(
                f"channel {name!r} is an S3 URI ({location}); local runs read local files — "
                "download it first, or run with --remote."
            )
        path = Path(location).expanduser()
        if not path.exists():
            if remote:
                raise UsageError(f"channel {name!r}: {location} is neither an existing local path nor an s3:// URI.")
            raise UsageError(f"channel {name!r}: {location} does not exist; pass an existing file or folder.")
        channels[name] = path.resolve()
    # links inside a channel must stay inside it, as in the source dir
    channel_selections = {
        name: files.select(path, follow_symlinks=config.follow_symlinks, ignore_files=False,
                           exclude_secrets=False, what=f"channel {name!r}")
        for name, path in channels.items()
    }
    for selection in channel_selections.values():
        warnings += selection.warnings

    checkpoint_source = None
    if config.resume and not remote:
        previous = store.load(config.resume)  # UsageError naming the known runs if unknown
        checkpoint_source = Path(previous["checkpoint_dir"])

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

    code_selection = files.select(code_source, follow_symlinks=config.follow_symlinks,
                                  exclude_paths=[store.root])
    if entry_point not in code_selection.entries:
        raise UsageError(
            f"entry point {entry_point} is excluded by .gitignore/.aiopsignore (or is a likely secret); "
            "un-ignore it or rename it."
        )
    warnings += code_selection.warnings

    requirements = code_source / "requirements.txt" if code_source.is_dir() else None
    problems = check_requirements(requirements) if requirements and requirements.is_file() else []
    return PreparedJob(config, job_name, code_source, entry_point, channels, checkpoint_source, problems,
                       s3_channels, distribution=distribution, code_selection=code_selection,
                       channel_selections=channel_selections, warnings=warnings)


def _resolve_code(entry_point: str, source_dir: str | None) -> tuple[Path, str]:
    if source_dir is not None:
        root = Path(source_dir).expanduser()
        if not root.is_dir():
            raise UsageError(f"--source-dir {source_dir}: no such folder; point it at the folder holding your code.")
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
                raise UsageError(f"entry point {entry_point}: no such file in {source_dir}; give its path relative to the source dir.")
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
    if not _SAFE_ENTRY_POINT.match(name) or any(
        part in (".", "..") for part in name.split("/")
    ):
        raise UsageError(
            f"entry point {name!r} cannot run in the SageMaker container: rename it to letters, digits, "
            "'.', '_', '+', '-' and '/' (e.g. train.py)."
        )


# ---------------------------------------------------------------------------------------------
# Running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _copy_code(job: PreparedJob, dest: Path, runs_root: Path) -> None:
    """The code snapshot: exactly the files the remote bundle would ship (aiops.files)."""
    selection = job.code_selection or files.select(job.code_source, follow_symlinks=job.config.follow_symlinks,
                                                   exclude_paths=[runs_root])
    dest.mkdir(parents=True, exist_ok=True)
    selection.copy_to(dest)


def _stage_channel(source: Path, dest: Path, link: bool, selection: files.Selection | None = None) -> None:
    if link:
        dest.symlink_to(source, target_is_directory=source.is_dir())
        return
    dest.mkdir(parents=True, exist_ok=True)
    (selection or files.select(source, ignore_files=False, exclude_secrets=False)).copy_to(dest)


def _pack(folder: Path, out: Path) -> None:
    """tar.gz of the folder's contents at the archive root, as SageMaker packs /opt/ml/model
    (deterministic: the same model folder gives the same bytes)."""
    archive.write_tar_gz_file(archive.folder_entries(folder), out, with_directories=True)


class _Stopper:
    """Stops the job like SageMaker: SIGTERM to the script's process group, SIGKILL after grace."""

    def __init__(self, proc: subprocess.Popen[bytes], grace: float, reporter: RunReporter) -> None:
        self.proc = proc
        self.grace = grace
        self.reporter = reporter
        self.requested_by: int | None = None
        self._killer: threading.Timer | None = None

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def handle(self, signum: int, _frame: object) -> None:
        if self.requested_by is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: no more waiting
                self.reporter.stopping("second interrupt: killing the job now")
                self._signal_group(signal.SIGKILL)
            return
        self.requested_by = signum
        self.reporter.stopping(
            f"{signal.Signals(signum).name} received: stopping the job (SIGTERM, SIGKILL after {self.grace:g}s)"
        )
        self._signal_group(signal.SIGTERM)
        self._killer = threading.Timer(self.grace, self._signal_group, args=(signal.SIGKILL,))
        self._killer.daemon = True
        self._killer.start()

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def cancel(self) -> None:
        if self._killer is not None:
            self._killer.cancel()


def run(
    job: PreparedJob,
    store: RunStore,
    *,
    stop_grace_seconds: float = 120.0,
    link_channels: bool = False,
    region: str = "us-east-1",
    log_tail_lines: int = 20,
    reporter: RunReporter | None = None,
    python: str | None = None,
) -> dict[str, Any]:
    """Run the prepared job to its end; returns the final run record."""
    reporter = reporter or NullReporter()
    run_dir = store.create(job.job_name)
    paths = contract.ContainerPaths(run_dir / "opt" / "ml")
    for folder in paths.all_dirs():
        folder.mkdir(parents=True, exist_ok=True)
    if job.checkpoint_source is not None:
        paths.checkpoints.rmdir()
        paths.checkpoints.symlink_to(job.checkpoint_source, target_is_directory=True)
    checkpoint_dir = job.checkpoint_source or paths.checkpoints

    _copy_code(job, paths.code, store.root)
    for name, source in job.channels.items():
        _stage_channel(source, paths.channel(name), link_channels, job.channel_selections.get(name))

    spec = contract.TrainingJobSpec(
        job_name=job.job_name,
        entry_point=job.entry_point,
        hyperparameters=job.config.hyperparameters,
        channels=tuple(job.channels),
        submit_directory=paths.code.as_uri(),
        region=region,
        instance_type=job.config.instance_type,
        network_interface_name="lo",  # one host: torch.distributed talks over loopback
        processes_per_host=job.config.nproc,
        distribution=job.distribution,
        # recorded in inputdataconfig.json as the container would see them; locally every channel is File
        channel_input_modes=job.config.input_modes,
        channel_distributions=job.config.channel_sharding,
    )
    contract.write_config_files(spec, paths)
    # One machine: `algo-1` does not resolve here, and 7777 may be taken by another local run, so
    # MASTER_ADDR/MASTER_PORT are loopback and a free port (the container's are algo-1:7777).
    launch = contract.host_launch(spec, paths, contract.HostFacts.detect(), python=python or sys.executable,
                                  base_env=os.environ, master_addr="127.0.0.1", master_port=_free_port())
    env, command = launch.env, launch.argv

    record: dict[str, Any] = {
        "job_name": job.job_name,
        "status": STATUS_IN_PROGRESS,
        "runner_pid": os.getpid(),  # `aiops jobs stop` signals this process, which stops the script
        "runner_start_time": process_start_time(os.getpid()),  # so a reused pid is never signalled
        "created_at": time.time(),
        "ended_at": None,
        "duration_seconds": None,
        "run_dir": str(run_dir),
        "base_dir": str(paths.base),
        "checkpoint_dir": str(checkpoint_dir),
        "resumed_from": job.config.resume,
        "entry_point": job.entry_point,
        "source_dir": str(job.code_source if job.code_source.is_dir() else job.code_source.parent),
        "config": _absolute_config(job),
        "hyperparameters": dict(job.config.hyperparameters),
        "command": command,
        "exit_code": None,
        "failure_reason": None,
        "final_metrics": {},
        "artifacts": {},
        "requirement_problems": [p.__dict__ for p in job.requirement_problems],
        "warnings": list(job.warnings),
        "distribution": job.distribution,
    }
    store.save(record)
    reporter.started(record)

    parser = MetricParser(job.config.metric_definitions)
    latest: dict[str, float] = {}
    tail: list[str] = []
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=paths.code,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # our own process group: Ctrl-C reaches aiops, which stops it
        # if aiops is killed outright, the script goes too; torchrun gets SIGTERM so it can stop
        # its workers (they run in sessions of their own)
        preexec_fn=_die_with_parent(signal.SIGTERM if spec.distributed else signal.SIGKILL),
    )
    record["script_pid"] = proc.pid
    record["script_start_time"] = process_start_time(proc.pid)
    store.save(record)
    stopper = _Stopper(proc, stop_grace_seconds, reporter)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handlers = {}
    if in_main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[sig] = signal.signal(sig, stopper.handle)
    try:
        with open(run_dir / "train.log", "wb") as log, open(run_dir / "metrics.jsonl", "a") as metrics_file:
            assert proc.stdout is not None
            for line_number, raw in enumerate(iter(proc.stdout.readline, b""), start=1):
                log.write(raw)
                log.flush()
                text = raw.decode("utf-8", errors="replace").rstrip("\n")
                tail.append(text)
                if len(tail) > log_tail_lines:
                    del tail[0]
                reporter.line(text)
                for sample in parser.parse(text):
                    latest[sample.name] = sample.value
                    metrics_file.write(
                        _json_line(
                            {
                                "name": sample.name,
                                "value": sample.value,
                                "line": line_number,
                                "timestamp": time.time(),
                                "elapsed_seconds": round(time.monotonic() - started, 3),
                            }
                        )
                    )
                    metrics_file.flush()
                    reporter.metric(sample, latest)
            exit_code = proc.wait()
    finally:
        stopper.cancel()
        if proc.poll() is None:  # aiops itself failed while reading: do not orphan the script
            stopper.kill()
            proc.wait()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)

    record["exit_code"] = exit_code
    record["ended_at"] = time.time()
    record["duration_seconds"] = round(time.monotonic() - started, 3)
    record["final_metrics"] = latest
    if stopper.requested_by is not None:
        record["status"] = STATUS_STOPPED
        record["stopped_by"] = signal.Signals(stopper.requested_by).name
    elif exit_code == 0:
        record["status"] = STATUS_COMPLETED
        (paths.output / "success").write_text("")
        artifacts = run_dir / "output"
        artifacts.mkdir(exist_ok=True)
        _pack(paths.model, artifacts / "model.tar.gz")
        _pack(paths.output_data, artifacts / "output.tar.gz")
        record["artifacts"] = {
            "model": str(artifacts / "model.tar.gz"),
            "output": str(artifacts / "output.tar.gz"),
            "model_dir": str(paths.model),
        }
    else:
        record["status"] = STATUS_FAILED
        failure_file = paths.output / "failure"
        if not failure_file.is_file():  # the toolkit writes one when the script did not
            reason = "killed by signal %d" % -exit_code if exit_code < 0 else "exit code %d" % exit_code
            failure_file.write_text(
                f"AlgorithmError: ExecuteUserScriptError: {reason}\n" + "\n".join(tail[-5:])
            )
        record["failure_reason"] = failure_file.read_text(errors="replace")[:FAILURE_TAIL_CHARS]
        record["log_tail"] = tail
    store.save(record)
    reporter.finished(record)
    return record


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(sig: int):
    """A preexec_fn asking the kernel to send `sig` to the child when its parent dies (Linux);
    elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def request_stop(record: Mapping[str, Any]) -> str:
    """Stop a local job: SIGTERM to the aiops process running it (it forwards SIGTERM to the
    script's group, then SIGKILL after the grace period), or, if that runner is gone but the script
    is not, SIGTERM to the script's process group. Every pid is checked against its recorded
    start time first, so a pid the system has since given to another process is never signalled.
    Returns what was signalled."""
    name = record["job_name"]
    if record.get("status") == STATUS_STALE:
        raise UsageError(f"{name} is stale: its aiops process died and took the script with it; nothing to stop.")
    if record.get("status") != STATUS_IN_PROGRESS:
        raise UsageError(f"{name} is {record.get('status')}, not running; nothing to stop.")
    runner = record.get("runner_pid")
    if process_alive(runner, record.get("runner_start_time")):
        os.kill(int(runner), signal.SIGTERM)
        return f"aiops process {runner}"
    script = record.get("script_pid")
    if process_alive(script, record.get("script_start_time")):
        os.killpg(int(script), signal.SIGTERM)  # the script leads its own group (start_new_session)
        return f"script process group {script}"
    raise UsageError(f"{name} is marked running but neither its aiops process nor its script is alive; "
                     "nothing was signalled.")


def export_artifacts(store: RunStore, record: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """Copy the artifacts to `<output_dir>/<job>/output/`, the SDK's output_path layout."""
    dest = output_dir / record["job_name"] / "output"
    dest.mkdir(parents=True, exist_ok=False)  # the job name is unique: never overwrite user files
    exported = {}
    for key in ("model", "output"):
        source = Path(record["artifacts"][key])
        shutil.copy2(source, dest / source.name)
        exported[key] = str(dest / source.name)
    record["exported_artifacts"] = exported
    store.save(record)
    return record


def _absolute_config(job: PreparedJob) -> dict[str, Any]:
    """The request with absolute paths, so --resume works from any working directory."""
    config = job.config.to_record()
    if job.code_source.is_dir():
        config["source_dir"] = str(job.code_source)
        config["entry_point"] = job.entry_point
    else:
        config["source_dir"] = None
        config["entry_point"] = str(job.code_source)
    config["channels"] = {name: str(path) for name, path in job.channels.items()}
    return config


def _json_line(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n"


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
) -> JobConfig:
    """The job the options ask for. Without an entry point, `resume` names the run whose whole
    configuration is reused; options given (hyperparameters, channels, ...) override it."""
    if entry_point is None:
        if resume is None:
            raise UsageError("missing ENTRY_POINT: give the training script, e.g. aiops train train.py.")
        config = resume_config(store, resume)
    else:
        config = JobConfig(entry_point=entry_point, source_dir=source_dir, resume=resume,
                           hyperparameters=dict(hyperparameters or {}))
    if source_dir is not None:
        config.source_dir = source_dir
    config.hyperparameters.update(hp)
    config.channels.update(channels)
    config.metric_definitions += metric_definitions
    config.instance_type = instance_type or config.instance_type or default_instance_type
    config.nproc = nproc if nproc is not None else config.nproc
    config.distribution = distribution if distribution is not None else config.distribution
    config.follow_symlinks = follow_symlinks or config.follow_symlinks
    names = list(config.channels)
    config.input_modes.update(contract.parse_channel_settings(input_modes, names, "--input-mode",
                                                              contract.INPUT_MODES))
    config.channel_sharding.update(contract.parse_channel_settings(channel_sharding, names, "--channel-sharding",
                                                                   contract.S3_DISTRIBUTIONS))
    config.job_name = job_name
    return config


def resume_config(store: RunStore, name: str) -> JobConfig:
    """The configuration an earlier run was started with, to run it again from its checkpoints."""
    previous = store.load(name)
    cfg = previous.get("config") or {}
    return JobConfig(
        entry_point=cfg["entry_point"],
        source_dir=cfg.get("source_dir"),
        hyperparameters=dict(cfg.get("hyperparameters") or {}),
        channels=dict(cfg.get("channels") or {}),
        instance_type=cfg.get("instance_type") or "local",
        nproc=cfg.get("nproc"),
        distribution=cfg.get("distribution"),
        follow_symlinks=bool(cfg.get("follow_symlinks")),
        input_modes=dict(cfg.get("input_modes") or {}),
        channel_sharding=dict(cfg.get("channel_sharding") or {}),
        metric_definitions=[MetricDefinition(d["Name"], d["Regex"]) for d in cfg.get("metric_definitions", [])],
        resume=name,
    )
