"""Remote training: the same job as `aiops train`, as a SageMaker managed training job.

This module submits a job (`submit`: validate, guard the cost, stage, record it Pending,
create it once) and is the SageMaker backend of `training.backends` (`SageMakerBackend`, with the
capacity-aware loop over a list of instance types). The request is built in `remote_request`, the
uploads are `staging`'s, the job's life on SageMaker (create once, Pending, describe, stop,
download) is `remote_jobs`', its logs, metrics and following to the end are `remote_logs`'.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiops.training import jobs, remote_jobs, remote_logs, remote_request, staging
from aiops.training.capacity import CapacityRefused
from aiops.training.jobs import JobConfig, JobEvents, LaunchResult, NullEvents, PreparedJob
from aiops.training.launch import GpuFit, LaunchOptions
from aiops.training.remote_jobs import NO_RETRY, NOT_CREATED, PENDING, aws_call, create_once
from aiops.training.remote_request import (
    RemoteOptions,
    apply_defaults,
    check_budget,
    check_remote_debug,
    check_secret_grants,
    client_token,
    idle_cost,
    resolve_options,
)
from aiops.training.staging import Staged

from aiops.errors import AiopsError, UsageError
from aiops.runs import (
    STATUS_COMPLETED,
    STATUS_IN_PROGRESS,
    CodeBundle,
    RunConfig,
    RunRecord,
    RunStore,
)

# ---------------------------------------------------------------------------------------------
# The whole launch, as `aiops train --remote` runs it


def submit(
    job: PreparedJob,
    options: RemoteOptions,
    *,
    store: RunStore,
    cache_dir: Path,
    events: JobEvents | None = None,
    max_cost: float | None = None,
    confirmed: bool = False,
    staged: Staged | None = None,
) -> tuple[RunRecord, Staged]:
    """Validate, show the cost, bundle, upload what is new, create the job once, record it locally;
    returns the record and what was staged. With `staged` (an earlier attempt's uploads), the same
    code and channels are submitted again without bundling or uploading anything.

    `job` comes from `jobs.prepare` with `SageMakerBackend.target`. The estimate is shown
    (`events.estimate`) and checked against `max_cost` after validation and before anything is
    uploaded (UsageError over the budget unless `confirmed`).

    The local record is saved as Pending (with the request and its client token) before the first
    CreateTrainingJob: if the create times out and the describe after it fails too, the record is
    left Pending and `aiops jobs describe/list` resolve it (`resolve_pending`) rather than anyone
    launching a second job.
    """
    from aiops.training import bundle

    from aiops import aws

    events = events or NullEvents()
    remote_request.validate(options, aws.training_instance_types())
    processes = staging.plan_processes(job, options)
    estimate, idle = _guard_cost(options, events, max_cost=max_cost, confirmed=confirmed)
    code = (
        staged.code
        if staged
        else bundle.build(job.code_source, job.entry_point, selection=job.code_selection)
    )
    image_uri = staging.image_uri(options, cache_dir)
    folder = store.create(job.job_name)  # refuses a name already used here, before any upload
    record = _pending_record(job, options, str(folder.root), processes, code, estimate, idle)
    try:
        if staged is None:
            staged = staging.stage(job, code, options, events)
            uploaded = staged.uploaded_bytes
        else:  # another attempt of the same submission: nothing new to send
            uploaded = 0
    except BaseException as err:
        store.save(
            record.model_copy(deep=True).update(status=NOT_CREATED, failure_reason=f"upload failed: {err}")
        )
        raise
    request = staging.job_request(job, staged, options, image_uri=image_uri, processes=processes)
    record.config.channels = dict(staged.channel_uris)  # type: ignore[union-attr]
    record.update(
        code_bundle=CodeBundle(
            uri=staged.code_upload.uri, sha256=code.sha256, files=code.files, bytes=code.size
        ),
        uploaded_bytes=uploaded,
        request=request,
        client_token=client_token(request),
    )
    return _create(record, request, options, store=store, staged=staged), staged


def _guard_cost(
    options: RemoteOptions, events: JobEvents, *, max_cost: float | None, confirmed: bool
) -> tuple[Any, float | None]:
    """The job's worst-case estimate (and its warm pool's idle cost), shown and held to the budget."""
    from aiops.pricing import estimate_training_job

    compute = options.compute
    estimate = estimate_training_job(
        options.instance_type, compute.instance_count, options.max_run, options.region
    )
    idle = idle_cost(estimate, compute.keep_alive_period_in_seconds)
    events.estimate(
        estimate,
        spot=options.spot,
        instance_count=compute.instance_count,
        instance_type=options.instance_type,
        max_run=options.max_run,
        keep_alive=compute.keep_alive_period_in_seconds,
        idle_cost=idle,
    )
    warning = check_budget(
        estimate, spot=options.spot, max_cost=max_cost, confirmed=confirmed, extra=idle or 0.0
    )
    if warning:
        events.warning(warning)
    return estimate, idle


def _pending_record(
    job: PreparedJob,
    options: RemoteOptions,
    run_dir: str,
    processes: Any,
    code: Any,
    estimate: Any,
    idle: float | None,
) -> RunRecord:
    """The record of a job about to be submitted (Pending), before anything is uploaded."""
    return RunRecord(
        job_name=job.job_name,
        remote=True,
        region=options.region,
        stack=options.access.stack,
        status=PENDING,
        created_at=time.time(),
        run_dir=run_dir,
        entry_point=job.entry_point,
        hyperparameters=dict(job.config.hyperparameters),
        config=RunConfig(
            entry_point=job.entry_point,
            source_dir=str(job.code_source),
            instance_type=options.instance_type,
            instance_count=options.compute.instance_count,
            spot=options.spot,
            network_isolation=options.networking.enable_network_isolation,
            vpc=bool(options.networking.subnets),
            processes_per_host=processes.processes_per_host,
            world_size=processes.world_size,
            processes=processes.line(),
            environment=dict(job.config.environment),
            secrets=dict(job.config.secrets),
            **job.config.to_record().model_dump(
                include={"framework", "transformers_version"}, exclude_unset=True
            ),
        ),
        large_files=code.large_files,
        estimated_max_cost_usd=estimate.cost(spot=options.spot),
        **({"estimated_idle_cost_usd": idle} if idle is not None else {}),
        final_metrics={},
        artifacts={},
    )


def _create(
    record: RunRecord, request: dict[str, Any], options: RemoteOptions, *, store: RunStore, staged: Staged
) -> RunRecord:
    """Save the record Pending, create the job once; a refusal leaves it NotCreated (a capacity one
    carries `staged`, so the next attempt submits the same uploads)."""
    from aiops import aws

    store.save(record)  # Pending: from here on, a job may exist on SageMaker
    action = f"submitting {record.job_name}"
    submitted = time.monotonic()
    try:
        outcome = aws_call(
            action,
            lambda: _create_or_capacity(
                aws.client("sagemaker", options.region, retries=NO_RETRY),
                aws.client("sagemaker", options.region),
                request,
                action,
            ),
        )
    except (UsageError, CapacityRefused) as err:  # refused (or the name is another job's): nothing runs
        store.save(record.model_copy(deep=True).update(status=NOT_CREATED, failure_reason=str(err)))
        if isinstance(err, CapacityRefused):
            err.staged = staged
        raise
    record.update(
        status=STATUS_IN_PROGRESS,
        create_outcome=outcome,
        accepted_seconds=round(time.monotonic() - submitted, 3),
    )
    store.save(record)
    return record


def _create_or_capacity(
    create_client: Any, describe_client: Any, request: dict[str, Any], action: str
) -> str:
    """`create_once`; a ResourceLimitExceeded refusal (no capacity or quota for the type) becomes
    `CapacityRefused`, which a capacity-aware launch answers with the next type."""
    from botocore.exceptions import ClientError

    from aiops.aws import describe_aws_error, error_code

    try:
        return create_once(create_client, describe_client, request)
    except ClientError as err:
        if error_code(err) == "ResourceLimitExceeded":
            raise CapacityRefused(str(describe_aws_error(err, action=action))) from None
        raise


def may_keep_pool(record: RunRecord) -> bool:
    """A job created with KeepAlivePeriodInSeconds whose pool was not last seen gone (Terminated, or
    Reused: moved to the next job's record)."""
    keep_alive = ((record.request or {}).get("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds")
    if not keep_alive or record.status == NOT_CREATED:
        return False
    pool = record.remote_summary.warm_pool_status if record.remote_summary else None
    return pool not in ("Terminated", "Reused")


# ---------------------------------------------------------------------------------------------
# The backend


class SageMakerBackend:
    """`Mode.SAGEMAKER_TRAINING_JOB`: the job runs as a SageMaker managed training job; its record
    in the run store is refreshed from DescribeTrainingJob."""

    def __init__(
        self,
        store: RunStore,
        settings: Any,
        options: LaunchOptions | None = None,
        events: JobEvents | None = None,
    ) -> None:
        self.store, self.settings = store, settings
        self.launch_options = options or LaunchOptions()
        self.events = events or NullEvents()
        self._options: RemoteOptions | None = None
        self._stack_outputs: Any = None

    @property
    def options(self) -> RemoteOptions:
        if self._options is None:
            self._options, self._stack_outputs = resolve_options(self.launch_options, self.settings)
        return self._options

    def prepare(self, config: JobConfig) -> PreparedJob:
        options, fit = self.options, self.launch_options.gpu_fit
        if options.instance_types == ["auto"]:
            self._auto_instance_types(options, fit)
        config.instance_type = options.instance_type
        if fit.model_params is not None:
            from aiops.gpufit import require_training_fit

            for instance_type in options.instance_types:
                checked = require_training_fit(
                    fit.model_params,
                    instance_type,
                    instance_count=options.compute.instance_count,
                    fsdp=fit.fsdp,
                    region=options.region,
                )
                self.events.info(f"GPU fit: {checked.line()}")
        apply_defaults(options, self._stack_outputs, self.settings.aws)
        self._resolve_image(options, config)
        from aiops.gpufit import gpu_count

        target = jobs.Target(
            s3_channels=True,
            mpi=True,
            local_checkpoints=False,
            runs_here=False,
            instance_count=options.compute.instance_count,
            gpus_per_instance=gpu_count(options.instance_type),
        )
        prepared = jobs.prepare(config, self.store, target)
        from aiops.training import model_channel

        warnings = model_channel.prepare_remote(
            config.hyperparameters,
            config.input_modes,
            local=prepared.channels.get(model_channel.CHANNEL),
            s3_uri=prepared.s3_channels.get(model_channel.CHANNEL),
            region=options.region,
        )
        if options.fallback_types:
            self._check_fallback_types(prepared, options)
        grants = check_secret_grants(config.secrets, options, self._stack_outputs)
        debug = check_remote_debug(options, self._stack_outputs)
        for warning in [*prepared.warnings, *warnings, *grants, *debug]:
            self.events.warning(warning)
        return prepared

    def _resolve_image(self, options: RemoteOptions, config: JobConfig) -> None:
        """The image's framework; a Hugging Face image's PyTorch and Python come from the SDK's table,
        and its URI must exist for this type and region before the estimate."""
        from aiops.training.images import huggingface_image_uri, resolve_framework

        image = options.image
        framework = resolve_framework(
            config.framework, config.transformers_version, self.launch_options.image.framework_version
        )
        if framework.huggingface:
            image = replace(
                image,
                framework_version=framework.pytorch_version or image.framework_version,
                py_version=framework.py_version or image.py_version,
            )
            if not image.training_image:
                huggingface_image_uri(framework, region=options.region, instance_type=options.instance_type)
        options.image = replace(image, framework=framework)

    def _auto_instance_types(self, options: RemoteOptions, fit: GpuFit) -> None:
        """`--instance-type auto`: the GPU-fit check's cheapest types that hold the state, in order."""
        from aiops.gpufit import fitting_training_types

        if fit.model_params is None:
            raise UsageError(
                "--instance-type auto picks the cheapest GPU types that hold the training state: "
                "give --model-params N (e.g. 7e9), or name the types."
            )
        found = fitting_training_types(
            fit.model_params,
            instance_count=options.compute.instance_count,
            fsdp=fit.fsdp,
            region=options.region,
        )
        if not found:
            raise UsageError(
                f"--instance-type auto: no GPU type of the table holds {fit.model_params:g} parameters' "
                "training state" + ("" if fit.fsdp else "; shard it with --fsdp")
            )
        options.compute = replace(options.compute, instance_type=found[0].instance_type)
        options.fallback_types = [s.instance_type for s in found[1:]]
        listed = ", ".join(
            f"{s.instance_type} (${s.hourly:g}/h)" if s.hourly is not None else s.instance_type for s in found
        )
        self.events.info(f"instance types that fit, cheapest first: {listed}")

    def _check_fallback_types(self, job: PreparedJob, options: RemoteOptions) -> None:
        """Every type of the list must run this job (torch_distributed needs GPUs or Trainium), before
        anything is uploaded."""
        image = options.image
        for instance_type in options.instance_types:
            try:
                staging.plan_processes(job, options.on(instance_type))
                if image.framework.huggingface and not image.training_image:  # GPU types only
                    from aiops.training.images import huggingface_image_uri

                    huggingface_image_uri(image.framework, region=options.region, instance_type=instance_type)
            except UsageError as err:
                raise UsageError(f"--instance-type {instance_type} (in the fallback list): {err}") from None

    def launch(self, job: PreparedJob) -> LaunchResult:
        """Launch; with `wait`, follow status and logs to the end (Ctrl-C: `jobs.Detached`), then
        refresh the record and, with `download`, fetch model.tar.gz.

        With a list of instance types, a job refused for capacity (ResourceLimitExceeded at create)
        or failed for capacity (`capacity.is_capacity_failure`) is submitted again on the next type,
        with the same uploads and a new name (`capacity.attempt_name`); one job at a time, at most
        `--max-attempts`; `events.attempts` gets the table at the end."""
        from aiops.training import capacity

        from aiops import aws

        options, events = self.options, self.events
        remote_request.validate(options, aws.training_instance_types())  # every type, before any upload
        types = options.instance_types
        max_attempts = capacity.check_max_attempts(self.launch_options.max_attempts, types)
        staged: Staged | None = None
        attempts: list[capacity.Attempt] = []
        result: LaunchResult | None = None
        for number, instance_type in enumerate(types[:max_attempts], start=1):
            attempt_job = replace(job, job_name=capacity.attempt_name(job.job_name, number))
            if number > 1:
                events.info(f"attempt {number} of {max_attempts}: {attempt_job.job_name} on {instance_type}")
            try:
                record, staged = self._submit(attempt_job, options.on(instance_type), staged)
            except capacity.CapacityRefused as err:
                staged = err.staged or staged
                attempts.append(self._refused(attempt_job.job_name, instance_type, err))
                if number == max_attempts:
                    if len(types) > 1:
                        events.attempts(attempts)
                    raise
                events.warning(f"{err} Trying the next instance type.")
                continue
            result = self._follow(record, options.on(instance_type))
            record = result.record
            attempts.append(
                capacity.Attempt(
                    record.job_name,
                    instance_type,
                    record.status or "",
                    record.failure_reason or "",
                    record.estimated_max_cost_usd,
                )
            )
            if record.status == "Failed" and capacity.is_capacity_failure(record.failure_reason):
                if number < max_attempts:
                    events.warning(
                        f"{record.job_name} failed for capacity on {instance_type}; "
                        "trying the next instance type."
                    )
                    continue
            break
        if len(types) > 1:
            events.attempts(attempts)
        assert result is not None
        return result

    def _submit(
        self, job: PreparedJob, options: RemoteOptions, staged: Staged | None
    ) -> tuple[RunRecord, Staged]:
        """One attempt: `submit` under the budget (given, else the settings')."""
        budget = self.launch_options.budget
        return submit(
            job,
            options,
            store=self.store,
            cache_dir=self.settings.home / "cache",
            events=self.events,
            max_cost=budget.max_cost if budget.max_cost is not None else self.settings.aws.max_cost,
            confirmed=budget.confirmed,
            staged=staged,
        )

    def _refused(self, job_name: str, instance_type: str, err: Exception) -> Any:
        """An attempt refused for capacity, as a row of the attempts table (its estimate as saved)."""
        from aiops.training import capacity

        refused = self.store.load(job_name)  # saved NotCreated, with its estimate
        return capacity.Attempt(
            job_name, instance_type, "ResourceLimitExceeded", str(err), refused.estimated_max_cost_usd
        )

    def _follow(self, record: RunRecord, options: RemoteOptions) -> LaunchResult:
        given, events = self.launch_options, self.events
        for path, size in record.large_files:
            events.warning(
                f"{path} is {size / 1e6:.0f} MB; large files belong in a channel, "
                "not in the code bundle (add it to .aiopsignore)."
            )
        events.accepted(record)
        if not given.wait:
            return LaunchResult(record)
        try:
            description = remote_logs.follow(
                record.job_name,
                options.region,
                events,
                silence_warning_seconds=self.settings.aws.log_silence_warning_seconds,
                poll_seconds=self.settings.aws.job_poll_seconds,
            )
        except KeyboardInterrupt:
            raise jobs.Detached(record) from None
        record = remote_jobs.refresh(self.store, record, description)
        if given.download and record.status == STATUS_COMPLETED:
            archive = remote_jobs.download_model(record, record.folder.model_archive)
            record.artifacts.model = str(archive)
            self.store.save(record)
        return LaunchResult(record, exit_code=0 if record.status == STATUS_COMPLETED else 1, streamed=True)

    def refresh(self, record: RunRecord) -> RunRecord:
        """Settle a create an interruption left Pending (never relaunch it); a job that may still keep
        a warm pool (billed) is described again; anything else as is."""
        if record.status == PENDING:
            return remote_jobs.resolve_pending(self.store, record)
        if may_keep_pool(record):
            try:
                return self.describe(record)
            except AiopsError:  # offline or no credentials: the list shows what was last seen
                return record
        return record

    def describe(self, record: RunRecord) -> RunRecord:
        """The record, refreshed from DescribeTrainingJob."""
        if record.status == PENDING:
            return remote_jobs.resolve_pending(self.store, record)
        if record.status == NOT_CREATED:
            return record
        return remote_jobs.refresh(self.store, record, remote_jobs.describe(record.job_name, record.region))

    def logs(self, record: RunRecord) -> list[tuple[str | None, str]]:
        """Every host's CloudWatch stream, as (host stream, line)."""
        return [
            (stream.split("/", 1)[-1], message + "\n")
            for stream, message in remote_logs.logs_once(record.job_name, record.region)
        ]

    def metrics(self, record: RunRecord) -> dict[str, list[Any]]:
        return remote_logs.metric_series(record)

    def latest_metrics(self, record: RunRecord) -> dict[str, float]:
        return dict(record.final_metrics)

    def stop(self, record: RunRecord) -> str | None:
        remote_jobs.stop(record.job_name, record.region)
        return None
