"""`aiops tune --remote`: one SageMaker hyperparameter tuning job with the ranges and objective of
`training.tune`, its training job definition made from the very CreateTrainingJob request
`aiops train --remote` sends (`remote_request.build_request`), followed like a training job: each
trial as it finishes (recorded in the run store as a remote run, so `aiops jobs metrics TRIAL`
works), then the best trial and its model.

The request equals what the SageMaker SDK's `HyperparameterTuner` sends for the same inputs
(tests/remote/test_tune_remote.py holds the SDK as its oracle).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from aiops.training import remote_jobs
from aiops.training.jobs import JobConfig, PreparedJob
from aiops.training.launch import LaunchOptions
from aiops.training.remote_jobs import aws_call
from aiops.training.remote_request import RemoteOptions, client_token
from aiops.training.tune import Trial, TuningSpec, first_values, static_hyperparameters

from aiops.errors import UsageError
from aiops.runs import RunConfig, RunRecord, RunStore
from aiops.stack import CLIENT_TOKEN_TAG

STRATEGY = "Bayesian"  # the SDK's default, and what Optuna's TPE is locally
TUNING_NAME_LIMIT = 32  # HyperParameterTuningJobName: 1-32 characters
TUNING_TERMINAL = ("Completed", "Failed", "Stopped")
# CreateTrainingJob fields a HyperParameterTrainingJobDefinition also has, copied as they are
_DEFINITION_FIELDS = (
    "RoleArn",
    "InputDataConfig",
    "VpcConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "Environment",
)


def tuning_job_name(base: str, *, now: float | None = None) -> str:
    """`<base>-YYMMDD-HHMMSS`, at most 32 characters (SageMaker's limit for a tuning job's name)."""
    now = time.time() if now is None else now
    stamp = time.strftime("%y%m%d-%H%M%S", time.gmtime(now))
    clean = re.sub(r"[^a-zA-Z0-9-]+", "-", base).strip("-") or "tune"
    return f"{clean[: TUNING_NAME_LIMIT - len(stamp) - 1].rstrip('-')}-{stamp}"


def validate_tuning_job_name(name: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}", name):
        raise UsageError(
            f"tuning job name {name!r} is not valid for SageMaker: use 1-32 letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. --job-name digits-tune)."
        )


def training_job_definition(training_request: Mapping[str, Any], spec: TuningSpec) -> dict[str, Any]:
    """The HyperParameterTrainingJobDefinition of a CreateTrainingJob request: the same image, role,
    channels, resources and environment; its hyperparameters static but for the tuned ones.

    Left out: the job's name, tags and CheckpointConfig (one checkpoint prefix shared by every trial
    would let one trial resume from another's checkpoint), and a channel's InputMode where it is the
    job's (File), and flags that are False: the SDK writes neither."""
    algorithm = training_request["AlgorithmSpecification"]
    definition: dict[str, Any] = {
        "StaticHyperParameters": static_hyperparameters(training_request["HyperParameters"], spec),
        "AlgorithmSpecification": {
            "TrainingImage": algorithm["TrainingImage"],
            "TrainingInputMode": algorithm["TrainingInputMode"],
            "MetricDefinitions": list(algorithm["MetricDefinitions"]),
        },
    }
    for key in _DEFINITION_FIELDS:
        if training_request.get(key) not in (None, False):  # False is the default: not sent, as the SDK
            definition[key] = training_request[key]
    if "InputDataConfig" in definition:
        definition["InputDataConfig"] = [
            {
                k: v
                for k, v in channel.items()
                if not (k == "InputMode" and v == algorithm["TrainingInputMode"])
            }
            for channel in definition["InputDataConfig"]
        ]
    return definition


def build_tuning_request(
    *,
    tuning_job_name: str,
    spec: TuningSpec,
    training_request: Mapping[str, Any],
    early_stopping: bool = True,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The CreateHyperParameterTuningJob request (pure: tests compare it with the SDK's)."""
    request: dict[str, Any] = {
        "HyperParameterTuningJobName": tuning_job_name,
        "HyperParameterTuningJobConfig": {
            "Strategy": STRATEGY,
            "HyperParameterTuningJobObjective": spec.objective.as_sagemaker(),
            "ResourceLimits": {
                "MaxNumberOfTrainingJobs": spec.max_trials,
                "MaxParallelTrainingJobs": spec.parallel,
            },
            "ParameterRanges": spec.parameter_ranges(),
            "TrainingJobEarlyStoppingType": "Auto" if early_stopping else "Off",
        },
        "TrainingJobDefinition": training_job_definition(training_request, spec),
        "Tags": [{"Key": k, "Value": v} for k, v in sorted({"managed-by": "aiops", **(tags or {})}.items())],
    }
    request["Tags"].append({"Key": CLIENT_TOKEN_TAG, "Value": client_token(request)})
    return request


# ---------------------------------------------------------------------------------------------
# Launch and follow


class TuneEvents(Protocol):
    def trial_started(self, trial: Trial) -> None: ...
    def trial_finished(self, trial: Trial, finished: int, total: int) -> None: ...


@dataclass
class TuningResult:
    name: str
    status: str
    trials: list[Trial]
    best: str | None  # the best trial's job name (SageMaker's BestTrainingJob)
    request: dict[str, Any]
    failure_reason: str | None = None


def check_cost(
    options: RemoteOptions, spec: TuningSpec, *, events: Any, max_cost: float | None, confirmed: bool
) -> None:
    """The worst case, every trial running its whole --max-run, shown and held to the budget
    (`remote_request.check_budget`: UsageError over it unless confirmed)."""
    from aiops.training.remote_request import check_budget

    from aiops.pricing import estimate_training_job

    count = options.compute.instance_count
    estimate = estimate_training_job(
        options.instance_type, count * spec.max_trials, options.max_run, options.region
    )
    if estimate.known:
        events.note(
            f"estimate: up to ${estimate.cost(spot=options.spot):,.2f} "
            f"({'spot' if options.spot else 'on-demand'}) for {spec.max_trials} trials x "
            f"{count} x {options.instance_type}, each at most {options.max_run / 3600:g} h"
        )
    warning = check_budget(estimate, spot=options.spot, max_cost=max_cost, confirmed=confirmed)
    if warning:
        events.warning(warning)


def stage(
    job: PreparedJob,
    options: RemoteOptions,
    spec: TuningSpec,
    *,
    cache_dir: Path,
    events: Any,
    max_cost: float | None = None,
    confirmed: bool = False,
) -> dict[str, Any]:
    """What `aiops train --remote` does before CreateTrainingJob, for a tuning job's trials: the
    checks, the estimate of every trial and the budget guard, the staging of code and channels
    (`staging.stage`), the image; returns the CreateTrainingJob request every trial is made from
    (named as the tuning job)."""
    from aiops.training import bundle, remote_request, staging

    from aiops import aws

    remote_request.validate(options, aws.training_instance_types())
    check_cost(options, spec, events=events, max_cost=max_cost, confirmed=confirmed)
    processes = staging.plan_processes(job, options)
    code = bundle.build(job.code_source, job.entry_point, selection=job.code_selection)
    image_uri = staging.image_uri(options, cache_dir)
    staged = staging.stage(job, code, options, events)
    return staging.job_request(job, staged, options, image_uri=image_uri, processes=processes)


def _value(summary: Mapping[str, Any]) -> float | None:
    metric = summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    value = metric.get("Value")
    return float(value) if value is not None else None


def _hyperparameters(summary: Mapping[str, Any]) -> dict[str, Any]:
    from aiops.training.job_inputs import parse_hyperparameter_value

    return {k: parse_hyperparameter_value(v) for k, v in (summary.get("TunedHyperParameters") or {}).items()}


def record_trial(
    store: RunStore, summary: Mapping[str, Any], request: Mapping[str, Any], region: str, stack: str | None
) -> RunRecord:
    """A finished trial as a remote run in the store (its description folded in), so `aiops jobs
    describe/logs/metrics TRIAL` work as for any remote job."""
    name = summary["TrainingJobName"]
    definition = request["TrainingJobDefinition"]
    created = summary.get("CreationTime")
    record = store.load(name) if store.exists(name) else None
    if record is None:
        folder = store.create(name)
        hyperparameters = _hyperparameters(summary)
        record = RunRecord(
            job_name=name,
            remote=True,
            region=region,
            stack=stack,
            status=summary.get("TrainingJobStatus"),
            created_at=created.timestamp() if isinstance(created, datetime) else time.time(),
            run_dir=str(folder.root),
            hyperparameters=hyperparameters,
            config=RunConfig(
                instance_type=definition["ResourceConfig"]["InstanceType"],
                instance_count=definition["ResourceConfig"]["InstanceCount"],
                spot=definition.get("EnableManagedSpotTraining", False),
            ),
            # what `jobs metrics` reads: the metric definitions and the number of hosts
            request={
                "TrainingJobName": name,
                "AlgorithmSpecification": definition["AlgorithmSpecification"],
                "ResourceConfig": definition["ResourceConfig"],
                "HyperParameters": {
                    **definition["StaticHyperParameters"],
                    **summary.get("TunedHyperParameters", {}),
                },
                "TuningJobName": request["HyperParameterTuningJobName"],
            },
            final_metrics={},
            artifacts={},  # set, so run.json keeps the model's URI the refresh adds
        )
    return remote_jobs.refresh(store, record, remote_jobs.describe(name, region))


def _trial(number: int, summary: Mapping[str, Any], record: RunRecord) -> Trial:
    return Trial(
        number,
        summary["TrainingJobName"],
        _hyperparameters(summary),
        summary.get("TrainingJobStatus", "Unknown"),
        value=_value(summary),
        run_dir=record.run_dir,
        model=record.artifacts.model_s3,
        failure_reason=summary.get("FailureReason"),
    )


def follow(
    name: str,
    request: Mapping[str, Any],
    *,
    store: RunStore,
    region: str,
    stack: str | None,
    events: TuneEvents,
    poll_seconds: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> TuningResult:
    """Poll the tuning job until it ends: each trial is recorded and reported as it finishes."""
    from aiops import aws

    sm = aws.client("sagemaker", region)
    total = request["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"]
    finished: dict[str, Trial] = {}
    order: dict[str, int] = {}

    def summaries() -> list[dict[str, Any]]:
        pages = sm.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(
            HyperParameterTuningJobName=name, SortBy="CreationTime", SortOrder="Ascending"
        )
        return [s for page in pages for s in page.get("TrainingJobSummaries", [])]

    while True:
        description = aws_call(
            f"describing {name}",
            lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
        )
        status = description["HyperParameterTuningJobStatus"]
        for summary in aws_call(f"listing the trials of {name}", summaries):
            trial_name = summary["TrainingJobName"]
            number = order.setdefault(trial_name, len(order) + 1)
            if trial_name in finished or summary.get("TrainingJobStatus") not in TUNING_TERMINAL:
                continue
            record = record_trial(store, summary, request, region, stack)
            finished[trial_name] = _trial(number, summary, record)
            events.trial_finished(finished[trial_name], len(finished), total)
        if status in TUNING_TERMINAL:
            best = (description.get("BestTrainingJob") or {}).get("TrainingJobName")
            trials = sorted(finished.values(), key=lambda t: t.number)
            return TuningResult(name, status, trials, best, dict(request), description.get("FailureReason"))
        sleep(poll_seconds)


def download_best(store: RunStore, result: TuningResult) -> str | None:
    """The best trial's model.tar.gz into its run folder (as `aiops train --remote --download`)."""
    from aiops.training.remote_jobs import download_model

    if result.best is None or not store.exists(result.best):
        return None
    record = store.load(result.best)
    path = download_model(record, record.folder.model_archive)
    record.artifacts.model = str(path)
    store.save(record)
    for trial in result.trials:
        if trial.job_name == result.best:
            trial.model = str(path)
    return str(path)


def launch(
    config: JobConfig,
    spec: TuningSpec,
    *,
    store: RunStore,
    settings: Any,
    options: LaunchOptions,
    events: Any,
    name: str,
    early_stopping: bool = True,
) -> TuningResult | str:
    """Check, upload, create the tuning job once; with `options.wait`, follow it to the end.
    Returns the result, or (without waiting) the tuning job's name."""
    from aiops.training.remote import SageMakerBackend

    from aiops import aws

    validate_tuning_job_name(name)
    backend = SageMakerBackend(store, settings, options, events)
    # the job at one point of the space: what every trial shares is checked and staged once
    probe = dataclasses.replace(
        config, hyperparameters={**config.hyperparameters, **first_values(spec)}, job_name=name
    )
    job = backend.prepare(probe)
    remote = backend.options
    budget = options.budget
    training_request = stage(
        job,
        remote,
        spec,
        cache_dir=settings.home / "cache",
        events=events,
        max_cost=budget.max_cost if budget.max_cost is not None else settings.aws.max_cost,
        confirmed=budget.confirmed,
    )
    request = build_tuning_request(
        tuning_job_name=name, spec=spec, training_request=training_request, early_stopping=early_stopping
    )
    events.close()
    sm = aws.client("sagemaker", remote.region)
    aws_call(f"submitting {name}", lambda: sm.create_hyper_parameter_tuning_job(**request))
    events.note(
        f"tuning job {name} accepted by SageMaker in {remote.region} "
        f"({spec.max_trials} trials, {spec.parallel} at a time)"
    )
    if not options.wait:
        return name
    return follow(
        name,
        request,
        store=store,
        region=remote.region,
        stack=remote.access.stack,
        events=events,
        poll_seconds=settings.aws.job_poll_seconds,
    )
