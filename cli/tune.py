"""`aiops tune`: hyperparameter tuning of the script `aiops train` runs, with the same channels and
`--metric` definitions, locally (Optuna, `training.tune_local`) or as one SageMaker tuning job
(`--remote`, `training.tune_remote`). The policy is `training.tune`'s; this module parses and renders."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer


class _TuneConsole:
    """A progress bar over the trials on stderr, one line per finished trial; a remote submission's
    upload bar and notes (`training.jobs.JobEvents`, the parts a tuning launch uses)."""

    def __init__(self, total: int, *, to_stderr: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.console = Console(stderr=to_stderr, highlight=False, soft_wrap=True)
        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
        self.task = self.progress.add_task("trials", total=total)
        self.progress.start()
        self._upload: Any = None

    def trial_started(self, trial: Any) -> None:
        self.progress.update(self.task, description=f"trials (running {trial.job_name})")

    def trial_finished(self, trial: Any, finished: int, total: int) -> None:
        value = "-" if trial.value is None else f"{trial.value:.6g}"
        params = ", ".join(f"{k}={_shown(v)}" for k, v in trial.hyperparameters.items())
        self.console.print(
            f"trial {finished}/{total} {trial.job_name}: {trial.status}, objective {value} ({params})"
        )
        self.progress.update(self.task, completed=finished, description="trials")

    # what a remote submission reports (training.jobs.JobEvents)
    def note(self, text: str) -> None:
        self.console.print(text)

    def warning(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/] {text}")

    info = note

    def upload(self, label: str, done: int, total: int) -> None:
        if self._upload is None:
            self._upload = self.progress.add_task(f"upload {label}", total=total)
        self.progress.update(self._upload, description=f"upload {label}", completed=done, total=total)

    def close(self) -> None:
        if self._upload is not None:
            self.progress.remove_task(self._upload)
            self._upload = None

    def stop(self) -> None:
        self.progress.stop()

    def __getattr__(self, name: str) -> Any:  # the other JobEvents: nothing to show for a tuning job
        return lambda *args, **kwargs: None


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _render(console: Any, trials: list[Any], best: str | None, metric: str) -> None:
    from rich.table import Table

    names = list(dict.fromkeys(k for t in trials for k in t.hyperparameters))
    table = Table("", "#", "trial", "status", *names, metric, title="trials")
    for t in trials:
        mark = "[bold green]*best*[/]" if t.job_name == best else ""
        table.add_row(
            mark,
            str(t.number),
            t.job_name,
            t.status,
            *[_shown(t.hyperparameters.get(n, "")) for n in names],
            "-" if t.value is None else f"{t.value:.6g}",
        )
    console.print(table)


def tune(
    entry_point: str = typer.Argument(..., help="The training script (relative to --source-dir when given)."),
    source_dir: str | None = typer.Option(
        None, "--source-dir", help="Folder of code to ship with the script."
    ),
    tuned: list[str] = typer.Option(
        [],
        "--range",
        help="A tuned hyperparameter (repeatable): NAME=LOW:HIGH[:log|linear] (integer when both bounds are "
        "whole numbers) or NAME=V1,V2,... (categorical).",
    ),
    objective: str | None = typer.Option(
        None, "--objective", help="METRIC:max or METRIC:min; METRIC needs a --metric definition."
    ),
    max_trials: int = typer.Option(10, "--max-trials", help="Trials in all."),
    parallel: int = typer.Option(1, "--parallel", help="Trials running at once (at most --max-trials)."),
    early_stopping: bool = typer.Option(
        True,
        "--early-stopping/--no-early-stopping",
        help="Stop trials that fall behind (locally: Optuna's median pruner; remote: early stopping Auto).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the local search (the same trials again)."),
    hp: list[str] = typer.Option(
        [], "--hp", help="Fixed hyperparameter KEY=VALUE (repeatable; JSON values)."
    ),
    channel: list[str] = typer.Option([], "--channel", help="Input channel NAME=PATH (repeatable)."),
    env: list[str] = typer.Option(
        [], "--env", help="Environment variable KEY=VALUE of the script (repeatable)."
    ),
    metric: list[str] = typer.Option([], "--metric", help="Metric NAME=REGEX, first group is the value."),
    job_name: str | None = typer.Option(
        None,
        "--job-name",
        help="Base of the trials' names (remote: the tuning job's, at most 32 characters).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout."),
    remote: bool = typer.Option(
        False, "--remote", help="One SageMaker hyperparameter tuning job.", rich_help_panel="Remote"
    ),
    instance_type: str | None = typer.Option(
        None, "--instance-type", help="Each trial's instance type.", rich_help_panel="Remote"
    ),
    instance_count: int = typer.Option(
        1, "--instance-count", help="Hosts per trial.", rich_help_panel="Remote"
    ),
    spot: bool | None = typer.Option(
        None, "--spot/--on-demand", help="Managed spot (default) or on-demand.", rich_help_panel="Remote"
    ),
    max_run: int | None = typer.Option(
        None, "--max-run", help="Max run time of a trial, seconds.", rich_help_panel="Remote"
    ),
    role: str | None = typer.Option(None, "--role", help="Execution role ARN.", rich_help_panel="Remote"),
    bucket: str | None = typer.Option(None, "--bucket", help="S3 bucket.", rich_help_panel="Remote"),
    region: str | None = typer.Option(None, "--region", help="AWS region.", rich_help_panel="Remote"),
    stack: str | None = typer.Option(
        None, "--stack", "-s", help="Stack whose outputs to use.", rich_help_panel="Remote"
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Follow the tuning job until it ends.", rich_help_panel="Remote"
    ),
    download: bool = typer.Option(
        False,
        "--download",
        help="Download the best trial's model.tar.gz into its run folder.",
        rich_help_panel="Remote",
    ),
    max_cost: float | None = typer.Option(
        None,
        "--max-cost",
        help="Budget in USD: refuse a tuning job whose trials may cost more in all.",
        rich_help_panel="Remote",
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Launch even above the budget.", rich_help_panel="Remote"
    ),
) -> None:
    """Tune a training script's hyperparameters: trials run as `aiops train` runs them (locally,
    each an ordinary run) or, with --remote, as one SageMaker hyperparameter tuning job."""
    from pathlib import Path

    from aiops.cli.train import _parse_pairs
    from aiops.training import jobs
    from aiops.training.job_inputs import parse_hyperparameter_value
    from aiops.training.metrics import parse_metric_option
    from aiops.training.tune import best_trial, tuning_spec

    from aiops.runs import RunStore, job_name_from_base
    from aiops.settings import get_settings

    settings = get_settings()
    store = RunStore(settings.runs_dir)
    definitions = [parse_metric_option(m) for m in metric]
    spec = tuning_spec(
        tuned, objective, max_trials=max_trials, parallel=parallel, metric_definitions=definitions
    )
    config = jobs.job_config(
        store,
        entry_point=entry_point,
        source_dir=source_dir,
        resume=None,
        hyperparameters=None,
        hp={k: parse_hyperparameter_value(v) for k, v in _parse_pairs(hp, "--hp", "epochs=10").items()},
        channels=_parse_pairs(channel, "--channel", "train=./data/train", unique=True),
        metric_definitions=definitions,
        instance_type=instance_type,
        nproc=None,
        job_name=None,
        default_instance_type=settings.train.instance_type,
        environment=_parse_pairs(env, "--env", "HF_HUB_OFFLINE=1", unique=True),
    )
    stem = Path(entry_point).stem.replace("_", "-")
    best: str | None
    if remote:
        from aiops.training import tune_remote

        options = jobs.LaunchOptions(
            wait=wait,
            instance_type=instance_type,
            instance_count=instance_count,
            spot=spot,
            max_run=max_run,
            role=role,
            bucket=bucket,
            region=region,
            stack=stack,
            max_cost=max_cost,
            confirmed=yes,
        )
        name = job_name or tune_remote.tuning_job_name(f"{stem}-tune")
        events = _TuneConsole(max_trials, to_stderr=True)
        try:
            result = tune_remote.launch(
                config,
                spec,
                store=store,
                settings=settings,
                options=options,
                events=events,
                name=name,
                early_stopping=early_stopping,
            )
        except KeyboardInterrupt:
            events.stop()
            events.console.print(
                f"\ndetached; the tuning job {name} keeps running (stop it in the SageMaker console "
                "or with aws sagemaker stop-hyper-parameter-tuning-job)."
            )
            raise typer.Exit(130) from None
        finally:
            events.stop()
        if isinstance(result, str):
            events.console.print(f"tuning job {result} is running; --wait follows it.")
            return
        if download:
            tune_remote.download_best(store, result)
        trials, best, status = result.trials, result.best, result.status
    else:
        from aiops.training import tune_local

        if (
            any(v is not None for v in (spot, max_run, role, bucket, stack, max_cost))
            or instance_count != 1
            or download
        ):
            from aiops.errors import UsageError

            raise UsageError("remote options (--spot, --max-run, --role, --bucket, ...) need --remote.")
        events = _TuneConsole(max_trials, to_stderr=True)
        try:
            trials = tune_local.tune(
                config,
                spec,
                store=store,
                settings=settings,
                events=events,
                base_name=job_name or job_name_from_base(f"{stem}-tune"),
                seed=seed,
                early_stopping=early_stopping,
            )
        except KeyboardInterrupt:
            events.stop()
            events.console.print("\ninterrupted: the running trials were stopped.")
            raise typer.Exit(130) from None
        finally:
            events.stop()
        found = best_trial(trials, spec.objective)
        best = found.job_name if found else None
        status = "Completed" if best else "Failed"
    if as_json:
        summary = {
            "status": status,
            "best": best,
            "objective": spec.objective.as_sagemaker(),
            "trials": [t.__dict__ for t in trials],
        }
        sys.stdout.write(json.dumps(summary, sort_keys=True, default=str) + "\n")
    else:
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True)
        _render(console, trials, best, spec.objective.metric)
        chosen = next((t for t in trials if t.job_name == best), None)
        if chosen is not None:
            console.print(
                f"best: {chosen.job_name} {spec.objective.metric}={chosen.value:.6g}; model {chosen.model}"
            )
        else:
            console.print(f"no trial completed with a value of {spec.objective.metric}.")
    if best is None:
        raise typer.Exit(1)


def register(app: typer.Typer, *, panel: str) -> None:
    app.command("tune", rich_help_panel=panel)(tune)
