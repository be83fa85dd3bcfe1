"""`aiops tune` on this machine: trials are ordinary local runs (`training.local.run`, one run
folder each in the run store), searched by Optuna's TPE sampler (ask-and-tell, `parallel` runs at
a time), and a trial whose objective, as it streams from the log, falls behind the others' at the
same report is stopped (Optuna's median pruner): its run ends Stopped, `stopped_by` naming the tuner.

The policy (ranges, objective, limits, the best trial) is `training.tune`'s; Optuna is imported
only here, lazily (the `tune` extra).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from aiops.training import jobs, local
from aiops.training.job_inputs import parse_hyperparameter_value
from aiops.training.jobs import JobConfig, PreparedJob
from aiops.training.tune import CATEGORICAL, INTEGER, ParameterRange, Trial, TuningSpec, first_values

from aiops.errors import UsageError
from aiops.extras import require_extra
from aiops.run_processes import script_alive
from aiops.runs import STATUS_COMPLETED, STATUS_STOPPED, RunRecord, RunStore

PRUNED = "Pruned"  # a trial the tuner stopped early (its run is Stopped, stopped_by PRUNED_BY)
PRUNED_BY = "tuner (pruned: behind the median of earlier trials)"
INTERRUPTED_BY = "tuner (interrupted)"
# The median pruner waits for this many finished trials, and never stops a trial at its first report.
PRUNER_STARTUP_TRIALS = 3
PRUNER_WARMUP_REPORTS = 1


class TuneEvents(Protocol):
    def trial_started(self, trial: Trial) -> None: ...
    def trial_finished(self, trial: Trial, finished: int, total: int) -> None: ...


def _optuna() -> Any:
    try:
        import optuna
    except ModuleNotFoundError:
        raise require_extra("tune", "aiops tune", missing="optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def suggest(trial: Any, r: ParameterRange) -> Any:
    """The range's value for an Optuna trial, typed as the script would get it from SageMaker
    (a categorical value is parsed as `--hp` parses it: "32" is 32)."""
    if r.kind == CATEGORICAL:
        return parse_hyperparameter_value(trial.suggest_categorical(r.name, list(r.values)))
    if r.kind == INTEGER:
        return trial.suggest_int(r.name, int(r.low), int(r.high), log=r.log)
    return trial.suggest_float(r.name, r.low, r.high, log=r.log)


def trial_names(base: str, count: int) -> list[str]:
    """`<base>-001`, `<base>-002`, ...: `base` is cut so every name stays a valid job name (63)."""
    width = max(3, len(str(count)))
    base = base[: 63 - width - 1].rstrip("-")
    return [f"{base}-{n:0{width}d}" for n in range(1, count + 1)]


class _TrialReporter:
    """A trial's run events: the objective's values go to Optuna as they stream, and a pruned or
    interrupted trial is stopped through `local.run`'s `stop_when`."""

    def __init__(self, trial: Any, metric: str, interrupted: threading.Event) -> None:
        self.trial = trial
        self.objective = metric
        self.interrupted = interrupted
        self.reports = 0
        self.pruned = False
        self.record: RunRecord | None = None

    def started(self, record: RunRecord) -> None:
        self.record = record

    def metric(self, sample: Any, latest: Mapping[str, float]) -> None:
        if sample.name != self.objective or self.pruned:
            return
        self.trial.report(sample.value, self.reports)
        self.reports += 1
        self.pruned = bool(self.trial.should_prune())

    def stop_when(self) -> str | None:
        if self.interrupted.is_set():
            return INTERRUPTED_BY
        return PRUNED_BY if self.pruned else None

    def __getattr__(self, name: str) -> Callable[..., None]:  # the rest of jobs.JobEvents: nothing to do
        return lambda *args, **kwargs: None


def tune(
    config: JobConfig,
    spec: TuningSpec,
    *,
    store: RunStore,
    settings: Any,
    events: TuneEvents,
    base_name: str,
    seed: int | None = None,
    early_stopping: bool = True,
    pruner: Any = None,
) -> list[Trial]:
    """Run `spec.max_trials` trials of the job, `spec.parallel` at a time; every trial, in order.

    Everything is checked before the first trial starts: the job itself (`jobs.prepare` at one point
    of the space) and every trial's name (none may exist in the store)."""
    optuna = _optuna()
    names = trial_names(base_name, spec.max_trials)
    for name in names:
        if store.exists(name):
            raise UsageError(f"a run named {name!r} already exists; choose another --job-name.")
    check = dataclasses.replace(
        config, hyperparameters={**config.hyperparameters, **first_values(spec)}, job_name=None
    )
    jobs.prepare(check, store, local.LocalBackend.target)

    if pruner is None:
        pruner = (
            optuna.pruners.MedianPruner(
                n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_REPORTS
            )
            if early_stopping
            else optuna.pruners.NopPruner()
        )
    study = optuna.create_study(
        direction="maximize" if spec.objective.maximize else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=spec.parallel > 1),
        pruner=pruner,
    )
    lock = threading.Lock()
    interrupted = threading.Event()
    running: dict[str, _TrialReporter] = {}
    train = settings.train

    def run_trial(number: int) -> Trial:
        with lock:
            asked = study.ask()
            values = {r.name: suggest(asked, r) for r in spec.ranges}
        name = names[number - 1]
        trial_config = dataclasses.replace(
            config,
            hyperparameters={**config.hyperparameters, **values},
            job_name=name,
            channels=dict(config.channels),
        )
        trial = Trial(number, name, values, "InProgress")
        reporter = _TrialReporter(asked, spec.objective.metric, interrupted)
        try:
            job: PreparedJob = jobs.prepare(trial_config, store, local.LocalBackend.target)
            running[name] = reporter
            events.trial_started(trial)
            record = local.run(
                job,
                store,
                stop_grace_seconds=train.stop_grace_seconds,
                link_channels=train.link_channels,
                region=settings.aws.region,
                log_tail_lines=train.log_tail_lines,
                reporter=reporter,
                stop_when=reporter.stop_when,
            )
        except BaseException:
            with lock:
                study.tell(asked, state=optuna.trial.TrialState.FAIL)
            raise
        finally:
            running.pop(name, None)
        value = record.final_metrics.get(spec.objective.metric)
        status = record.status or "Failed"
        if status == STATUS_STOPPED and record.stopped_by == PRUNED_BY:
            status = PRUNED
        with lock:
            if status == STATUS_COMPLETED and value is not None:
                study.tell(asked, value)
            elif status == PRUNED:
                study.tell(asked, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(asked, state=optuna.trial.TrialState.FAIL)
        return dataclasses.replace(
            trial,
            status=status,
            value=value,
            run_dir=record.run_dir,
            model=record.artifacts.model,
            failure_reason=record.failure_reason,
        )

    trials: dict[int, Trial] = {}
    with ThreadPoolExecutor(max_workers=spec.parallel, thread_name_prefix="trial") as pool:
        pending: dict[Future[Trial], int] = {}
        queued = iter(range(1, spec.max_trials + 1))
        try:
            for number in queued:  # start `parallel` trials; each one that ends starts the next
                pending[pool.submit(run_trial, number)] = number
                if len(pending) >= spec.parallel:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    pending.pop(future)
                    trial = future.result()
                    trials[trial.number] = trial
                    events.trial_finished(trial, len(trials), spec.max_trials)
                    following = next(queued, None)
                    if following is not None and not interrupted.is_set():
                        pending[pool.submit(run_trial, following)] = following
        except KeyboardInterrupt:
            interrupted.set()
            _stop_running(running, store)
            wait(pending)
            raise
    return [trials[n] for n in sorted(trials)]


def _stop_running(running: Mapping[str, _TrialReporter], store: RunStore) -> None:
    """Ctrl-C: SIGTERM to every running trial's script (each run then ends Stopped)."""
    for name, reporter in list(running.items()):
        record = reporter.record
        if record is not None and record.script_pid and script_alive(record, store.folder(name)):
            try:
                os.killpg(int(record.script_pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
