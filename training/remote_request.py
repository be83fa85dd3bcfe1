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
from dataclasses import dataclass, field, replace
from typing import Any

from aiops.training import contract
from aiops.training.launch import (
    Access,
    Compute,
    Image,
    LaunchOptions,
    Networking,
    StoppingCondition,
)
from aiops.training.metrics import MetricDefinition

from aiops.errors import ConfigError, UsageError
from aiops.stack import CLIENT_TOKEN_TAG, LAYOUT, StackOutputs, check_region, resolve_stack

CHECKPOINT_LOCAL_PATH = contract.DEFAULT_CHECKPOINT_DIR


@dataclass
class RemoteOptions:
    """A SageMaker job's launch options with every value decided (`resolve_options`): the same
    configs as the command line's `launch.LaunchOptions`, filled from the deployed stack and settings."""

    compute: Compute
    stopping_condition: StoppingCondition = field(default_factory=StoppingCondition)
    networking: Networking = field(default_factory=Networking)
    access: Access = field(default_factory=Access)
    image: Image = field(default_factory=Image)
    remote_debug: bool = False  # RemoteDebugConfig.EnableRemoteDebug: SSM sessions into the hosts
    tags: dict[str, str] = field(default_factory=dict)
    fallback_types: list[str] = field(default_factory=list)  # tried in order after a capacity error

    def __post_init__(self) -> None:
        self.stopping_condition.check_spot(self.spot, self.max_run)

    # the values every request has, decided by resolve_options (the configs' None means "not given")
    @property
    def instance_type(self) -> str:
        return _decided(self.compute.instance_type, "instance type")

    @property
    def region(self) -> str:
        return _decided(self.access.region, "region")

    @property
    def spot(self) -> bool:
        """Managed spot unless on-demand was decided (spot is the settings' default too)."""
        return self.compute.enable_managed_spot_training is not False

    @property
    def max_run(self) -> int:
        return self.stopping_condition.max_runtime_in_seconds or DEFAULT_MAX_RUN_SECONDS

    @property
    def instance_types(self) -> list[str]:
        """Every type an attempt may run on, in order (the first is `instance_type`)."""
        return [self.instance_type, *self.fallback_types]

    @property
    def effective_max_wait(self) -> int | None:
        if not self.spot:
            return None
        max_wait = self.stopping_condition.max_wait_time_in_seconds
        return max_wait if max_wait is not None else 2 * self.max_run

    def on(self, instance_type: str) -> RemoteOptions:
        """The same options on one instance type (an attempt of a capacity-aware launch)."""
        return replace(self, compute=replace(self.compute, instance_type=instance_type), fallback_types=[])


DEFAULT_MAX_RUN_SECONDS = 86400  # CreateTrainingJob's default MaxRuntimeInSeconds, a day
DEFAULT_VOLUME_SIZE_GB = 30  # the SDK's Compute.volume_size_in_gb


def _decided(value: str | None, what: str) -> str:
    assert value, f"resolve_options decides the {what}"
    return value


def apply_defaults(
    options: RemoteOptions, stack_outputs: StackOutputs | Mapping[str, Any], settings_aws: Any
) -> RemoteOptions:
    """Role, bucket, KMS key and network: given > the deployed stack's outputs > settings.

    `stack_outputs` are what `infra/program.py` exports (aiops.stack.StackOutputs). The VPC's
    subnets and security groups come from the stack only (`networking.vpc` False: not used).
    """
    outputs = (
        stack_outputs
        if isinstance(stack_outputs, StackOutputs)
        else StackOutputs.model_validate(stack_outputs)
    )
    access, networking = options.access, options.networking
    options.access = replace(
        access,
        role=access.role or outputs.role_arn or settings_aws.role_arn,
        bucket=access.bucket or outputs.bucket or settings_aws.bucket,
        kms_key_id=access.kms_key_id or outputs.kms_key_arn or settings_aws.kms_key_arn,
    )
    if networking.vpc is not False:
        if networking.vpc:
            outputs.require("subnet_ids", "security_group_ids", stack=access.stack, needed_for="--vpc")
        options.networking = replace(
            networking,
            subnets=networking.subnets or tuple(outputs.subnet_ids),
            security_group_ids=networking.security_group_ids or tuple(outputs.security_group_ids),
        )
    else:
        options.networking = replace(networking, subnets=(), security_group_ids=())
    return options


def resolve_options(given: LaunchOptions, settings: Any) -> tuple[RemoteOptions, StackOutputs]:
    """The job's options from the command line's `launch.LaunchOptions` (given > the deployed stack's
    region > settings) and the stack's outputs (read from the local file `aiops deploy` saved)."""
    from aiops.stack import read_outputs

    aws = settings.aws
    stack_name = resolve_stack(given.access.stack, settings)
    stack_outputs = read_outputs(settings.home, stack_name)
    types = parse_instance_types(given.compute.instance_type or aws.instance_type)
    compute, spot = given.compute, given.compute.enable_managed_spot_training
    options = RemoteOptions(
        # a warm pool is kept of on-demand instances only: --keep-alive means on-demand unless --spot
        compute=replace(
            compute,
            instance_type=types[0],
            enable_managed_spot_training=(
                (aws.spot and not compute.keep_alive_period_in_seconds) if spot is None else spot
            ),
            volume_size_in_gb=compute.volume_size_in_gb or aws.volume_size_gb,
        ),
        fallback_types=types[1:],
        stopping_condition=replace(
            given.stopping_condition,
            max_runtime_in_seconds=given.stopping_condition.max_runtime_in_seconds or aws.max_run_seconds,
        ),
        networking=given.networking,
        access=replace(
            given.access, region=given.access.region or stack_outputs.region or aws.region, stack=stack_name
        ),
        image=replace(
            given.image,
            framework_version=given.image.framework_version or aws.framework_version,
            py_version=aws.py_version,
        ),
        remote_debug=given.remote_debug,
    )
    return options, stack_outputs


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

    Entry point, hyperparameters and channels were checked by `jobs.prepare`; what a config can
    check alone (counts, durations, spot and its wait) was checked when it was made.
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
    access, networking = options.access, options.networking
    stack = resolve_stack(access.stack)
    if not access.role:
        raise _missing_output(
            stack, "roleArn", "--role ARN", "AIOPS_AWS__ROLE_ARN", "SageMaker execution role"
        )
    if not access.bucket:
        raise _missing_output(
            stack, "bucket", "--bucket NAME", "AIOPS_AWS__BUCKET", "S3 bucket for code and artifacts"
        )
    if bool(networking.subnets) != bool(networking.security_group_ids):
        missing = "securityGroupIds" if networking.subnets else "subnetIds"
        raise ConfigError(
            f"the job's VpcConfig needs both subnets and security groups: stack {stack!r} has "
            f"no output {missing!r}; run 'aiops deploy --stack {stack}' with aiops:network set."
        )


def check_secret_grants(
    secrets: Mapping[str, str], options: RemoteOptions, outputs: StackOutputs
) -> list[str]:
    """`--secret` ARNs the job's role may read: the stack's role reads exactly the ARNs of its
    `access.trainingSecrets` (the `trainingSecretArns` output), so another is refused before any
    upload; a role given with --role is the user's to check (a warning)."""
    if not secrets:
        return []
    role, stack = options.access.role, options.access.stack
    if not outputs.role_arn or role != outputs.role_arn:
        arns = ", ".join(sorted(set(secrets.values())))
        return [
            (
                f"--secret: the job runs as {role}, not the stack's role; it needs "
                f"secretsmanager:GetSecretValue on {arns}."
            )
        ]
    for name, arn in secrets.items():
        if arn not in outputs.training_secret_arns:
            raise UsageError(
                f"--secret {name}: the role of stack {stack!r} may not read {arn}; add the ARN to "
                f"access.trainingSecrets in Pulumi.{stack}.yaml and run 'aiops deploy --stack "
                f"{stack}' (or pass --role with a role that may read it)."
            )
    return []


def check_remote_debug(options: RemoteOptions, outputs: StackOutputs) -> list[str]:
    """`--remote-debug` needs the role's SSM-messages statement, which a stack grants only with
    `access.remoteDebug: true` (the `remoteDebug` output): refused up front without it; a role given
    with --role is the user's to check (a warning)."""
    if not options.remote_debug:
        return []
    role, stack = options.access.role, options.access.stack
    if not outputs.role_arn or role != outputs.role_arn:
        return [
            f"--remote-debug: the job runs as {role}, not the stack's role; it needs "
            "ssmmessages:CreateControlChannel, CreateDataChannel, OpenControlChannel and OpenDataChannel."
        ]
    if not outputs.remote_debug:
        raise UsageError(
            f"--remote-debug: the role of stack {stack!r} may not open SSM sessions; set "
            f"access.remoteDebug: true in Pulumi.{stack}.yaml and run 'aiops deploy --stack "
            f"{stack}'."
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
    compute, access, networking = options.compute, options.access, options.networking
    bucket = access.bucket
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
        "RoleArn": access.role,
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
            "InstanceCount": compute.instance_count,
            "VolumeSizeInGB": compute.volume_size_in_gb or DEFAULT_VOLUME_SIZE_GB,
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
    if access.kms_key_id:
        request["OutputDataConfig"]["KmsKeyId"] = access.kms_key_id
        request["ResourceConfig"]["VolumeKmsKeyId"] = access.kms_key_id
    if compute.keep_alive_period_in_seconds is not None:
        request["ResourceConfig"]["KeepAlivePeriodInSeconds"] = compute.keep_alive_period_in_seconds
    if options.remote_debug:
        request["RemoteDebugConfig"] = {"EnableRemoteDebug": True}
    if compute.instance_count > 1:
        request["EnableInterContainerTrafficEncryption"] = True
    if networking.subnets:
        request["VpcConfig"] = {
            "Subnets": list(networking.subnets),
            "SecurityGroupIds": list(networking.security_group_ids),
        }
    if networking.enable_network_isolation:
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
