"""`aiops train` and `aiops jobs`: option names follow the SageMaker SDK (entry_point, source_dir,
hyperparameters, instance_type) so habits carry over."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # typing only: `aiops --help` imports no record machinery
    from aiops.training.backends import JobBackend
    from rich.status import Status

    from aiops.runs import RunRecord

SUMMARY_METRICS = 8  # the rest (per-class figures, say) are one command away

jobs_app = typer.Typer(
    help="Training runs, local and remote: list, describe, logs, stop.", no_args_is_help=True
)


def _parse_pairs(values: list[str], option: str, example: str, *, unique: bool = False) -> dict[str, str]:
    from aiops.errors import UsageError

    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} {example}.")
        if unique and key.strip() in pairs:
            raise UsageError(
                f"{option} {key.strip()} is given twice ({pairs[key.strip()]} and {value}); "
                "give each name once."
            )
        pairs[key.strip()] = value
    return pairs


def _load_hyperparameters_file(path: Path) -> dict[str, Any]:
    from aiops.errors import UsageError

    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise UsageError(f"--hyperparameters {path}: cannot read it ({err.strerror}).") from None
    except ValueError as err:
        raise UsageError(f"--hyperparameters {path}: not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise UsageError(f"--hyperparameters {path}: expected a JSON object of name: value.")
    return data


class _Console:
    """Renders a job's events (`training.jobs.JobEvents`): the local script's output with a live status
    line (elapsed time, latest metrics); a remote job's upload bars, estimate, status and every host's log."""

    def __init__(self, *, to_stderr: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=to_stderr, highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal
        self._status: Status | None = None
        self._progress: Any = None
        self._upload_task: Any = None
        self._started = time.monotonic()
        self._latest: Mapping[str, float] = {}
        self._job = ""

    def __rich__(self) -> str:
        metrics = "  ".join(f"{k}={v:.4g}" for k, v in list(self._latest.items())[-4:])
        return f"[bold]{self._job}[/] running {time.monotonic() - self._started:6.1f}s  {metrics}"

    def info(self, text: str) -> None:
        typer.echo(text, err=True)

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]note:[/] {text}")

    def warning(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/] {text}", highlight=False)

    def started(self, record: RunRecord) -> None:
        self._job = record.job_name
        self._started = time.monotonic()
        for warning in record.warnings:
            self.warning(warning)
        for problem in record.requirement_problems:
            self.warning(
                f"requirements.txt: {problem['requirement']} is {problem['reason']} here "
                "(the SageMaker container pip-installs it; aiops never installs into your environment)."
            )
        self.console.print(f"[bold]{self._job}[/] started in {record.run_dir}")
        if self.live:
            self._status = self.console.status(self)
            self._status.start()

    def line(self, text: str) -> None:
        self.console.out(text, highlight=False)

    def metric(self, sample: Any, latest: Mapping[str, float]) -> None:
        self._latest = latest

    def stopping(self, reason: str) -> None:
        self.console.print(f"[yellow]{reason}[/]")

    def finished(self, record: RunRecord) -> None:
        if self._status is not None:
            self._status.stop()

    def upload(self, label: str, done: int, total: int) -> None:
        if self._progress is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=self.console,
                transient=True,
                disable=not self.live,
            )
            self._progress.start()
        # one line for the whole submission: the label counts the objects, the bar the bytes
        if self._upload_task is None:
            self._upload_task = self._progress.add_task(f"upload {label}", total=total)
        self._progress.update(self._upload_task, description=f"upload {label}", completed=done, total=total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._upload_task = None

    def estimate(
        self,
        estimate: Any,
        *,
        spot: bool,
        instance_count: int,
        instance_type: str,
        max_run: int,
        keep_alive: int | None = None,
        idle_cost: float | None = None,
    ) -> None:
        from aiops.pricing import load_prices

        if estimate.known:
            self.console.print(
                f"estimate: up to [bold]${estimate.cost(spot=spot):,.2f}[/] "
                f"({'spot' if spot else 'on-demand'}; on-demand ${estimate.cost(spot=False):,.2f}, "
                f"spot ${estimate.cost(spot=True):,.2f}) for {instance_count} x {instance_type} "
                f"over at most {max_run / 3600:g} h; prices as of {load_prices().as_of}"
            )
        if keep_alive and idle_cost is not None:
            self.console.print(
                f"warm pool: {instance_count} x {instance_type} kept up to {keep_alive / 60:g} min after the "
                f"job, [bold]${idle_cost:,.2f}[/] more if no matching job reuses it (on-demand)"
            )

    def attempts(self, attempts: Any) -> None:
        """The capacity-aware launch's attempts, one row each; a failure shows its reason's code
        (the text before the first colon: CapacityError, InsufficientInstanceCapacity, AlgorithmError)."""
        from rich.table import Column, Table

        table = Table(
            Column("#", no_wrap=True),
            Column("job", overflow="fold"),
            *(Column(h, no_wrap=True) for h in ("instance type", "outcome", "estimate")),
            title="attempts",
        )
        for number, attempt in enumerate(attempts, start=1):
            estimate = f"${attempt.estimate_usd:,.2f}" if attempt.estimate_usd is not None else "-"
            outcome = attempt.outcome
            code = attempt.detail.split(":", 1)[0] if ":" in attempt.detail else ""
            if outcome == "Failed" and code and " " not in code:
                outcome = f"Failed ({code})"
            elif outcome == "ResourceLimitExceeded":
                outcome = "refused (ResourceLimitExceeded)"
            table.add_row(str(number), attempt.job_name, attempt.instance_type, outcome, estimate)
        self.console.print(table)

    def accepted(self, record: RunRecord) -> None:
        self.close()
        config = record.config
        assert config is not None  # a launched record carries its config
        self.console.print(
            f"[bold]{record.job_name}[/] accepted by SageMaker in {record.region} "
            f"({'spot' if config.spot else 'on-demand'} {config.instance_count}x "
            f"{config.instance_type}); uploaded {record.uploaded_bytes} bytes, "
            f"code {record.code_bundle.uri if record.code_bundle else '-'}"
        )

    def status(self, status: str, secondary: str) -> None:
        self.console.print(f"[bold]status[/] {status}" + (f" / {secondary}" if secondary else ""))

    def log(self, stream: str, message: str) -> None:
        host = stream.split("/", 1)[-1].split("-")[0:2]
        self.console.out(f"[{'-'.join(host)}] {message}", highlight=False)

    def silent(self, seconds: float, status: str) -> None:
        self.console.print(
            f"[yellow]no log output for {seconds:.0f}s[/] (status {status}); still waiting — "
            "Ctrl-C to detach or stop."
        )


def _when(seconds: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else None


def _failure_text(reason: str, *, log_shown: bool) -> str:
    """The failure reason; when the log (with the script's traceback) was just shown, only its first
    line and the exception line, so the traceback is printed once."""
    lines = [line for line in reason.strip().splitlines() if line.strip()]
    if not log_shown or len(lines) <= 2:
        return reason.strip()
    # under torchrun, the rank that failed first (aiops.training.local.rank_failure) is named too
    rank = next((line for line in lines[1:-1] if line.startswith("rank ") and "failed" in line), None)
    return f"{lines[0]}{f' {rank}' if rank else ''} ... {lines[-1].strip()}"


def _warm_pool(record: RunRecord) -> str | None:
    """WarmPoolStatus in words: status, retained billable seconds, the job that reused it."""
    summary = record.remote_summary
    if summary is None or not summary.warm_pool_status:
        return None
    parts = [summary.warm_pool_status]
    if summary.warm_pool_billable_seconds is not None:
        parts.append(f"{summary.warm_pool_billable_seconds}s retained (billable)")
    if summary.warm_pool_reused_by:
        parts.append(f"reused by {summary.warm_pool_reused_by}")
    return ", ".join(parts)


def _render_summary(console: Any, record: RunRecord, *, streamed: bool = False) -> None:
    """`streamed`: the job's log was just shown live, so the log tail is not repeated."""
    from rich.table import Table

    colour = {"Completed": "green", "Failed": "red", "Stopped": "yellow", "Stale": "red"}.get(
        record.status or "", "white"
    )
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths stay whole, folded, never cut with an ellipsis
    table.add_row("job", record.job_name)
    table.add_row("status", f"[{colour}]{record.status}[/]")
    for label, when in (("started", _when(record.created_at)), ("ended", _when(record.ended_at))):
        if when:
            table.add_row(label, when)
    table.add_row("duration", f"{record.duration_seconds or 0:.1f}s")
    metrics = list(record.final_metrics.items())
    for name, value in metrics[:SUMMARY_METRICS]:  # in order of first appearance
        table.add_row(name, f"{value:.6g}")
    if len(metrics) > SUMMARY_METRICS:
        table.add_row(
            "", f"... and {len(metrics) - SUMMARY_METRICS} more: aiops jobs metrics {record.job_name}"
        )
    for name, path in record.artifacts.items():
        table.add_row(name, str(path))
    pool = _warm_pool(record)
    if pool:
        table.add_row("warm pool", pool)
    if record.status == "Stopped":
        table.add_row("checkpoints", record.checkpoint_dir)
        table.add_row("resume with", f"aiops train --resume {record.job_name}")
    console.print(table)
    if record.status == "Failed":
        tail = [] if streamed else record.log_tail or []
        if tail:
            console.print("[red]last lines of the log:[/]")
            for line in tail:
                console.out(line, highlight=False)
        reason = _failure_text(record.failure_reason or "", log_shown=streamed or bool(tail))
        console.print("[red]failure:[/] ", end="")
        console.out(reason, highlight=False)  # the script's text, not rich markup
        console.print(f"run folder kept: {record.run_dir}")


def train(
    entry_point: str | None = typer.Argument(
        None, help="The training script (relative to --source-dir when given). Optional with --resume."
    ),
    source_dir: str | None = typer.Option(
        None, "--source-dir", help="Folder of code to ship with the script."
    ),
    hp: list[str] = typer.Option([], "--hp", help="Hyperparameter KEY=VALUE (repeatable; JSON values)."),
    hyperparameters: Path | None = typer.Option(
        None, "--hyperparameters", help="JSON file of hyperparameters (--hp overrides it)."
    ),
    channel: list[str] = typer.Option([], "--channel", help="Input channel NAME=PATH (repeatable)."),
    env: list[str] = typer.Option(
        [],
        "--env",
        help="Environment variable KEY=VALUE of the script (repeatable): the local process's, "
        "the job's Environment. Not SM_*/SAGEMAKER_*, not secrets.",
    ),
    secret: list[str] = typer.Option(
        [],
        "--secret",
        help="Secret NAME=ARN of AWS Secrets Manager (repeatable): the script reads it as "
        "docs/training.md#secrets shows; its value is never sent or stored.",
    ),
    input_mode: list[str] = typer.Option(
        [],
        "--input-mode",
        help="[NAME=]File|FastFile|Pipe: a channel's "
        "InputMode (every channel without NAME; runs as File locally).",
    ),
    channel_sharding: list[str] = typer.Option(
        [],
        "--channel-sharding",
        help="[NAME=]ShardedByS3Key|"
        "FullyReplicated: each host gets a disjoint subset of the "
        "channel's S3 objects (remote jobs).",
    ),
    instance_type: str | None = typer.Option(
        None, "--instance-type", help="Recorded locally (resourceconfig.json); used by remote jobs."
    ),
    nproc: int | None = typer.Option(None, "--nproc", help="Processes per host: launch with torchrun."),
    distribution: str | None = typer.Option(
        None,
        "--distribution",
        help="none | torch_distributed | mpi (the SDK's `distribution`; default none, "
        "torch_distributed with --nproc). Without one, each host runs the script once.",
    ),
    follow_symlinks: bool = typer.Option(
        False,
        "--follow-symlinks",
        help="Ship what symlinks pointing outside the source dir or a channel point to.",
    ),
    job_name: str | None = typer.Option(
        None, "--job-name", help="Name of the run (default: script name + time)."
    ),
    output_dir: Path | None = typer.Option(
        None,
        "--output-dir",
        help="Also place artifacts in OUTPUT_DIR/<job>/output/ (like the SDK's output_path).",
    ),
    resume: str | None = typer.Option(
        None, "--resume", help="Run again with the checkpoint folder of this earlier run."
    ),
    metric: list[str] = typer.Option([], "--metric", help="Metric NAME=REGEX, first group is the value."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON summary on stdout (logs go to stderr)."
    ),
    remote: bool = typer.Option(
        False, "--remote", help="Run as a SageMaker managed training job.", rich_help_panel="Remote"
    ),
    instance_count: int = typer.Option(
        1, "--instance-count", help="Hosts of a remote job.", rich_help_panel="Remote"
    ),
    spot: bool | None = typer.Option(
        None, "--spot/--on-demand", help="Managed spot (default) or on-demand.", rich_help_panel="Remote"
    ),
    max_run: int | None = typer.Option(
        None, "--max-run", help="Max run time in seconds.", rich_help_panel="Remote"
    ),
    max_wait: int | None = typer.Option(
        None,
        "--max-wait",
        help="Spot: max wait incl. run time (default 2x max run).",
        rich_help_panel="Remote",
    ),
    volume_size: int | None = typer.Option(
        None, "--volume-size", help="EBS volume per host, GB.", rich_help_panel="Remote"
    ),
    role: str | None = typer.Option(
        None, "--role", help="Execution role ARN (default: the stack's).", rich_help_panel="Remote"
    ),
    bucket: str | None = typer.Option(
        None, "--bucket", help="S3 bucket (default: the stack's).", rich_help_panel="Remote"
    ),
    region: str | None = typer.Option(None, "--region", help="AWS region.", rich_help_panel="Remote"),
    stack: str | None = typer.Option(
        None,
        "--stack",
        "-s",
        help="Stack whose outputs give the role, bucket, key and network (default: AIOPS_STACK, else dev).",
        rich_help_panel="Remote",
    ),
    vpc: bool | None = typer.Option(
        None,
        "--vpc/--no-vpc",
        help="Run in the stack's VPC (default: when the stack has one).",
        rich_help_panel="Remote",
    ),
    network_isolation: bool = typer.Option(
        False,
        "--network-isolation",
        help="EnableNetworkIsolation: no network in the container (no pip install of requirements.txt).",
        rich_help_panel="Remote",
    ),
    image_uri: str | None = typer.Option(
        None, "--image-uri", help="Training image (default: the PyTorch DLC).", rich_help_panel="Remote"
    ),
    framework_version: str | None = typer.Option(
        None, "--framework-version", help="PyTorch container version.", rich_help_panel="Remote"
    ),
    framework: str | None = typer.Option(
        None,
        "--framework",
        help="pytorch (default) | huggingface: the training image, as the SDK's PyTorch / HuggingFace "
        "estimators.",
        rich_help_panel="Remote",
    ),
    transformers_version: str | None = typer.Option(
        None,
        "--transformers-version",
        help="The Hugging Face image's transformers (e.g. 4.56); its PyTorch comes from the SDK's table.",
        rich_help_panel="Remote",
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Follow status and logs until the job ends.", rich_help_panel="Remote"
    ),
    download: bool = typer.Option(
        False, "--download", help="Download model.tar.gz when the job completes.", rich_help_panel="Remote"
    ),
    max_cost: float | None = typer.Option(
        None, "--max-cost", help="Budget in USD: refuse a job that may cost more.", rich_help_panel="Remote"
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Launch even above the budget.", rich_help_panel="Remote"
    ),
    model_params: float | None = typer.Option(
        None,
        "--model-params",
        help="The model's parameter count (e.g. 7e9): refuse an instance type whose GPUs "
        "cannot hold its training state (weights, grads, Adam).",
        rich_help_panel="Remote",
    ),
    fsdp: bool = typer.Option(
        False,
        "--fsdp",
        help="With --model-params: the state is sharded over every GPU of every host (FSDP full sharding).",
        rich_help_panel="Remote",
    ),
    keep_alive: str | None = typer.Option(
        None,
        "--keep-alive",
        help="Keep the instances warm after the job (e.g. 30m, at most 1h) for the next matching job "
        "(KeepAlivePeriodInSeconds; on-demand).",
        rich_help_panel="Remote",
    ),
    remote_debug: bool = typer.Option(
        False,
        "--remote-debug",
        help="RemoteDebugConfig: open a shell on a running host with 'aiops jobs connect' "
        "(the stack needs access.remoteDebug: true).",
        rich_help_panel="Remote",
    ),
    max_attempts: int | None = typer.Option(
        None,
        "--max-attempts",
        help="With --instance-type A,B,C: at most this many jobs, one per type, after capacity errors.",
        rich_help_panel="Remote",
    ),
) -> None:
    """Run a SageMaker-style PyTorch training script locally under the SageMaker training contract,
    or with --remote as a SageMaker training job."""
    from aiops.training import backends, jobs
    from aiops.training.job_inputs import parse_hyperparameter_value
    from aiops.training.metrics import parse_metric_option
    from aiops.training.remote_request import parse_duration

    from aiops.runs import RunStore
    from aiops.settings import get_settings

    settings = get_settings()
    store = RunStore(settings.runs_dir)
    config = jobs.job_config(
        store,
        entry_point=entry_point,
        source_dir=source_dir,
        resume=resume,
        hyperparameters=_load_hyperparameters_file(hyperparameters) if hyperparameters is not None else None,
        hp={
            key: parse_hyperparameter_value(raw) for key, raw in _parse_pairs(hp, "--hp", "epochs=10").items()
        },
        channels=_parse_pairs(channel, "--channel", "train=./data/train", unique=True),
        metric_definitions=[parse_metric_option(m) for m in metric],
        instance_type=instance_type,
        nproc=nproc,
        job_name=job_name,
        default_instance_type=settings.train.instance_type,
        distribution=distribution,
        follow_symlinks=follow_symlinks,
        input_modes=input_mode,
        channel_sharding=channel_sharding,
        environment=_parse_pairs(env, "--env", "HF_HUB_OFFLINE=1", unique=True),
        secrets=_parse_pairs(
            secret, "--secret", "HF_TOKEN=arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME", unique=True
        ),
        framework=framework,
        transformers_version=transformers_version,
    )
    options = jobs.LaunchOptions(
        output_dir=output_dir,
        wait=wait,
        download=download,
        instance_type=instance_type,
        instance_count=instance_count,
        spot=spot,
        max_run=max_run,
        max_wait=max_wait,
        volume_size=volume_size,
        role=role,
        bucket=bucket,
        region=region,
        stack=stack,
        vpc=vpc,
        network_isolation=network_isolation,
        image_uri=image_uri,
        framework_version=framework_version,
        max_cost=max_cost,
        confirmed=yes,
        model_params=model_params,
        fsdp=fsdp,
        keep_alive=parse_duration(keep_alive, "--keep-alive") if keep_alive is not None else None,
        remote_debug=remote_debug,
        max_attempts=max_attempts,
    )
    events = _Console(to_stderr=as_json)
    backend = backends.create(
        backends.Mode.choose(remote=remote), store=store, settings=settings, options=options, events=events
    )
    try:
        result = backend.launch(backend.prepare(config))
    except jobs.Detached as detached:
        _detached(events.console, backend, detached.record)
    finally:
        events.close()
    if as_json:
        sys.stdout.write(json.dumps(_summary(result.record), sort_keys=True) + "\n")
    else:
        _render_summary(events.console, result.record, streamed=result.streamed)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _detached(console: Any, backend: JobBackend, record: RunRecord) -> None:
    """Ctrl-C while following a job: stop it (asked on a TTY only) or leave it running."""
    name = record.job_name
    if sys.stdin.isatty() and typer.confirm(f"\nStop the training job {name}?", default=False):
        backend.stop(record)
        console.print(f"stop requested for {name}.")
        raise typer.Exit(130)
    console.print(
        f"\ndetached; {name} keeps running. Follow it with 'aiops jobs logs {name}', "
        f"stop it with 'aiops jobs stop {name}'."
    )
    raise typer.Exit(130)


SUMMARY_KEYS = (
    "job_name",
    "status",
    "exit_code",
    "run_dir",
    "checkpoint_dir",
    "resumed_from",
    "duration_seconds",
    "hyperparameters",
    "final_metrics",
    "artifacts",
    "failure_reason",
)
REMOTE_SUMMARY_KEYS = (
    "billable_seconds",
    "training_seconds",
    "spot_saving_percent",
    "warm_pool_status",
    "warm_pool_billable_seconds",
    "warm_pool_reused_by",
)
KEPT_POOLS = ("Available", "InUse")  # instances SageMaker keeps (and bills) for a next job


def _summary(record: RunRecord) -> dict[str, Any]:
    data = record.to_json()
    summary = {key: data.get(key) for key in SUMMARY_KEYS}
    described = record.remote_summary.model_dump(exclude_unset=True) if record.remote_summary else {}
    summary.update({k: v for k, v in described.items() if k in REMOTE_SUMMARY_KEYS})
    return summary


def _open(name: str) -> tuple[RunRecord, JobBackend]:
    """A run's record and the backend that runs it."""
    from aiops.training import backends

    from aiops.runs import RunStore
    from aiops.settings import get_settings

    settings = get_settings()
    return backends.open_run(name, store=RunStore(settings.runs_dir), settings=settings)


@jobs_app.command("list")
def jobs_list(as_json: bool = typer.Option(False, "--json", help="One JSON array on stdout.")) -> None:
    """List local runs, newest first."""
    from aiops.training import backends
    from rich.console import Console
    from rich.table import Column, Table

    from aiops.runs import RunStore
    from aiops.settings import get_settings

    settings = get_settings()
    rows = backends.list_runs(store=RunStore(settings.runs_dir), settings=settings)
    if as_json:
        sys.stdout.write(json.dumps([_summary(r) for r, _ in rows], sort_keys=True) + "\n")
        return
    console = Console()
    if not rows:
        console.print("no local runs yet: start one with 'aiops train SCRIPT'.")
        return
    kept = {
        r.job_name: summary.warm_pool_status
        for r, _ in rows
        if (summary := r.remote_summary) and summary.warm_pool_status in KEPT_POOLS
    }
    # a kept warm pool is billed while it waits: its own column, so nobody forgets one
    pool = [Column("pool", style="yellow", no_wrap=True)] if kept else []
    table = Table(
        Column("job", overflow="fold"),
        "status",
        *pool,
        "started",
        "duration",
        Column("metrics", overflow="fold"),
    )
    for r, backend in rows:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in list(backend.latest_metrics(r).items())[:3])
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at or 0))
        duration = f"{r.duration_seconds:.1f}s" if r.duration_seconds is not None else "-"
        cells = [kept.get(r.job_name) or ""] if kept else []
        table.add_row(r.job_name, r.status or "-", *cells, started, duration, metrics)
    console.print(table)


@jobs_app.command("describe")
def jobs_describe(
    name: str = typer.Argument(..., help="Job name (see 'aiops jobs list')."),
    as_json: bool = typer.Option(False, "--json", help="The whole run record as JSON."),
) -> None:
    """Show one run: status, timings, hyperparameters, final metrics, artifacts (remote: refreshed)."""
    from rich.console import Console

    record, backend = _open(name)
    record = backend.describe(record)
    data = record.to_json()
    if as_json:
        sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
        return
    console = Console()
    _render_summary(console, record)
    console.print_json(
        json.dumps({"hyperparameters": data.get("hyperparameters"), "config": data.get("config")})
    )


@jobs_app.command("logs")
def jobs_logs(name: str = typer.Argument(..., help="Job name.")) -> None:
    """Print a run's log: train.log for local runs, every host's CloudWatch stream for remote jobs."""
    record, backend = _open(name)
    for stream, line in backend.logs(record):
        sys.stdout.write(f"[{stream}] {line}" if stream else line)


@jobs_app.command("metrics")
def jobs_metrics(
    name: str = typer.Argument(..., help="Job name."),
    plot: Path | None = typer.Option(None, "--plot", help="Also draw the curves into this PNG file."),
    as_json: bool = typer.Option(False, "--json", help="The series as JSON."),
) -> None:
    """Metrics over time: metrics.jsonl for local runs, CloudWatch for remote jobs; --plot draws a PNG."""
    from aiops.training.metrics import split_series
    from rich.console import Console
    from rich.table import Table

    record, backend = _open(name)
    series = backend.metrics(record)
    curves, finals = split_series(series)
    drawn: list[str] = []
    if plot is not None:
        from aiops.training.plots import plot_curves

        drawn = plot_curves(curves, plot, title=name)
    if as_json:
        payload = {k: [[p.elapsed_seconds, p.value] for p in v] for k, v in series.items()}
        sys.stdout.write(
            json.dumps({"series": payload, "plot": str(plot) if plot else None}, sort_keys=True) + "\n"
        )
        return
    console = Console()
    if not series:
        console.print(f"{name} has no metrics yet.")
        return
    if curves:
        names = sorted(curves)
        table = Table("#", "seconds", *names, title=f"{name}: metrics over time")
        for i in range(max(len(v) for v in curves.values())):
            row = [curves[n][i] if i < len(curves[n]) else None for n in names]
            seconds = next(p.elapsed_seconds for p in row if p is not None)
            table.add_row(str(i + 1), f"{seconds:.1f}", *[f"{p.value:.5g}" if p else "" for p in row])
        console.print(table)
    if finals:
        console.print("final: " + ", ".join(f"{k}={v:.5g}" for k, v in sorted(finals.items())))
    if plot is not None:
        console.print(f"plot: {plot} ({', '.join(drawn)})")


@jobs_app.command("connect")
def jobs_connect(
    name: str = typer.Argument(..., help="A running job started with --remote-debug."),
    host: str = typer.Option("algo-1", "--host", help="The host to open a shell on: algo-1, algo-2, ..."),
) -> None:
    """Open a shell on a host of a running SageMaker job (aws ssm start-session; needs --remote-debug)."""
    import subprocess

    from aiops.training import remote_debug, remote_jobs

    record, _ = _open(name)
    session = remote_debug.session(record, host, lambda: remote_jobs.describe(record.job_name, record.region))
    if session.missing:
        typer.echo(
            f"{' and '.join(session.missing)} not found here. Open the session with:\n  {session.line}\n"
            f"after installing {session.how_to_install()}",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"$ {session.line}", err=True)
    raise typer.Exit(subprocess.call(session.argv))


@jobs_app.command("stop")
def jobs_stop(name: str = typer.Argument(..., help="Job name.")) -> None:
    """Stop a running job the SageMaker way (SIGTERM, then SIGKILL after the grace period)."""
    record, backend = _open(name)
    target = backend.stop(record)
    typer.echo(f"stop requested for {name}" + (f" (SIGTERM to its {target})." if target else "."))


def register(app: typer.Typer, *, panel: str) -> None:
    app.command("train", rich_help_panel=panel)(train)
    app.add_typer(jobs_app, name="jobs", rich_help_panel=panel)
