"""Remote training: the same job as `aiops train`, as a SageMaker managed training job.

This module launches and follows a job (`launch`, `follow`, `download_model`) and is the
SageMaker backend of `training.backends` (`SageMakerBackend`). The request is built in
`remote_request`, the job's life on SageMaker (create once, Pending, describe, stop) is
`remote_jobs`', its logs and metrics are `remote_logs`'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiops.training import jobs, remote_jobs, remote_logs, remote_request
from aiops.training.capacity import CapacityRefused
from aiops.training.jobs import JobConfig, JobEvents, LaunchOptions, LaunchResult, NullEvents, PreparedJob
from aiops.training.remote_jobs import NO_RETRY, NOT_CREATED, PENDING, aws_call, create_once
from aiops.training.remote_logs import LogFollower, LogSink
from aiops.training.remote_request import (
    RemoteOptions,
    apply_defaults,
    build_request,
    check_budget,
    check_remote_debug,
    check_secret_grants,
    client_token,
    idle_cost,
    resolve_options,
)

from aiops.errors import AiopsError, UsageError
from aiops.runs import (
    STATUS_COMPLETED,
    STATUS_IN_PROGRESS,
    TERMINAL,
    CodeBundle,
    RunConfig,
    RunRecord,
    RunStore,
)

# ---------------------------------------------------------------------------------------------
# Following


def wait(
    sm: Any,
    logs: Any,
    job_name: str,
    sink: LogSink,
    *,
    poll_seconds: float = 5.0,
    silence_warning_seconds: float = 300.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Show status transitions and every host's log until the job ends; return its description."""
    follower = LogFollower(logs, job_name)
    last_status: tuple[str, str] | None = None
    last_output = clock()
    warned_at = 0.0
    while True:
        description = sm.describe_training_job(TrainingJobName=job_name)
        status = (description["TrainingJobStatus"], description.get("SecondaryStatus", ""))
        if status != last_status:
            sink.status(*status)
            last_status = status
        events = follower.poll()
        for stream, message in events:
            sink.log(stream, message)
        now = clock()
        if events:
            last_output = now
        elif now - last_output >= silence_warning_seconds and now - warned_at >= silence_warning_seconds:
            sink.silent(now - last_output, "/".join(s for s in status if s))
            warned_at = now
        if status[0] in TERMINAL:
            for stream, message in follower.poll():  # the last lines land just after the end
                sink.log(stream, message)
            return description
        sleep(poll_seconds)


def follow(
    job_name: str,
    region: str,
    sink: LogSink,
    *,
    silence_warning_seconds: float = 300.0,
    poll_seconds: float = 5.0,
) -> dict[str, Any]:
    from aiops import aws

    sm, logs = aws.client("sagemaker", region), aws.client("logs", region)
    return aws_call(
        f"following {job_name}",
        lambda: wait(
            sm,
            logs,
            job_name,
            sink,
            poll_seconds=poll_seconds,
            silence_warning_seconds=silence_warning_seconds,
        ),
    )


def download(s3: Any, uri: str, dest: Path) -> Path:
    bucket, _, key = uri[len("s3://") :].partition("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, key, str(dest))
    return dest


def download_model(record: RunRecord, dest: Path) -> Path:
    from aiops import aws

    uri = record.artifacts.model_s3
    if not uri:
        raise AiopsError(f"{record.job_name} has no model artifact (status {record.status}).")
    s3 = aws.client("s3", record.region)
    return aws_call(f"downloading {uri}", lambda: download(s3, uri, dest))


# ---------------------------------------------------------------------------------------------
# The whole launch, as `aiops train --remote` runs it


@dataclass(frozen=True)
class Staged:
    """What a submission bundled and uploaded: every attempt of a capacity-aware launch reuses it."""

    code: Any  # bundle.Bundle
    code_upload: Any  # uploads.Upload of the bundle
    channel_uris: dict[str, str]
    uploaded_bytes: int


def launch(
    job: PreparedJob,
    options: RemoteOptions,
    *,
    store: RunStore,
    cache_dir: Path,
    events: JobEvents | None = None,
    max_cost: float | None = None,
    confirmed: bool = False,
) -> RunRecord:
    """Validate, show the cost, bundle, upload what is new, create the job once, record it locally."""
    return submit(
        job, options, store=store, cache_dir=cache_dir, events=events, max_cost=max_cost, confirmed=confirmed
    )[0]


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
    """`launch`, returning what was uploaded too; with `staged` (an earlier attempt's uploads), the
    same code and channels are submitted again without bundling or uploading anything.

    `job` comes from `jobs.prepare` with `SageMakerBackend.target`. The estimate is shown
    (`events.estimate`) and checked against `max_cost` after validation and before anything is
    uploaded (UsageError over the budget unless `confirmed`).

    The local record is saved as Pending (with the request and its client token) before the first
    CreateTrainingJob: if the create times out and the describe after it fails too, the record is
    left Pending and `aiops jobs describe/list` resolve it (`resolve_pending`) rather than anyone
    launching a second job.
    """
    from aiops.training import bundle, cluster, images, uploads

    from aiops import aws
    from aiops.pricing import estimate_training_job
    from aiops.s3objects import UploadBatch

    events = events or NullEvents()
    remote_request.validate(options, aws.training_instance_types())
    processes = cluster.plan_processes(
        job.distribution,
        options.instance_type,
        options.instance_count,
        job.config.nproc,
        entry_point=job.entry_point,
        framework_version=options.framework_version,
        image_uri=options.image_uri,
    )
    estimate = estimate_training_job(
        options.instance_type, options.instance_count, options.max_run, options.region
    )
    idle = idle_cost(estimate, options.keep_alive)
    events.estimate(
        estimate,
        spot=options.spot,
        instance_count=options.instance_count,
        instance_type=options.instance_type,
        max_run=options.max_run,
        keep_alive=options.keep_alive,
        idle_cost=idle,
    )
    warning = check_budget(
        estimate, spot=options.spot, max_cost=max_cost, confirmed=confirmed, extra=idle or 0.0
    )
    if warning:
        events.warning(warning)
    code = (
        staged.code
        if staged
        else bundle.build(job.code_source, job.entry_point, selection=job.code_selection)
    )
    image_uri = options.image_uri or images.training_image_uri(
        options.framework,
        region=options.region,
        version=options.framework_version,
        py_version=options.py_version,
        instance_type=options.instance_type,
        cache_dir=cache_dir,
    )
    folder = store.create(job.job_name)  # refuses a name already used here, before any upload
    record = RunRecord(
        job_name=job.job_name,
        remote=True,
        region=options.region,
        stack=options.stack,
        status=PENDING,
        created_at=time.time(),
        run_dir=str(folder.root),
        entry_point=job.entry_point,
        hyperparameters=dict(job.config.hyperparameters),
        config=RunConfig(
            entry_point=job.entry_point,
            source_dir=str(job.code_source),
            instance_type=options.instance_type,
            instance_count=options.instance_count,
            spot=options.spot,
            network_isolation=options.network_isolation,
            vpc=bool(options.subnets),
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

    def upload() -> tuple[Any, dict[str, str], int]:
        # one batch for the whole submission: the bundle and every channel share its request bound
        # and its progress line; a channel's files start while the next channel is being hashed
        s3 = aws.client("s3", options.region)
        bucket = options.bucket
        assert bucket, "remote_request.validate refuses a submission without a bucket"
        with UploadBatch(s3, bucket, kms_key=options.kms_key, progress=events.upload) as batch:
            code_upload = uploads.upload_bundle(s3, bucket, code.data, code.sha256, batch=batch)
            channel_uris: dict[str, str] = {}
            uploaded = code_upload.uploaded_bytes
            for name, path in job.channels.items():
                result = uploads.upload_channel(
                    s3,
                    bucket,
                    name,
                    path,
                    batch=batch,
                    selection=job.channel_selections.get(name),
                    follow_symlinks=job.config.follow_symlinks,
                )
                channel_uris[name] = result.uri
                uploaded += result.uploaded_bytes
        channel_uris.update(job.s3_channels)
        return code_upload, channel_uris, uploaded

    try:
        if staged is None:
            code_upload, channel_uris, uploaded = aws_call(f"uploading {job.job_name}", upload)
            staged = Staged(code, code_upload, channel_uris, uploaded)
        else:  # another attempt of the same submission: nothing new to send
            code_upload, channel_uris, uploaded = staged.code_upload, dict(staged.channel_uris), 0
    except BaseException as err:
        store.save(
            record.model_copy(deep=True).update(status=NOT_CREATED, failure_reason=f"upload failed: {err}")
        )
        raise
    request = build_request(
        job_name=job.job_name,
        entry_point=job.entry_point,
        hyperparameters=job.config.hyperparameters,
        channel_uris=channel_uris,
        submit_directory=code_upload.uri,
        image_uri=image_uri,
        options=options,
        nproc=processes.processes_per_host,
        metric_definitions=job.config.metric_definitions,
        input_modes=job.config.input_modes,
        channel_sharding=job.config.channel_sharding,
        distribution=job.distribution,
        environment=job.config.script_environment(),
    )
    record.config.channels = channel_uris  # type: ignore[union-attr]
    record.update(
        code_bundle=CodeBundle(uri=code_upload.uri, sha256=code.sha256, files=code.files, bytes=code.size),
        uploaded_bytes=uploaded,
        request=request,
        client_token=client_token(request),
    )
    store.save(record)  # Pending: from here on, a job may exist on SageMaker
    submitted = time.monotonic()
    try:
        outcome = aws_call(
            f"submitting {job.job_name}",
            lambda: _create_or_capacity(
                aws.client("sagemaker", options.region, retries=NO_RETRY),
                aws.client("sagemaker", options.region),
                request,
                f"submitting {job.job_name}",
            ),
        )
    except (UsageError, CapacityRefused) as err:  # refused (or the name is another job's): nothing runs
        store.save(record.model_copy(deep=True).update(status=NOT_CREATED, failure_reason=str(err)))
        if isinstance(err, CapacityRefused):
            err.staged = staged  # the next attempt submits the same uploads
        raise
    record.update(
        status=STATUS_IN_PROGRESS,
        create_outcome=outcome,
        accepted_seconds=round(time.monotonic() - submitted, 3),
    )
    store.save(record)
    return record, staged


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
        options, given = self.options, self.launch_options
        if options.instance_types == ["auto"]:
            self._auto_instance_types(options, given)
        config.instance_type = options.instance_type
        if given.model_params is not None:
            from aiops.gpufit import require_training_fit

            for instance_type in options.instance_types:
                fit = require_training_fit(
                    given.model_params,
                    instance_type,
                    instance_count=options.instance_count,
                    fsdp=given.fsdp,
                    region=options.region,
                )
                self.events.info(f"GPU fit: {fit.line()}")
        apply_defaults(options, self._stack_outputs, self.settings.aws)
        from aiops.training.images import huggingface_image_uri, resolve_framework

        options.framework = resolve_framework(
            config.framework, config.transformers_version, given.framework_version
        )
        if options.framework.huggingface:  # the image's PyTorch and Python, from the SDK's table
            options.framework_version = options.framework.pytorch_version or options.framework_version
            options.py_version = options.framework.py_version or options.py_version
            if not options.image_uri:  # an image for this type and region, before the estimate
                huggingface_image_uri(
                    options.framework, region=options.region, instance_type=options.instance_type
                )
        from aiops.gpufit import gpu_count

        target = jobs.Target(
            s3_channels=True,
            mpi=True,
            local_checkpoints=False,
            runs_here=False,
            instance_count=options.instance_count,
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

    def _auto_instance_types(self, options: RemoteOptions, given: LaunchOptions) -> None:
        """`--instance-type auto`: the GPU-fit check's cheapest types that hold the state, in order."""
        from aiops.gpufit import fitting_training_types

        if given.model_params is None:
            raise UsageError(
                "--instance-type auto picks the cheapest GPU types that hold the training state: "
                "give --model-params N (e.g. 7e9), or name the types."
            )
        found = fitting_training_types(
            given.model_params, instance_count=options.instance_count, fsdp=given.fsdp, region=options.region
        )
        if not found:
            raise UsageError(
                f"--instance-type auto: no GPU type of the table holds {given.model_params:g} parameters' "
                "training state" + ("" if given.fsdp else "; shard it with --fsdp")
            )
        options.instance_type, options.fallback_types = (
            found[0].instance_type,
            [s.instance_type for s in found[1:]],
        )
        listed = ", ".join(
            f"{s.instance_type} (${s.hourly:g}/h)" if s.hourly is not None else s.instance_type for s in found
        )
        self.events.info(f"instance types that fit, cheapest first: {listed}")

    def _check_fallback_types(self, job: PreparedJob, options: RemoteOptions) -> None:
        """Every type of the list must run this job (torch_distributed needs GPUs or Trainium), before
        anything is uploaded."""
        from aiops.training import cluster

        for instance_type in options.instance_types:
            try:
                cluster.plan_processes(
                    job.distribution,
                    instance_type,
                    options.instance_count,
                    job.config.nproc,
                    entry_point=job.entry_point,
                    framework_version=options.framework_version,
                    image_uri=options.image_uri,
                )
                if options.framework.huggingface and not options.image_uri:  # GPU types only
                    from aiops.training.images import huggingface_image_uri

                    huggingface_image_uri(
                        options.framework, region=options.region, instance_type=instance_type
                    )
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

        options, given, events = self.options, self.launch_options, self.events
        remote_request.validate(options, aws.training_instance_types())  # every type, before any upload
        types = options.instance_types
        budget = given.max_cost if given.max_cost is not None else self.settings.aws.max_cost
        max_attempts = capacity.check_max_attempts(given.max_attempts, types)
        staged: Staged | None = None
        attempts: list[capacity.Attempt] = []
        result: LaunchResult | None = None
        for number, instance_type in enumerate(types[:max_attempts], start=1):
            attempt_job = replace(job, job_name=capacity.attempt_name(job.job_name, number))
            attempt_options = replace(options, instance_type=instance_type, fallback_types=[])
            if number > 1:
                events.info(f"attempt {number} of {max_attempts}: {attempt_job.job_name} on {instance_type}")
            try:
                record, staged = submit(
                    attempt_job,
                    attempt_options,
                    store=self.store,
                    cache_dir=self.settings.home / "cache",
                    events=events,
                    max_cost=budget,
                    confirmed=given.confirmed,
                    staged=staged,
                )
            except capacity.CapacityRefused as err:
                staged = err.staged or staged
                refused = self.store.load(attempt_job.job_name)  # saved NotCreated, with its estimate
                attempts.append(
                    capacity.Attempt(
                        attempt_job.job_name,
                        instance_type,
                        "ResourceLimitExceeded",
                        str(err),
                        refused.estimated_max_cost_usd,
                    )
                )
                if number == max_attempts:
                    if len(types) > 1:
                        events.attempts(attempts)
                    raise
                events.warning(f"{err} Trying the next instance type.")
                continue
            result = self._follow(record, attempt_options)
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
            description = follow(
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
            archive = download_model(record, record.folder.model_archive)
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
