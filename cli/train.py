"""`aiops train` and `aiops jobs`: option names follow the SageMaker SDK (entry_point, source_dir,
hyperparameters, instance_type) so habits carry over."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional

import typer

jobs_app = typer.Typer(help="Local training runs: list and describe.", no_args_is_help=True)


def _parse_pairs(values: List[str], option: str, example: str) -> dict[str, str]:
    from aiops.errors import UsageError

    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} {example}.")
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


class _ConsoleReporter:
    """Streams the script's output with a live status line (elapsed time, latest metrics)."""

    def __init__(self, *, to_stderr: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=to_stderr, highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal
        self._status = None
        self._started = time.monotonic()
        self._latest: Mapping[str, float] = {}
        self._job = ""

    def __rich__(self) -> str:
        metrics = "  ".join(f"{k}={v:.4g}" for k, v in list(self._latest.items())[-4:])
        return f"[bold]{self._job}[/] running {time.monotonic() - self._started:6.1f}s  {metrics}"

    def started(self, record: Mapping[str, Any]) -> None:
        self._job = record["job_name"]
        self._started = time.monotonic()
        for problem in record.get("requirement_problems", []):
            self.console.print(
                f"[yellow]warning:[/] requirements.txt: {problem['requirement']} is {problem['reason']} here "
                "(the SageMaker container pip-installs it; aiops never installs into your environment)."
            )
        self.console.print(f"[bold]{self._job}[/] started in {record['run_dir']}")
        if self.live:
            self._status = self.console.status(self)
            self._status.start()

    def line(self, text: str) -> None:
        self.console.out(text, highlight=False)

    def metric(self, sample: Any, latest: Mapping[str, float]) -> None:
        self._latest = latest

    def stopping(self, reason: str) -> None:
        self.console.print(f"[yellow]{reason}[/]")

    def finished(self, record: Mapping[str, Any]) -> None:
        if self._status is not None:
            self._status.stop()


def _render_summary(console: Any, record: Mapping[str, Any]) -> None:
    from rich.table import Table

    colour = {"Completed": "green", "Failed": "red", "Stopped": "yellow"}.get(record["status"], "white")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths stay whole, folded, never cut with an ellipsis
    table.add_row("job", record["job_name"])
    table.add_row("status", f"[{colour}]{record['status']}[/]")
    table.add_row("duration", f"{record.get('duration_seconds') or 0:.1f}s")
    for name, value in (record.get("final_metrics") or {}).items():
        table.add_row(name, f"{value:.6g}")
    for name, path in (record.get("artifacts") or {}).items():
        table.add_row(name, str(path))
    if record["status"] == "Stopped":
        table.add_row("checkpoints", record["checkpoint_dir"])
        table.add_row("resume with", f"aiops train --resume {record['job_name']}")
    console.print(table)
    if record["status"] == "Failed":
        tail = record.get("log_tail") or []
        if tail:
            console.print("[red]last lines of the log:[/]")
            for line in tail:
                console.out(line, highlight=False)
        console.print(f"[red]failure:[/] {record.get('failure_reason', '').strip()}")
        console.print(f"run folder kept: {record['run_dir']}")


def train(
    entry_point: Optional[str] = typer.Argument(
        None, help="The training script (relative to --source-dir when given). Optional with --resume."
    ),
    source_dir: Optional[str] = typer.Option(None, "--source-dir", help="Folder of code to ship with the script."),
    hp: List[str] = typer.Option([], "--hp", help="Hyperparameter KEY=VALUE (repeatable; JSON values)."),
    hyperparameters: Optional[Path] = typer.Option(
        None, "--hyperparameters", help="JSON file of hyperparameters (--hp overrides it)."
    ),
    channel: List[str] = typer.Option([], "--channel", help="Input channel NAME=PATH (repeatable)."),
    instance_type: Optional[str] = typer.Option(
        None, "--instance-type", help="Recorded locally (resourceconfig.json); used by remote jobs."
    ),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Processes per host: launch with torchrun."),
    job_name: Optional[str] = typer.Option(None, "--job-name", help="Name of the run (default: script name + time)."),
    output_dir: Optional[Path] = typer.Option(
        None, "--output-dir", help="Also place artifacts in OUTPUT_DIR/<job>/output/ (like the SDK's output_path)."
    ),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Run again with the checkpoint folder of this earlier run."
    ),
    metric: List[str] = typer.Option([], "--metric", help="Metric NAME=REGEX, first group is the value."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout (logs go to stderr)."),
) -> None:
    """Run a SageMaker-style PyTorch training script locally under the SageMaker training contract."""
    from aiops.errors import UsageError
    from aiops.settings import get_settings
    from aiops.training import local
    from aiops.training.contract import parse_hyperparameter_value
    from aiops.training.metrics import parse_metric_option
    from aiops.training.runs import RunStore

    settings = get_settings()
    store = RunStore(settings.runs_dir)
    if entry_point is None:
        if resume is None:
            raise UsageError("missing ENTRY_POINT: give the training script, e.g. aiops train train.py.")
        config = local.resume_config(store, resume)
    else:
        config = local.JobConfig(entry_point=entry_point, source_dir=source_dir, resume=resume)
        if hyperparameters is not None:
            config.hyperparameters = _load_hyperparameters_file(hyperparameters)
    config.source_dir = source_dir if source_dir is not None else config.source_dir
    for key, raw in _parse_pairs(hp, "--hp", "epochs=10").items():
        config.hyperparameters[key] = parse_hyperparameter_value(raw)
    config.channels.update(_parse_pairs(channel, "--channel", "train=./data/train"))
    config.metric_definitions += [parse_metric_option(m) for m in metric]
    config.instance_type = instance_type or config.instance_type or settings.train.instance_type
    config.nproc = nproc if nproc is not None else config.nproc
    config.job_name = job_name
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir}: exists and is not a folder.")

    prepared = local.prepare(config, store)
    reporter = _ConsoleReporter(to_stderr=as_json)
    record = local.run(
        prepared,
        store,
        stop_grace_seconds=settings.train.stop_grace_seconds,
        link_channels=settings.train.link_channels,
        region=settings.aws.region,
        log_tail_lines=settings.train.log_tail_lines,
        reporter=reporter,
    )
    if output_dir is not None and record["artifacts"]:
        record = local.export_artifacts(store, record, output_dir)
    if as_json:
        sys.stdout.write(json.dumps(_summary(record), sort_keys=True) + "\n")
    else:
        _render_summary(reporter.console, record)
    status = record["status"]
    if status == "Failed":
        raise typer.Exit(1)
    if status == "Stopped":
        raise typer.Exit(130 if record.get("stopped_by") == "SIGINT" else 143)


def _summary(record: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "job_name", "status", "exit_code", "run_dir", "checkpoint_dir", "resumed_from", "duration_seconds",
        "hyperparameters", "final_metrics", "artifacts", "failure_reason",
    )
    return {key: record.get(key) for key in keys}


@jobs_app.command("list")
def jobs_list(as_json: bool = typer.Option(False, "--json", help="One JSON array on stdout.")) -> None:
    """List local runs, newest first."""
    from rich.console import Console
    from rich.table import Column, Table

    from aiops.settings import get_settings
    from aiops.training.runs import RunStore

    records = RunStore(get_settings().runs_dir).list()
    if as_json:
        sys.stdout.write(json.dumps([_summary(r) for r in records], sort_keys=True) + "\n")
        return
    console = Console()
    if not records:
        console.print("no local runs yet: start one with 'aiops train SCRIPT'.")
        return
    table = Table(Column("job", overflow="fold"), "status", "started", "duration", Column("metrics", overflow="fold"))
    for r in records:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in list((r.get("final_metrics") or {}).items())[:3])
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("created_at", 0)))
        duration = f"{r['duration_seconds']:.1f}s" if r.get("duration_seconds") is not None else "-"
        table.add_row(r["job_name"], r["status"], started, duration, metrics)
    console.print(table)


@jobs_app.command("describe")
def jobs_describe(
    name: str = typer.Argument(..., help="Job name (see 'aiops jobs list')."),
    as_json: bool = typer.Option(False, "--json", help="The whole run record as JSON."),
) -> None:
    """Show one local run: status, timings, hyperparameters, final metrics, artifacts."""
    from rich.console import Console

    from aiops.settings import get_settings
    from aiops.training.runs import RunStore

    record = RunStore(get_settings().runs_dir).load(name)
    if as_json:
        sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
        return
    console = Console()
    _render_summary(console, record)
    console.print_json(json.dumps({"hyperparameters": record.get("hyperparameters"), "config": record.get("config")}))


def register(app: typer.Typer, *, panel: str) -> None:
    app.command("train", rich_help_panel=panel)(train)
    app.add_typer(jobs_app, name="jobs", rich_help_panel=panel)
