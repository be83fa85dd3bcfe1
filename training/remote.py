"""Remote training: the same job as `aiops train`, as a SageMaker managed training job.

The request is what the PyTorch training container's toolkit reads (`sagemaker_program`,
`sagemaker_submit_directory` = a content-hashed `sourcedir.tar.gz`, `sagemaker_region`, the
torch_distributed keys), built by the same `contract` module the local runner uses, so a script
that works under `aiops train` gets the same environment and arguments on SageMaker.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from aiops.errors import AiopsError, ConfigError, UsageError
from aiops.stack import (
    CLIENT_TOKEN_TAG,
    LAYOUT,
    TRAINING_LOG_GROUP,
    TRAINING_METRICS_NAMESPACE,
    StackOutputs,
    check_region,
)
from aiops.training import contract
from aiops.training.metrics import MetricDefinition

LOG_GROUP = TRAINING_LOG_GROUP
CHECKPOINT_LOCAL_PATH = contract.DEFAULT_CHECKPOINT_DIR
PENDING = "Pending"  # the local record's status between "about to create" and SageMaker's answer
NOT_CREATED = "NotCreated"  # a pending record whose job SageMaker never got
TERMINAL = ("Completed", "Failed", "Stopped")
# Errors after which the create may or may not have reached SageMaker: describe before retrying.
RETRYABLE_CODES = {"ThrottlingException", "Throttling", "ThrottledException", "RequestThrottledException",
                   "TooManyRequestsException", "ServiceUnavailable", "InternalFailure", "InternalServerError",
                   "InternalError", "RequestTimeout", "RequestTimeoutException"}
# Create is never retried blindly by botocore: a timed-out create may have launched the job.
NO_RETRY = {"mode": "standard", "total_max_attempts": 1}


@dataclass
class RemoteOptions:
    instance_type: str
    region: str
    instance_count: int = 1
    spot: bool = True
    max_run: int = 86400
    max_wait: int | None = None
    volume_size: int = 30
    role: str | None = None
    bucket: str | None = None
    kms_key: str | None = None
    image_uri: str | None = None
    framework_version: str = "2.5"
    py_version: str = "py311"
    subnets: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)
    vpc: bool | None = None  # None: the stack's VPC when it has one; True: required; False: never
    network_isolation: bool = False
    stack: str = "dev"
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def effective_max_wait(self) -> int | None:
        if not self.spot:
            return None
        return self.max_wait if self.max_wait is not None else 2 * self.max_run


def apply_defaults(options: RemoteOptions, stack_outputs: StackOutputs | Mapping[str, Any],
                   settings_aws: Any) -> RemoteOptions:
    """Role, bucket, KMS key and network: given > the deployed stack's outputs > settings.

    `stack_outputs` are what `infra/program.py` exports (aiops.stack.StackOutputs). The VPC's
    subnets and security groups come from the stack only (`options.vpc` False: not used).
    """
    outputs = stack_outputs if isinstance(stack_outputs, StackOutputs) else StackOutputs.model_validate(stack_outputs)
    options.role = options.role or outputs.role_arn or settings_aws.role_arn
    options.bucket = options.bucket or outputs.bucket or settings_aws.bucket
    options.kms_key = options.kms_key or outputs.kms_key_arn or settings_aws.kms_key_arn
    if options.vpc is not False:
        if options.vpc:
            outputs.require("subnet_ids", "security_group_ids", stack=options.stack, needed_for="--vpc")
        options.subnets = options.subnets or list(outputs.subnet_ids)
        options.security_group_ids = options.security_group_ids or list(outputs.security_group_ids)
    else:
        options.subnets, options.security_group_ids = [], []
    return options


def _missing_output(stack: str, output: str, option: str, setting: str, what: str) -> ConfigError:
    return ConfigError(
        f"no {what}: stack {stack!r} has no output {output!r}; run 'aiops deploy --stack {stack}' "
        f"(or pass {option}, or set {setting})."
    )


def validate(options: RemoteOptions, valid_instance_types: frozenset[str]) -> None:
    """Everything about the job's resources that can be checked before a byte is uploaded (exit 2).

    Entry point, hyperparameters and channels were checked by `local.prepare(..., remote=True)`.
    """
    try:
        check_region(options.region, what="--region")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if options.instance_type not in valid_instance_types:
        close = sorted(t for t in valid_instance_types if t.startswith(options.instance_type.rsplit(".", 1)[0]))
        hint = f" (e.g. {', '.join(close[:4])})" if close else " (e.g. ml.g5.xlarge, ml.p4d.24xlarge)"
        raise UsageError(f"--instance-type {options.instance_type} is not a SageMaker training instance type{hint}.")
    if options.instance_count < 1:
        raise UsageError(f"--instance-count {options.instance_count}: needs at least 1.")
    if options.max_run < 1:
        raise UsageError(f"--max-run {options.max_run}: needs at least 1 second.")
    if options.spot and options.max_wait is not None and options.max_wait < options.max_run:
        raise UsageError(
            f"--max-wait {options.max_wait}s is shorter than --max-run {options.max_run}s; a spot job's wait "
            "includes its run time, so raise --max-wait or lower --max-run."
        )
    if not options.spot and options.max_wait is not None:
        raise UsageError("--max-wait only applies to spot jobs; drop it or use --spot.")
    if not options.role:
        raise _missing_output(options.stack, "roleArn", "--role ARN", "AIOPS_AWS__ROLE_ARN", "SageMaker execution role")
    if not options.bucket:
        raise _missing_output(options.stack, "bucket", "--bucket NAME", "AIOPS_AWS__BUCKET",
                              "S3 bucket for code and artifacts")
    if bool(options.subnets) != bool(options.security_group_ids):
        missing = "securityGroupIds" if options.subnets else "subnetIds"
        raise ConfigError(f"the job's VpcConfig needs both subnets and security groups: stack {options.stack!r} has "
                          f"no output {missing!r}; run 'aiops deploy --stack {options.stack}' with aiops:network set.")


def check_budget(estimate: Any, *, spot: bool, max_cost: float | None, confirmed: bool) -> str | None:
    """Refuse a launch whose worst-case cost is over the budget (unless confirmed).

    Returns a warning to show, or None. An unknown price never counts as zero: with a budget set,
    it refuses too, since the budget cannot be checked.
    """
    if max_cost is not None and max_cost <= 0:
        raise UsageError(f"--max-cost {max_cost:g}: the budget must be a positive number of USD.")
    if not estimate.known:
        warning = (f"no known price for {estimate.instance_type}: the job's cost cannot be estimated "
                   "(see aiops/data/prices.json).")
        if max_cost is not None and not confirmed:
            raise UsageError(f"{warning} A budget of ${max_cost:g} is set: pass --yes to launch anyway.")
        return warning
    cost = estimate.cost(spot=spot)
    if max_cost is not None and cost > max_cost and not confirmed:
        raise UsageError(
            f"this job may cost up to ${cost:,.2f}, over the budget of ${max_cost:,.2f} (--max-cost): lower "
            "--max-run or --instance-count, use --spot, or pass --yes to launch anyway."
        )
    return None


def build_request(
    *,
    job_name: str,
    entry_point: str,
    hyperparameters: Mapping[str, Any],
    channel_uris: Mapping[str, str],
    submit_directory: str,
    image_uri: str,
    options: RemoteOptions,
    nproc: int | None,
    metric_definitions: list[MetricDefinition],
    distribution: str = contract.DISTRIBUTION_NONE,
    input_modes: Mapping[str, str] | None = None,
    channel_sharding: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The CreateTrainingJob request (pure: tests assert it field by field).

    `input_modes` / `channel_sharding`: a channel's InputMode (File, FastFile: objects streamed on
    first read, Pipe: a FIFO per epoch) and S3DataDistributionType (ShardedByS3Key: each host gets
    a disjoint subset of the objects); File and FullyReplicated when not given."""
    input_modes, channel_sharding = input_modes or {}, channel_sharding or {}
    spec = contract.TrainingJobSpec(
        job_name=job_name,
        entry_point=entry_point,
        hyperparameters=hyperparameters,
        channels=tuple(channel_uris),
        submit_directory=submit_directory,
        region=options.region,
        instance_type=options.instance_type,
        processes_per_host=nproc,
        distribution=distribution,  # contract.resolve_distribution: none unless asked, as the SDK
    )
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": options.max_run}
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [d.as_sagemaker() for d in metric_definitions],
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "RoleArn": options.role,
        "HyperParameters": contract.hyperparameters_file(spec),
        "InputDataConfig": [
            {
                "ChannelName": name,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": channel_sharding.get(name, "FullyReplicated"),
                    }
                },
                "InputMode": input_modes.get(name, "File"),
            }
            for name, uri in channel_uris.items()
        ],
        "OutputDataConfig": {"S3OutputPath": LAYOUT.job_output_uri(options.bucket)},
        "ResourceConfig": {
            "InstanceType": options.instance_type,
            "InstanceCount": options.instance_count,
            "VolumeSizeInGB": options.volume_size,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": options.spot,
        "CheckpointConfig": {
            "S3Uri": LAYOUT.checkpoint_uri(options.bucket, job_name),
            "LocalPath": CHECKPOINT_LOCAL_PATH,
        },
        "Environment": {contract.CHECKPOINT_ENV: CHECKPOINT_LOCAL_PATH},
        "Tags": [{"Key": k, "Value": v} for k, v in sorted({"managed-by": "aiops", **options.tags}.items())],
    }
    if not request["InputDataConfig"]:
        del request["InputDataConfig"]  # optional, but an empty list is invalid
    if options.spot:
        stopping["MaxWaitTimeInSeconds"] = options.effective_max_wait  # type: ignore[assignment]
    if options.kms_key:
        request["OutputDataConfig"]["KmsKeyId"] = options.kms_key
        request["ResourceConfig"]["VolumeKmsKeyId"] = options.kms_key
    if options.instance_count > 1:
        request["EnableInterContainerTrafficEncryption"] = True
    if options.subnets:
        request["VpcConfig"] = {"Subnets": options.subnets, "SecurityGroupIds": options.security_group_ids}
    if options.network_isolation:
        # No network in the container: the toolkit cannot pip install requirements.txt, the script
        # cannot call out; channels and output still move (SageMaker does that, not the container).
        request["EnableNetworkIsolation"] = True
    request["Tags"].append({"Key": CLIENT_TOKEN_TAG, "Value": client_token(request)})
    return request


def client_token(request: Mapping[str, Any]) -> str:
    """The hash of the request (without its token tag): what makes an existing job of that name ours."""
    body = {k: v for k, v in request.items() if k != "Tags"}
    body["Tags"] = [t for t in request.get("Tags", []) if t["Key"] != CLIENT_TOKEN_TAG]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Talking to SageMaker


def _error_code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status_code(err: Exception) -> int:
    response = getattr(err, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def find_job(sm: Any, name: str) -> dict[str, Any] | None:
    """The job's description, or None when SageMaker has no job of that name."""
    from botocore.exceptions import ClientError

    try:
        return sm.describe_training_job(TrainingJobName=name)
    except ClientError as err:
        if _error_code(err) in ("ValidationException", "ResourceNotFound"):
            return None
        raise


def job_token(sm: Any, description: Mapping[str, Any]) -> str | None:
    """The job's aiops:client-token tag (None when it has none: not created by aiops)."""
    arn = description.get("TrainingJobArn")
    tags = description.get("Tags")
    if tags is None and arn:
        tags = sm.list_tags(ResourceArn=arn).get("Tags", [])
    return next((t["Value"] for t in tags or [] if t["Key"] == CLIENT_TOKEN_TAG), None)


def _adopt(sm: Any, request: Mapping[str, Any], description: Mapping[str, Any]) -> str:
    """"found" when the existing job carries this request's token; otherwise refuse it (exit 2)."""
    name = request["TrainingJobName"]
    token = next(t["Value"] for t in request["Tags"] if t["Key"] == CLIENT_TOKEN_TAG)
    if job_token(sm, description) == token:
        return "found"
    raise UsageError(
        f"a SageMaker training job named {name!r} already exists and was not created by this request "
        f"(its {CLIENT_TOKEN_TAG} tag differs); choose another --job-name."
    )


def create_once(create_client: Any, describe_client: Any, request: Mapping[str, Any], *, attempts: int = 5,
                sleep: Callable[[float], None] = time.sleep) -> str:
    """Create the job exactly once: after any ambiguous failure, look before trying again.

    Returns "created" or "found" (an earlier attempt that looked failed had created it: the job
    carries this request's client token). A job of that name without the token is never adopted.
    """
    from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

    name = request["TrainingJobName"]
    for attempt in range(attempts):
        try:
            create_client.create_training_job(**request)
            return "created"
        except ClientError as err:
            code = _error_code(err)
            if code == "ResourceInUse":
                found = find_job(describe_client, name)
                if found is not None:
                    return _adopt(describe_client, request, found)
            if code not in RETRYABLE_CODES and _status_code(err) < 500:
                raise
        except (ReadTimeoutError, ConnectionClosedError):
            pass
        found = find_job(describe_client, name)
        if found is not None:
            return _adopt(describe_client, request, found)
        if attempt + 1 < attempts:
            sleep(min(20.0, 0.5 * 2 ** attempt))
    raise AiopsError(f"CreateTrainingJob {name}: SageMaker kept failing after {attempts} attempts; try again later.")


class LogSink(Protocol):
    def status(self, status: str, secondary: str) -> None: ...
    def line(self, stream: str, message: str) -> None: ...
    def silent(self, seconds: float, status: str) -> None: ...


class LogFollower:
    """Follows every host's CloudWatch stream of a job (`<job>/algo-N-...`)."""

    def __init__(self, logs: Any, job_name: str) -> None:
        self.logs = logs
        self.job_name = job_name
        self._tokens: dict[str, str | None] = {}

    def poll(self) -> list[tuple[str, str]]:
        from botocore.exceptions import ClientError

        try:
            pages = self.logs.get_paginator("describe_log_streams").paginate(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{self.job_name}/")
            names = sorted(s["logStreamName"] for page in pages for s in page.get("logStreams", []))
        except ClientError as err:
            if _error_code(err) == "ResourceNotFoundException":
                return []  # the group appears with the first log line
            raise
        events: list[tuple[str, str]] = []
        for stream in names:  # every page of streams: every host (algo-1 ... algo-N)
            while True:
                kwargs: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
                token = self._tokens.get(stream)
                if token:
                    kwargs["nextToken"] = token
                page = self.logs.get_log_events(**kwargs)
                for event in page.get("events", []):
                    events.append((stream, event["message"]))
                new_token = page.get("nextForwardToken")
                if not page.get("events") or new_token == token:
                    self._tokens[stream] = new_token
                    break
                self._tokens[stream] = new_token
        return events


def wait(sm: Any, logs: Any, job_name: str, sink: LogSink, *, poll_seconds: float = 5.0,
         silence_warning_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
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
            sink.line(stream, message)
        now = clock()
        if events:
            last_output = now
        elif now - last_output >= silence_warning_seconds and now - warned_at >= silence_warning_seconds:
            sink.silent(now - last_output, "/".join(s for s in status if s))
            warned_at = now
        if status[0] in TERMINAL:
            for stream, message in follower.poll():  # the last lines land just after the end
                sink.line(stream, message)
            return description
        sleep(poll_seconds)


def summarize(description: Mapping[str, Any]) -> dict[str, Any]:
    training = description.get("TrainingTimeInSeconds")
    billable = description.get("BillableTimeInSeconds")
    saving = None
    if description.get("EnableManagedSpotTraining") and training and billable is not None:
        saving = round(100.0 * (1 - billable / training), 1)
    return {
        "job_name": description.get("TrainingJobName"),
        "status": description.get("TrainingJobStatus"),
        "secondary_status": description.get("SecondaryStatus"),
        "failure_reason": description.get("FailureReason"),
        "model_artifact": (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
        "training_seconds": training,
        "billable_seconds": billable,
        "spot_saving_percent": saving,
        "arn": description.get("TrainingJobArn"),
    }


def download(s3: Any, uri: str, dest: Path) -> Path:
    bucket, _, key = uri[len("s3://"):].partition("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, key, str(dest))
    return dest


# ---------------------------------------------------------------------------------------------
# The whole launch, as `aiops train --remote` runs it


def launch(job: Any, options: RemoteOptions, *, store: Any, cache_dir: Path,
           progress: Callable[[str, int, int], None] | None = None,
           review_cost: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Validate, show the cost, bundle, upload what is new, create the job once, record it locally.

    `job` is a `local.PreparedJob` prepared with `remote=True`. `review_cost(estimate)` runs after
    validation and before anything is uploaded; it may raise to refuse the launch.

    The local record is saved as Pending (with the request and its client token) before the first
    CreateTrainingJob: if the create times out and the describe after it fails too, the record is
    left Pending and `aiops jobs describe/list` resolve it (`resolve_pending`) rather than anyone
    launching a second job.
    """
    from aiops.pricing import estimate_training_job
    from aiops import aws
    from aiops.training import bundle, cluster, images, uploads

    validate(options, aws.training_instance_types())
    processes = cluster.plan_processes(job.distribution, options.instance_type, options.instance_count,
                                       job.config.nproc, entry_point=job.entry_point,
                                       framework_version=options.framework_version, image_uri=options.image_uri)
    estimate = estimate_training_job(options.instance_type, options.instance_count, options.max_run, options.region)
    if review_cost is not None:
        review_cost(estimate)
    code = bundle.build(job.code_source, job.entry_point, selection=job.code_selection)
    image_uri = options.image_uri or images.pytorch_image_uri(
        scope="training", region=options.region, version=options.framework_version,
        py_version=options.py_version, instance_type=options.instance_type, cache_dir=cache_dir,
    )
    run_dir = store.create(job.job_name)  # refuses a name already used here, before any upload
    record: dict[str, Any] = {
        "job_name": job.job_name,
        "remote": True,
        "region": options.region,
        "stack": options.stack,
        "status": PENDING,
        "created_at": time.time(),
        "run_dir": str(run_dir),
        "entry_point": job.entry_point,
        "hyperparameters": dict(job.config.hyperparameters),
        "config": {"entry_point": job.entry_point, "source_dir": str(job.code_source),
                   "instance_type": options.instance_type, "instance_count": options.instance_count,
                   "spot": options.spot, "network_isolation": options.network_isolation,
                   "vpc": bool(options.subnets), "processes_per_host": processes.processes_per_host,
                   "world_size": processes.world_size, "processes": processes.line()},
        "large_files": code.large_files,
        "estimated_max_cost_usd": estimate.cost(spot=options.spot),
        "final_metrics": {},
        "artifacts": {},
    }

    def upload() -> tuple[Any, dict[str, str], int]:
        s3 = aws.client("s3", options.region)
        code_upload = uploads.upload_bundle(s3, options.bucket, code.data, code.sha256, kms_key=options.kms_key,
                                            progress=progress)
        channel_uris: dict[str, str] = {}
        uploaded = code_upload.uploaded_bytes
        for name, path in job.channels.items():
            result = uploads.upload_channel(s3, options.bucket, name, path, kms_key=options.kms_key,
                                            progress=progress, selection=job.channel_selections.get(name),
                                            follow_symlinks=job.config.follow_symlinks)
            channel_uris[name] = result.uri
            uploaded += result.uploaded_bytes
        channel_uris.update(job.s3_channels)
        return code_upload, channel_uris, uploaded

    try:
        code_upload, channel_uris, uploaded = _aws_call(f"uploading {job.job_name}", upload)
    except BaseException as err:
        store.save({**record, "status": NOT_CREATED, "failure_reason": f"upload failed: {err}"})
        raise
    request = build_request(
        job_name=job.job_name, entry_point=job.entry_point, hyperparameters=job.config.hyperparameters,
        channel_uris=channel_uris, submit_directory=code_upload.uri, image_uri=image_uri, options=options,
        nproc=processes.processes_per_host, metric_definitions=job.config.metric_definitions,
        input_modes=job.config.input_modes, channel_sharding=job.config.channel_sharding,
        distribution=job.distribution,
    )
    record["config"]["channels"] = channel_uris
    record.update(
        code_bundle={"uri": code_upload.uri, "sha256": code.sha256, "files": code.files, "bytes": code.size},
        uploaded_bytes=uploaded, request=request, client_token=client_token(request),
    )
    store.save(record)  # Pending: from here on, a job may exist on SageMaker
    submitted = time.monotonic()
    try:
        outcome = _aws_call(f"submitting {job.job_name}", lambda: create_once(
            aws.client("sagemaker", options.region, retries=NO_RETRY), aws.client("sagemaker", options.region),
            request))
    except UsageError as err:  # SageMaker refused the request (or the name is another job's): nothing runs
        store.save({**record, "status": NOT_CREATED, "failure_reason": str(err)})
        raise
    record.update(status="InProgress", create_outcome=outcome,
                  accepted_seconds=round(time.monotonic() - submitted, 3))
    store.save(record)
    return record


def resolve_pending(store: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Settle a record left Pending by an interrupted create: the job exists with our client token
    (refreshed from SageMaker), exists without it (marked, never adopted), or never reached SageMaker
    (NotCreated). Any other record is returned as is."""
    if record.get("status") != PENDING or not record.get("remote"):
        return record
    from aiops import aws

    sm = aws.client("sagemaker", record.get("region"))
    name = record["job_name"]
    found = _aws_call(f"describing {name}", lambda: find_job(sm, name))
    if found is None:
        if "request" not in record:  # saved before the uploads finished: nothing was ever created
            record.update(status=NOT_CREATED, failure_reason="interrupted before CreateTrainingJob")
        else:
            record.update(status=NOT_CREATED,
                          failure_reason="CreateTrainingJob never reached SageMaker; run the command again")
        store.save(record)
        return record
    token = _aws_call(f"reading the tags of {name}", lambda: job_token(sm, found))
    if token != record.get("client_token"):
        record.update(status=NOT_CREATED, failure_reason=(
            f"a job named {name} exists on SageMaker but was not created by this request "
            f"(its {CLIENT_TOKEN_TAG} tag differs); it is not adopted"))
        store.save(record)
        return record
    record["create_outcome"] = "found"
    return refresh(store, record, found)


def refresh(store: Any, record: dict[str, Any], description: Mapping[str, Any]) -> dict[str, Any]:
    """Fold a DescribeTrainingJob answer into the local record of a remote job."""
    summary = summarize(description)
    record.update(
        status=summary["status"],
        failure_reason=summary["failure_reason"],
        remote_summary=summary,
        final_metrics={m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])},
    )
    if summary["model_artifact"]:
        record["artifacts"] = {**record.get("artifacts", {}), "model_s3": summary["model_artifact"]}
    store.save(record)
    return record


def _aws_call(action: str, fn: Callable[[], Any]) -> Any:
    from aiops import aws

    try:
        return fn()
    except AiopsError:
        raise
    except Exception as err:
        if type(err).__module__.startswith(("botocore", "boto3", "s3transfer")):
            raise aws.describe_aws_error(err, action=action) from None
        raise


def follow(job_name: str, region: str, sink: LogSink, *, silence_warning_seconds: float = 300.0,
           poll_seconds: float = 5.0) -> dict[str, Any]:
    from aiops import aws

    sm, logs = aws.client("sagemaker", region), aws.client("logs", region)
    return _aws_call(f"following {job_name}", lambda: wait(
        sm, logs, job_name, sink, poll_seconds=poll_seconds, silence_warning_seconds=silence_warning_seconds))


def describe(job_name: str, region: str) -> dict[str, Any]:
    from aiops import aws

    sm = aws.client("sagemaker", region)
    return _aws_call(f"describing {job_name}", lambda: sm.describe_training_job(TrainingJobName=job_name))


def stop(job_name: str, region: str) -> None:
    from aiops import aws

    sm = aws.client("sagemaker", region)
    _aws_call(f"stopping {job_name}", lambda: sm.stop_training_job(TrainingJobName=job_name))


def logs_once(job_name: str, region: str) -> list[tuple[str, str]]:
    from aiops import aws

    follower = LogFollower(aws.client("logs", region), job_name)
    return _aws_call(f"reading the logs of {job_name}", follower.poll)


def download_model(record: Mapping[str, Any], dest: Path) -> Path:
    from aiops import aws

    uri = (record.get("artifacts") or {}).get("model_s3")
    if not uri:
        raise AiopsError(f"{record['job_name']} has no model artifact (status {record.get('status')}).")
    s3 = aws.client("s3", record.get("region"))
    return _aws_call(f"downloading {uri}", lambda: download(s3, uri, dest))


METRICS_NAMESPACE = TRAINING_METRICS_NAMESPACE
MAX_QUERIES = 500  # GetMetricData: at most 500 MetricDataQueries per call


def metric_queries(job: str, names: list[str], hosts: int) -> list[dict[str, Any]]:
    """One MetricDataQuery per metric and host (dimension Host=<job>/algo-N, as SageMaker publishes)."""
    return [
        {"Id": f"m{i}_{h}", "Label": name if h == 1 else f"{name}@algo-{h}", "ReturnData": True,
         "MetricStat": {"Metric": {"Namespace": METRICS_NAMESPACE, "MetricName": name,
                                   "Dimensions": [{"Name": "Host", "Value": f"{job}/algo-{h}"}]},
                        "Period": 60, "Stat": "Average"}}
        for i, name in enumerate(names) for h in range(1, hosts + 1)
    ]


def metric_series(record: Mapping[str, Any]) -> dict[str, list[Any]]:
    """A remote job's metrics from CloudWatch, where SageMaker publishes its MetricDefinitions
    (namespace /aws/sagemaker/TrainingJobs, dimension Host=<job>/algo-N), as {name: [Point]}.

    Every host, in one batched GetMetricData (paged by NextToken): algo-1's series under the
    metric's name, the others' as ``name@algo-N``.
    """
    from datetime import datetime, timedelta, timezone

    from aiops import aws
    from aiops.training.metrics import Point

    job = record["job_name"]
    request = record.get("request") or {}
    names = [d["Name"] for d in request.get("AlgorithmSpecification", {}).get("MetricDefinitions", [])]
    hosts = int(request.get("ResourceConfig", {}).get("InstanceCount", 1))
    queries = metric_queries(job, names, hosts)
    cloudwatch = aws.client("cloudwatch", record.get("region"))
    start = datetime.fromtimestamp(record["created_at"], tz=timezone.utc) - timedelta(minutes=5)
    end = datetime.now(tz=timezone.utc) + timedelta(minutes=5)

    def fetch() -> dict[str, list[Any]]:
        values: dict[str, list[tuple[Any, float]]] = {}
        for at in range(0, len(queries), MAX_QUERIES):
            kwargs: dict[str, Any] = {"MetricDataQueries": queries[at:at + MAX_QUERIES], "StartTime": start,
                                      "EndTime": end, "ScanBy": "TimestampAscending"}
            while True:
                answer = cloudwatch.get_metric_data(**kwargs)
                for result in answer.get("MetricDataResults", []):
                    values.setdefault(result["Label"], []).extend(zip(result["Timestamps"], result["Values"]))
                if not answer.get("NextToken"):
                    break
                kwargs["NextToken"] = answer["NextToken"]
        series: dict[str, list[Any]] = {}
        for label, points in values.items():
            if points:
                points.sort(key=lambda p: p[0])
                first = points[0][0]
                series[label] = [Point((t - first).total_seconds(), float(v)) for t, v in points]
        return series

    return _aws_call(f"reading the metrics of {job}", fetch) if queries else {}
