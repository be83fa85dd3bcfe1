"""Run a SageMaker-style training script locally, as a plain process, under the container contract.

The runner plays the part of the PyTorch training container and its toolkit: it lays out the
``/opt/ml`` tree under a run folder, snapshots the code into ``code/``, copies the channels into
``input/data/<channel>``, sets the toolkit's environment and argv (``contract``), starts the
script (or torchrun), streams its output with metrics, stops it the way SageMaker stops a job
(SIGTERM, then SIGKILL after a grace period), and packs ``model.tar.gz`` / ``output.tar.gz``.
The run folder and its record are `aiops.runs`'; the job definition is `training.jobs`'.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiops.training import container, contract, failures, jobs
from aiops.training.jobs import PreparedJob, absolute_config
from aiops.training.launch import LaunchOptions
from aiops.training.metrics import MetricParser

from aiops import archive, files
from aiops.errors import UsageError
from aiops.run_folder import RunFolder
from aiops.run_processes import process_start_time, runner_command, script_alive
from aiops.runs import (
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_IN_PROGRESS,
    STATUS_STALE,
    STATUS_STOPPED,
    Artifacts,
    RunRecord,
    RunStore,
)

# A run's reporter is the part of `jobs.JobEvents` a local run uses: started, line, metric, stopping,
# finished.
RunReporter = jobs.JobEvents


# ---------------------------------------------------------------------------------------------
# Running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _copy_code(job: PreparedJob, dest: Path, runs_root: Path) -> None:
    """The code snapshot: exactly the files the remote bundle would ship (aiops.files)."""
    selection = job.code_selection or files.select(
        job.code_source, follow_symlinks=job.config.follow_symlinks, exclude_paths=[runs_root]
    )
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
        self.reason: str | None = None  # a stop aiops asked for (`request`)
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
            f"{signal.Signals(signum).name} received: stopping "
            f"the job (SIGTERM, SIGKILL after {self.grace:g}s)"
        )
        self._signal_group(signal.SIGTERM)
        self._killer = threading.Timer(self.grace, self._signal_group, args=(signal.SIGKILL,))
        self._killer.daemon = True
        self._killer.start()

    def request(self, reason: str) -> None:
        """A stop asked for by aiops itself (a tuning trial pruned): SIGTERM, SIGKILL after grace."""
        if self.requested_by is None and self.reason is None:
            self.reason = reason
            self.reporter.stopping(f"{reason}: stopping the job (SIGTERM, SIGKILL after {self.grace:g}s)")
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
    stop_when: Callable[[], str | None] | None = None,
) -> RunRecord:
    """Run the prepared job to its end; returns the final run record. `stop_when`, asked after each
    line of output, returns a reason to stop the job (the record ends Stopped, `stopped_by` the reason)."""
    reporter = reporter or jobs.NullEvents()
    folder = _lay_out(job, store, link_channels)
    spec, launch = _host_launch(job, folder, region, python)
    record = _started_record(job, folder, launch.argv)
    store.save(record)
    reporter.started(record)

    started = time.monotonic()
    proc = subprocess.Popen(
        launch.argv,
        cwd=folder.container.code,
        env=launch.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # our own process group: Ctrl-C reaches aiops, which stops it
        # if aiops is killed outright, the script goes too; torchrun gets SIGTERM so it can stop
        # its workers (they run in sessions of their own)
        preexec_fn=_die_with_parent(signal.SIGTERM if spec.distributed else signal.SIGKILL),
    )
    record.update(script_pid=proc.pid, script_start_time=process_start_time(proc.pid))
    store.save(record)
    stopper = _Stopper(proc, stop_grace_seconds, reporter)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handlers = {}
    if in_main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[sig] = signal.signal(sig, stopper.handle)
    try:
        latest, tail = _follow_output(
            proc, folder, job, reporter, stopper, stop_when, log_tail_lines=log_tail_lines, started=started
        )
        exit_code = proc.wait()
    finally:
        stopper.cancel()
        if proc.poll() is None:  # aiops itself failed while reading: do not orphan the script
            stopper.kill()
            proc.wait()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)

    record.update(
        exit_code=exit_code,
        ended_at=time.time(),
        duration_seconds=round(time.monotonic() - started, 3),
        final_metrics=latest,
    )
    _settle(record, folder, stopper, exit_code, tail, distributed=spec.distributed)
    store.save(record)
    reporter.finished(record)
    return record


def _lay_out(job: PreparedJob, store: RunStore, link_channels: bool) -> RunFolder:
    """The run folder and its container tree: the code snapshot, the channels, the checkpoint
    folder (an earlier run's, linked, with --resume)."""
    folder = store.create(job.job_name)
    paths = folder.container
    for tree_dir in paths.all_dirs():
        tree_dir.mkdir(parents=True, exist_ok=True)
    if job.checkpoint_source is not None:
        paths.checkpoints.rmdir()
        paths.checkpoints.symlink_to(job.checkpoint_source, target_is_directory=True)
    _copy_code(job, paths.code, store.root)
    for name, source in job.channels.items():
        _stage_channel(source, paths.channel(name), link_channels, job.channel_selections.get(name))
    return folder


def _host_launch(
    job: PreparedJob, folder: RunFolder, region: str, python: str | None
) -> tuple[contract.TrainingJobSpec, container.HostLaunch]:
    """The container's config files written into the run's tree, and the command and environment
    that start the script on this one host."""
    paths = folder.container
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
    container.write_config_files(spec, paths)
    # One machine: `algo-1` does not resolve here, and 7777 may be taken by another local run, so
    # MASTER_ADDR/MASTER_PORT are loopback and a free port (the container's are algo-1:7777).
    launch = container.host_launch(
        spec,
        paths,
        container.HostFacts.detect(),
        python=python or sys.executable,
        base_env={**os.environ, **job.config.script_environment()},
        master_addr="127.0.0.1",
        master_port=_free_port(),
    )
    if spec.distributed:  # torchrun copies the first failed rank's error file here (scripts under @record)
        folder.torchrun_error.unlink(missing_ok=True)
        launch.env["TORCHELASTIC_ERROR_FILE"] = str(folder.torchrun_error)
    return spec, launch


def _started_record(job: PreparedJob, folder: RunFolder, command: list[str]) -> RunRecord:
    paths = folder.container
    return RunRecord(
        job_name=job.job_name,
        status=STATUS_IN_PROGRESS,
        runner_pid=os.getpid(),  # `aiops jobs stop` signals this process, which stops the script
        runner_start_time=process_start_time(os.getpid()),  # so a reused pid is never signalled
        created_at=time.time(),
        ended_at=None,
        duration_seconds=None,
        run_dir=str(folder.root),
        base_dir=str(paths.base),
        checkpoint_dir=str(job.checkpoint_source or paths.checkpoints),
        resumed_from=job.config.resume,
        entry_point=job.entry_point,
        source_dir=str(job.code_source if job.code_source.is_dir() else job.code_source.parent),
        config=absolute_config(job),
        hyperparameters=dict(job.config.hyperparameters),
        command=command,
        exit_code=None,
        failure_reason=None,
        final_metrics={},
        artifacts=Artifacts(),
        requirement_problems=[p.__dict__ for p in job.requirement_problems],
        warnings=list(job.warnings),
        distribution=job.distribution,
    )


def _follow_output(
    proc: subprocess.Popen[bytes],
    folder: RunFolder,
    job: PreparedJob,
    reporter: RunReporter,
    stopper: _Stopper,
    stop_when: Callable[[], str | None] | None,
    *,
    log_tail_lines: int,
    started: float,
) -> tuple[dict[str, float], list[str]]:
    """Every line of the script's output into train.log and the reporter, its metrics into
    metrics.jsonl; returns the latest value of each metric and the log's last lines."""
    parser = MetricParser(job.config.metric_definitions)
    latest: dict[str, float] = {}
    tail: list[str] = []
    with open(folder.log, "wb") as log, open(folder.metrics, "a") as metrics_file:
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
            reason = stop_when() if stop_when is not None else None
            if reason:
                stopper.request(reason)
    return latest, tail


def _settle(
    record: RunRecord,
    folder: RunFolder,
    stopper: _Stopper,
    exit_code: int,
    tail: list[str],
    *,
    distributed: bool,
) -> None:
    """The run's end as SageMaker records it: Stopped (by whom), Completed (the success file, the
    model and output archives) or Failed (the failure file: the toolkit's line, the failed rank)."""
    paths = folder.container
    if stopper.requested_by is not None:
        record.update(status=STATUS_STOPPED, stopped_by=signal.Signals(stopper.requested_by).name)
    elif stopper.reason is not None:
        record.update(status=STATUS_STOPPED, stopped_by=stopper.reason)
    elif exit_code == 0:
        record.status = STATUS_COMPLETED
        (paths.output / "success").write_text("")
        folder.output.mkdir(exist_ok=True)
        _pack(paths.model, folder.model_archive)
        _pack(paths.output_data, folder.output_archive)
        record.artifacts = Artifacts(
            model=str(folder.model_archive), output=str(folder.output_archive), model_dir=str(paths.model)
        )
    else:
        reason, log_tail = failures.write_failure(folder, exit_code, tail, distributed=distributed)
        record.update(status=STATUS_FAILED, failure_reason=reason, log_tail=log_tail)


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


def request_stop(record: RunRecord, folder: RunFolder) -> str:
    """Stop a local job: SIGTERM to the aiops process running it (it forwards SIGTERM to the
    script's group, then SIGKILL after the grace period), or, if that runner is gone but the script
    is not, SIGTERM to the script's process group. ``folder``: the run's folder in the store. Each
    pid is signalled only when /proc shows it is this run's (`aiops.run_processes.runner_alive`: its
    start time and an `aiops train` command line; `script_alive`: its start time and this run's
    SAGEMAKER_BASE_DIR), so neither a reused pid nor a pid written into run.json by hand is ever
    signalled. Returns what was signalled."""
    name = record.job_name
    if record.status == STATUS_STALE:
        raise UsageError(
            f"{name} is stale: its aiops process died and took the script with it; nothing to stop."
        )
    if record.status != STATUS_IN_PROGRESS:
        raise UsageError(f"{name} is {record.status}, not running; nothing to stop.")
    runner = record.runner_pid
    # an `aiops tune` runner runs other trials too: only this trial's script is stopped
    if runner_command(record) == "train":
        os.kill(int(runner), signal.SIGTERM)  # type: ignore[arg-type]
        return f"aiops process {runner}"
    script = record.script_pid
    if script_alive(record, folder):
        os.killpg(int(script), signal.SIGTERM)  # type: ignore[arg-type]  # the script leads its own group
        return f"script process group {script}"
    raise UsageError(
        f"{name} is marked running but neither its aiops process nor its script is alive "
        "(no such process, or not this run's); nothing was signalled."
    )


def export_artifacts(store: RunStore, record: RunRecord, output_dir: Path) -> RunRecord:
    """Copy the artifacts to `<output_dir>/<job>/output/`, the SDK's output_path layout."""
    dest = output_dir / record.job_name / "output"
    dest.mkdir(parents=True, exist_ok=False)  # the job name is unique: never overwrite user files
    exported = {}
    for key, value in (("model", record.artifacts.model), ("output", record.artifacts.output)):
        source = Path(value or "")
        shutil.copy2(source, dest / source.name)
        exported[key] = str(dest / source.name)
    record.exported_artifacts = exported
    store.save(record)
    return record


def _json_line(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n"


# ---------------------------------------------------------------------------------------------
# The backend


class LocalBackend:
    """`Mode.LOCAL_PROCESS`: the job runs here as a plain process under the container contract."""

    target = jobs.Target()  # local channels only, no MPI, --resume restores a local run's checkpoints

    def __init__(
        self,
        store: RunStore,
        settings: Any,
        options: LaunchOptions | None = None,
        events: jobs.JobEvents | None = None,
    ) -> None:
        self.store, self.settings = store, settings
        self.launch_options = options or LaunchOptions()
        self.events = events or jobs.NullEvents()
        if self.launch_options.sagemaker_options_given():
            raise UsageError(
                "remote options (--spot, --max-run, --role, --bucket, --model-params, ...) need --remote."
            )

    def prepare(self, config: jobs.JobConfig) -> PreparedJob:
        from aiops.training.images import installed_transformers_note, resolve_framework

        framework = resolve_framework(
            config.framework, config.transformers_version, self.launch_options.image.framework_version
        )
        prepared = jobs.prepare(config, self.store, self.target)
        note = installed_transformers_note(framework)  # the script runs on this machine's packages
        return dataclasses.replace(prepared, warnings=[*prepared.warnings, note]) if note else prepared

    def launch(self, job: PreparedJob) -> jobs.LaunchResult:
        """Run the job to its end, with its log streamed to the events."""
        for name, mode in sorted(job.config.input_modes.items()):
            if mode != "File":  # recorded in inputdataconfig.json; the data itself is read as File here
                self.events.note(
                    f"channel {name!r}: --input-mode {mode} runs as File locally "
                    "(see docs/remote.md#input-modes for what changes on SageMaker)."
                )
        for name in sorted(job.config.secrets):
            if not os.environ.get(name):  # the value stays where it is; the script reads it there
                self.events.note(
                    f"--secret {name}: not set in your environment, so the script reads it from "
                    "Secrets Manager with your AWS credentials (see docs/training.md#secrets)."
                )
        train = self.settings.train
        record = run(
            job,
            self.store,
            stop_grace_seconds=train.stop_grace_seconds,
            link_channels=train.link_channels,
            region=self.settings.aws.region,
            log_tail_lines=train.log_tail_lines,
            reporter=self.events,
        )
        output_dir = self.launch_options.output_dir
        if output_dir is not None and record.artifacts:
            record = export_artifacts(self.store, record, output_dir)
        exit_code = {STATUS_FAILED: 1, STATUS_STOPPED: 130 if record.stopped_by == "SIGINT" else 143}
        return jobs.LaunchResult(record, exit_code=exit_code.get(record.status or "", 0), streamed=True)

    def refresh(self, record: RunRecord) -> RunRecord:
        return record  # a local record is current (Stale is decided when it is read)

    def describe(self, record: RunRecord) -> RunRecord:
        return record

    def logs(self, record: RunRecord) -> list[tuple[str | None, str]]:
        """train.log, as (None, line)."""
        log = record.folder.log
        text = log.read_text(errors="replace") if log.is_file() else ""
        return [(None, line) for line in text.splitlines(keepends=True)]

    def metrics(self, record: RunRecord) -> dict[str, list[Any]]:
        from aiops.training.metrics import series_from_jsonl

        return series_from_jsonl(record.folder.metrics)

    def latest_metrics(self, record: RunRecord) -> dict[str, float]:
        """The final metrics, or while the run goes on, the latest value of each."""
        if record.final_metrics or record.status != STATUS_IN_PROGRESS:
            return dict(record.final_metrics)
        from aiops.training.metrics import latest_values

        return latest_values(record.folder.metrics)

    def stop(self, record: RunRecord) -> str | None:
        return request_stop(record, self.store.folder(record.job_name))
