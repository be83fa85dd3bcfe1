"""The CreateTrainingJob request of `aiops train --remote`: its options (`RemoteOptions`), their
precedence (given > the deployed stack's outputs > settings), what can be checked before a byte is
uploaded, the budget guard, and the request itself.

The request is what the PyTorch training container's toolkit reads (`sagemaker_program`,
`sagemaker_submit_directory` = a content-hashed `sourcedir.tar.gz`, `sagemaker_region`, the
torch_distributed keys), built by the same `contract` module the local runner uses, so a script
that works under `aiops train` gets the same environment and arguments on SageMaker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiops.training import contract
from aiops.training.images import Framework
from aiops.training.metrics import MetricDefinition

from aiops.errors import ConfigError, UsageError
from aiops.stack import CLIENT_TOKEN_TAG, LAYOUT, StackOutputs, check_region

CHECKPOINT_LOCAL_PATH = contract.DEFAULT_CHECKPOINT_DIR


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
    framework: Framework = field(default_factory=Framework)  # the image's (training.images.resolve_framework)
    subnets: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)
    vpc: bool | None = None  # None: the stack's VPC when it has one; True: required; False: never
    network_isolation: bool = False
    stack: str = "dev"
    tags: dict[str, str] = field(default_factory=dict)
    keep_alive: int | None = None  # ResourceConfig.KeepAlivePeriodInSeconds: a warm pool after the job
    remote_debug: bool = False  # RemoteDebugConfig.EnableRemoteDebug: SSM sessions into the hosts
    fallback_types: list[str] = field(default_factory=list)  # tried in order after a capacity error

    @property
    def instance_types(self) -> list[str]:
        """Every type an attempt may run on, in order (the first is `instance_type`)."""
        return [self.instance_type, *self.fallback_types]

    @property
    def effective_max_wait(self) -> int | None:
        if not self.spot:
            return None
        return self.max_wait if self.max_wait is not None else 2 * self.max_run


def apply_defaults(
    options: RemoteOptions, stack_outputs: StackOutputs | Mapping[str, Any], settings_aws: Any
) -> RemoteOptions:
    """Role, bucket, KMS key and network: given > the deployed stack's outputs > settings.

    `stack_outputs` are what `infra/program.py` exports (aiops.stack.StackOutputs). The VPC's
    subnets and security groups come from the stack only (`options.vpc` False: not used).
    """
    outputs = (
        stack_outputs
        if isinstance(stack_outputs, StackOutputs)
        else StackOutputs.model_validate(stack_outputs)
    )
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


def resolve_options(given: Any, settings: Any) -> tuple[RemoteOptions, StackOutputs]:
    """The job's options from the command line's `jobs.LaunchOptions` (given > the deployed stack's
    region > settings) and the stack's outputs (read from the local file `aiops deploy` saved)."""
    from aiops.stack import read_outputs, resolve_stack

    aws = settings.aws
    stack_name = resolve_stack(given.stack, settings)
    stack_outputs = read_outputs(settings.home, stack_name)
    types = parse_instance_types(given.instance_type or aws.instance_type)
    options = RemoteOptions(
        instance_type=types[0],
        fallback_types=types[1:],
        keep_alive=given.keep_alive,
        remote_debug=given.remote_debug,
        region=given.region or stack_outputs.region or aws.region,
        instance_count=given.instance_count,
        # a warm pool is kept of on-demand instances only: --keep-alive means on-demand unless --spot
        spot=(aws.spot and not given.keep_alive) if given.spot is None else given.spot,
        max_run=given.max_run or aws.max_run_seconds,
        max_wait=given.max_wait,
        volume_size=given.volume_size or aws.volume_size_gb,
        role=given.role,
        bucket=given.bucket,
        image_uri=given.image_uri,
        framework_version=given.framework_version or aws.framework_version,
        py_version=aws.py_version,
        stack=stack_name,
        vpc=given.vpc,
        network_isolation=given.network_isolation,
    )
    return options, stack_outputs


MAX_KEEP_ALIVE_SECONDS = 3600  # SageMaker keeps a warm pool at most an hour after a job
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str, option: str) -> int:
    """`1800`, `1800s`, `30m` or `1h` as whole seconds (UsageError naming the option otherwise)."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _DURATION_UNITS else "s"
    number = value[:-1] if value[-1:] in _DURATION_UNITS else value
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if amount < 0 or amount != amount:
        raise UsageError(f"{option} {text!r}: give a duration like 30m, 1h or 1800 (seconds).")
    return int(round(amount * _DURATION_UNITS[unit]))


def parse_instance_types(text: str) -> list[str]:
    """`--instance-type a,b,c`: the ordered list an attempt takes its type from (duplicates dropped)."""
    types = [t.strip() for t in text.split(",")]
    if not all(types):
        raise UsageError(
            f"--instance-type {text!r}: give one type or a comma-separated list, "
            "e.g. ml.g5.2xlarge,ml.g6.2xlarge."
        )
    return list(dict.fromkeys(types))


def _missing_output(stack: str, output: str, option: str, setting: str, what: str) -> ConfigError:
    return ConfigError(
        f"no {what}: stack {stack!r} has no output {output!r}; run 'aiops deploy --stack {stack}' "
        f"(or pass {option}, or set {setting})."
    )


def validate(options: RemoteOptions, valid_instance_types: frozenset[str]) -> None:
    """Everything about the job's resources that can be checked before a byte is uploaded (exit 2).

    Entry point, hyperparameters and channels were checked by `jobs.prepare`.
    """
    try:
        check_region(options.region, what="--region")
    except ValueError as err:
        raise UsageError(str(err)) from None
    for instance_type in options.instance_types:
        if instance_type not in valid_instance_types:
            close = sorted(t for t in valid_instance_types if t.startswith(instance_type.rsplit(".", 1)[0]))
            hint = f" (e.g. {', '.join(close[:4])})" if close else " (e.g. ml.g5.xlarge, ml.p4d.24xlarge)"
            raise UsageError(
                f"--instance-type {instance_type} is not a SageMaker training instance type{hint}."
            )
    if options.keep_alive is not None:
        if not 0 <= options.keep_alive <= MAX_KEEP_ALIVE_SECONDS:
            raise UsageError(
                f"--keep-alive {options.keep_alive}s: SageMaker keeps a warm pool 0 to "
                f"{MAX_KEEP_ALIVE_SECONDS} s (1h) after a job; give at most 1h."
            )
        if options.keep_alive and options.spot:
            raise UsageError(
                "--keep-alive: SageMaker keeps warm pools of on-demand instances only; "
                "use --on-demand (the default with --keep-alive) or drop --keep-alive."
            )
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
        raise _missing_output(
            options.stack, "roleArn", "--role ARN", "AIOPS_AWS__ROLE_ARN", "SageMaker execution role"
        )
    if not options.bucket:
        raise _missing_output(
            options.stack, "bucket", "--bucket NAME", "AIOPS_AWS__BUCKET", "S3 bucket for code and artifacts"
        )
    if bool(options.subnets) != bool(options.security_group_ids):
        missing = "securityGroupIds" if options.subnets else "subnetIds"
        raise ConfigError(
            f"the job's VpcConfig needs both subnets and security groups: stack {options.stack!r} has "
            f"no output {missing!r}; run 'aiops deploy --stack {options.stack}' with aiops:network set."
        )


def check_secret_grants(
    secrets: Mapping[str, str], options: RemoteOptions, outputs: StackOutputs
) -> list[str]:
    """`--secret` ARNs the job's role may read: the stack's role reads exactly the ARNs of its
    `access.trainingSecrets` (the `trainingSecretArns` output), so another is refused before any
    upload; a role given with --role is the user's to check (a warning)."""
    if not secrets:
        return []
    if not outputs.role_arn or options.role != outputs.role_arn:
        arns = ", ".join(sorted(set(secrets.values())))
        return [
            (
                f"--secret: the job runs as {options.role}, not the stack's role; it needs "
                f"secretsmanager:GetSecretValue on {arns}."
            )
        ]
    for name, arn in secrets.items():
        if arn not in outputs.training_secret_arns:
            raise UsageError(
                f"--secret {name}: the role of stack {options.stack!r} may not read {arn}; add the ARN to "
                f"access.trainingSecrets in Pulumi.{options.stack}.yaml and run 'aiops deploy --stack "
                f"{options.stack}' (or pass --role with a role that may read it)."
            )
    return []


def check_remote_debug(options: RemoteOptions, outputs: StackOutputs) -> list[str]:
    """`--remote-debug` needs the role's SSM-messages statement, which a stack grants only with
    `access.remoteDebug: true` (the `remoteDebug` output): refused up front without it; a role given
    with --role is the user's to check (a warning)."""
    if not options.remote_debug:
        return []
    if not outputs.role_arn or options.role != outputs.role_arn:
        return [
            f"--remote-debug: the job runs as {options.role}, not the stack's role; it needs "
            "ssmmessages:CreateControlChannel, CreateDataChannel, OpenControlChannel and OpenDataChannel."
        ]
    if not outputs.remote_debug:
        raise UsageError(
            f"--remote-debug: the role of stack {options.stack!r} may not open SSM sessions; set "
            f"access.remoteDebug: true in Pulumi.{options.stack}.yaml and run 'aiops deploy --stack "
            f"{options.stack}'."
        )
    return []


def idle_cost(estimate: Any, keep_alive: int | None) -> float | None:
    """What the warm pool may cost after the job: every host kept `keep_alive` seconds, on-demand
    (None: no pool, or no known price)."""
    if not keep_alive or estimate.price is None:
        return None
    return round(estimate.instance_count * keep_alive / 3600.0 * estimate.price.hourly(spot=False), 2)


def check_budget(
    estimate: Any, *, spot: bool, max_cost: float | None, confirmed: bool, extra: float = 0.0
) -> str | None:
    """Refuse a launch whose worst-case cost is over the budget (unless confirmed).

    Returns a warning to show, or None. An unknown price never counts as zero: with a budget set,
    it refuses too, since the budget cannot be checked.
    """
    if max_cost is not None and max_cost <= 0:
        raise UsageError(f"--max-cost {max_cost:g}: the budget must be a positive number of USD.")
    if not estimate.known:
        warning = (
            f"no known price for {estimate.instance_type}: the job's cost cannot be estimated "
            "(see aiops/data/prices.json)."
        )
        if max_cost is not None and not confirmed:
            raise UsageError(f"{warning} A budget of ${max_cost:g} is set: pass --yes to launch anyway.")
        return warning
    cost = estimate.cost(spot=spot) + extra  # extra: a warm pool's idle time
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
    environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The CreateTrainingJob request (pure: tests assert it field by field).

    `input_modes` / `channel_sharding`: a channel's InputMode (File, FastFile: objects streamed on
    first read, Pipe: a FIFO per epoch) and S3DataDistributionType (ShardedByS3Key: each host gets
    a disjoint subset of the objects); File and FullyReplicated when not given. `environment`: the
    user's `--env` variables (validated by `job_inputs.validate_environment`)."""
    input_modes, channel_sharding = input_modes or {}, channel_sharding or {}
    bucket = options.bucket
    assert bucket, "validate() guarantees a bucket"
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
        "OutputDataConfig": {"S3OutputPath": LAYOUT.job_output_uri(bucket)},
        "ResourceConfig": {
            "InstanceType": options.instance_type,
            "InstanceCount": options.instance_count,
            "VolumeSizeInGB": options.volume_size,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": options.spot,
        "CheckpointConfig": {
            "S3Uri": LAYOUT.checkpoint_uri(bucket, job_name),
            "LocalPath": CHECKPOINT_LOCAL_PATH,
        },
        "Environment": {**(environment or {}), contract.CHECKPOINT_ENV: CHECKPOINT_LOCAL_PATH},
        "Tags": [{"Key": k, "Value": v} for k, v in sorted({"managed-by": "aiops", **options.tags}.items())],
    }
    if not request["InputDataConfig"]:
        del request["InputDataConfig"]  # optional, but an empty list is invalid
    if options.spot:
        stopping["MaxWaitTimeInSeconds"] = options.effective_max_wait  # type: ignore[assignment]
    if options.kms_key:
        request["OutputDataConfig"]["KmsKeyId"] = options.kms_key
        request["ResourceConfig"]["VolumeKmsKeyId"] = options.kms_key
    if options.keep_alive is not None:
        request["ResourceConfig"]["KeepAlivePeriodInSeconds"] = options.keep_alive
    if options.remote_debug:
        request["RemoteDebugConfig"] = {"EnableRemoteDebug": True}
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
