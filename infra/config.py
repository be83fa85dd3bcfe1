"""The stack configuration: one typed model, validated before any resource is declared.

Values come from the stack's config (``Pulumi.<stack>.yaml``): ``aws:region`` and the ``aiops:``
namespace, whose values are YAML objects (Pulumi structured config) in camelCase::

    config:
      aws:region: us-east-1
      aiops:endpoint:
        instanceType: ml.g5.xlarge
        autoscaling: {minCapacity: 1, maxCapacity: 4}

``load_stack_file`` reads the file (offline preview, tests), ``from_pulumi_config`` reads the same
keys from the running engine; both end in ``parse`` and so in the same model and the same errors:
one line naming the key, the value and what is allowed (``ConfigError``, exit 2).

This module imports neither pulumi nor pulumi_aws: config errors come before any of that is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from aiops.errors import ConfigError
from aiops.images import cuda_families, instance_family
from aiops.names import is_s3_uri, is_sagemaker_name

PROJECT = "aiops"
NAMESPACE = "aiops"
SECTIONS = ("namePrefix", "tags", "storage", "access", "network", "compute", "endpoint")

# SageMaker instance families whose ML storage is local NVMe, encrypted by the instance's hardware
# module: CreateEndpointConfig fails if a KmsKeyId is given for them (AWS API reference, KmsKeyId).
LOCAL_STORAGE_FAMILIES = (
    "g4dn",
    "g5",
    "g6",
    "g6e",
    "p3dn",
    "p4d",
    "p4de",
    "p5",
    "p5e",
    "p5en",
    "m5d",
    "c5d",
    "r5d",
    "m6id",
    "c6id",
    "r6id",
    "trn1",
    "inf2",
)
_ML_ANY = re.compile(r"^ml\.[a-z0-9-]+\.[0-9a-z]+$")
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)


def is_gpu_type(instance_type: str, prefix: str = "") -> bool:
    """A type of a family with NVIDIA GPUs. The families come from the one GPU table
    (``aiops/data/gpus.json`` through ``aiops.images.cuda_families``), the same one that picks the
    CUDA image and answers the fit check; EC2 names (``prefix=""``) share SageMaker's families."""
    parts = instance_type.split(".")
    if prefix:
        if parts[0] != prefix.rstrip("."):
            return False
        parts = parts[1:]
    return (
        len(parts) == 2 and re.fullmatch(r"[0-9a-z]+", parts[1]) is not None and parts[0] in cuda_families()
    )


def gpu_hint(prefix: str = "") -> str:
    return "a GPU type: " + ", ".join(f"{prefix}{f}.*" for f in sorted(cuda_families())[:6]) + ", ..."


def has_local_storage(instance_type: str) -> bool:
    return instance_family(instance_type) in LOCAL_STORAGE_FAMILIES


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class StorageConfig(_Model):
    """The KMS key and the artifact bucket (always on: every other component uses them)."""

    noncurrent_version_days: int = Field(30, ge=1, le=3650)
    abort_multipart_days: int = Field(7, ge=1, le=365)
    force_destroy: bool = False
    key_deletion_window_days: int = Field(30, ge=7, le=30)


class AccessConfig(_Model):
    """The SageMaker execution role. Its bucket prefixes are not configurable: they are the stack
    contract's (``aiops.stack.S3Layout``), the same ones remote jobs and deployments write to.

    ``trainingSecrets``: the Secrets Manager secrets (full ARNs) training jobs may read
    (``aiops train --remote --secret NAME=ARN``): the role gets ``secretsmanager:GetSecretValue`` on
    exactly these. ``trainingSecretKeys``: the customer-managed KMS keys those secrets are encrypted
    with, if any (``kms:Decrypt`` through Secrets Manager only); secrets under the AWS-managed key
    need none.

    ``remoteDebug``: training jobs may run with ``--remote-debug`` (RemoteDebugConfig): the role
    gets the four ``ssmmessages`` actions the SSM agent in the container needs to open sessions.
    """

    enabled: bool = True
    remote_debug: bool = False
    training_secrets: tuple[str, ...] = ()
    training_secret_keys: tuple[str, ...] = ()

    @field_validator("training_secrets")
    @classmethod
    def _secrets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from aiops.names import is_secret_arn

        bad = [arn for arn in value if not is_secret_arn(arn)]
        if bad:
            raise ValueError(
                f"{bad[0]} is not a Secrets Manager secret's full ARN "
                "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-AbCdEf)"
            )
        return tuple(dict.fromkeys(value))

    @field_validator("training_secret_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        key_arn = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")
        bad = [arn for arn in value if not key_arn.fullmatch(arn)]
        if bad:
            raise ValueError(f"{bad[0]} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _keys_need_secrets(self) -> AccessConfig:
        if self.training_secret_keys and not self.training_secrets:
            raise ValueError("trainingSecretKeys without trainingSecrets: list the secrets they encrypt")
        return self


_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_SG = re.compile(r"^sg-[0-9a-f]{8,17}$")


class NetworkConfig(_Model):
    """Run training jobs and the endpoint in your VPC (off by default: SageMaker's own network).

    ``subnetIds`` and ``securityGroupIds`` become the ``subnetIds``/``securityGroupIds`` outputs
    that ``aiops train --remote`` puts in the job's VpcConfig, and the endpoint model's vpc_config;
    the execution role gets the ec2 network-interface permissions SageMaker needs for them. The
    subnets need a route to S3 (an S3 gateway endpoint, or a NAT) and, for the default images, to ECR.
    """

    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()

    @field_validator("subnet_ids")
    @classmethod
    def _subnets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            if not _SUBNET.match(v):
                raise ValueError(f"{v!r}: allowed: subnet IDs like subnet-0abc12345")
        if len(value) > 16:
            raise ValueError("at most 16 subnets (SageMaker VpcConfig)")
        return value

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            if not _SG.match(v):
                raise ValueError(f"{v!r}: allowed: security group IDs like sg-0abc12345")
        if len(value) > 5:
            raise ValueError("at most 5 security groups (SageMaker VpcConfig)")
        return value

    @model_validator(mode="after")
    def _both(self) -> NetworkConfig:
        if bool(self.subnet_ids) != bool(self.security_group_ids):
            raise ValueError(
                "set both subnetIds and securityGroupIds, or neither (SageMaker VpcConfig needs both)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.subnet_ids)


class ComputeConfig(_Model):
    """GPU EC2 machines behind an autoscaling group (off by default)."""

    enabled: bool = False
    instance_type: str = "g5.xlarge"
    spot: bool = False
    desired_capacity: int = Field(0, ge=0)
    min_size: int = Field(0, ge=0)
    max_size: int = Field(1, ge=0)
    root_volume_gb: int = Field(200, ge=30, le=16384)
    ami_name_filter: str = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
    ami_owner: str = "amazon"
    subnet_ids: tuple[str, ...] = ()
    vpc_id: str | None = None

    @field_validator("instance_type")
    @classmethod
    def _gpu(cls, value: str) -> str:
        if not is_gpu_type(value):
            raise ValueError(f"not a GPU instance type; allowed: {gpu_hint()}")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> ComputeConfig:
        if self.min_size > self.max_size:
            raise ValueError(f"minSize={self.min_size} > maxSize={self.max_size}: minSize must be <= maxSize")
        if not self.min_size <= self.desired_capacity <= self.max_size:
            raise ValueError(
                f"desiredCapacity={self.desired_capacity} must lie between minSize={self.min_size} "
                f"and maxSize={self.max_size}"
            )
        if bool(self.subnet_ids) != bool(self.vpc_id):
            raise ValueError("set both vpcId and subnetIds, or neither (then the default VPC is used)")
        return self


class ImageConfig(_Model):
    uri: str | None = None
    framework_version: str = "2.5"
    py_version: str = "py311"
    own_repository: bool = False
    tag: str = "latest"

    @model_validator(mode="after")
    def _one(self) -> ImageConfig:
        if self.uri and self.own_repository:
            raise ValueError("set uri or ownRepository, not both")
        return self


class AutoscalingConfig(_Model):
    enabled: bool = True
    min_capacity: int = Field(1, ge=1)
    max_capacity: int = Field(2, ge=1)
    target_invocations_per_instance: float | None = Field(None, gt=0)
    max_rps_per_instance: float = Field(20.0, gt=0)
    target_utilization: float = Field(0.7, gt=0, le=1)
    scale_in_cooldown: int = Field(300, ge=0, le=3600)
    scale_out_cooldown: int = Field(60, ge=0, le=3600)
    disable_scale_in: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_capacity > self.max_capacity:
            raise ValueError(
                f"minCapacity={self.min_capacity} > maxCapacity={self.max_capacity}: "
                "minCapacity must be <= maxCapacity"
            )
        return self


class DeploymentConfig(_Model):
    traffic: Literal["all-at-once", "canary", "linear"] = "canary"
    canary_percent: int = Field(10, ge=1, le=50)
    linear_step_percent: int = Field(25, ge=5, le=50)
    wait_seconds: int = Field(300, ge=0, le=3600)
    termination_wait_seconds: int = Field(120, ge=0, le=3600)
    max_execution_timeout_seconds: int = Field(3600, ge=600, le=14400)
    auto_rollback: bool = True


class AlarmsConfig(_Model):
    errors_5xx_threshold: float = Field(1.0, ge=0, alias="errors5xxThreshold")
    latency_p99_ms: float = Field(1000.0, gt=0)
    period_seconds: int = Field(60, ge=10)
    evaluation_periods: int = Field(2, ge=1)


class DataCaptureConfig(_Model):
    """Captured requests go to the stack contract's data-capture prefix (aiops.stack.S3Layout)."""

    enabled: bool = False
    sampling_percent: int = Field(100, ge=0, le=100)


class ServerlessConfig(_Model):
    enabled: bool = False
    memory_mb: int = 2048
    max_concurrency: int = Field(5, ge=1, le=200)

    @field_validator("memory_mb")
    @classmethod
    def _memory(cls, value: int) -> int:
        if value not in SERVERLESS_MEMORY_MB:
            raise ValueError(f"allowed: {', '.join(map(str, SERVERLESS_MEMORY_MB))}")
        return value


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
IDLE_ALARM_MAX_HOURS = 168  # CloudWatch: Period x EvaluationPeriods <= 7 days for periods >= 1 hour


class DashboardConfig(_Model):
    """A CloudWatch dashboard for the endpoint (invocations, latency, errors, instances)."""

    enabled: bool = True
    period_seconds: int = Field(60, ge=60, le=86400)

    @field_validator("period_seconds")
    @classmethod
    def _minute(cls, value: int) -> int:
        if value % 60:
            raise ValueError("allowed: a multiple of 60 seconds")
        return value


class IdleAlarmConfig(_Model):
    """Alarm when the endpoint has had no invocations for ``hours`` (it still costs money)."""

    enabled: bool = True
    hours: int = Field(4, ge=1, le=IDLE_ALARM_MAX_HOURS)
    email: str | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError("allowed: one e-mail address (name@example.com)")
        return value


CONTAINERS = ("pytorch", "huggingface", "lmi", "tgi", "custom")
LLM_CONTAINERS = ("lmi", "tgi")


class LlmConfig(_Model):
    """The LLM containers' settings (LMI: djl-inference; TGI: the Hugging Face LLM container),
    turned into the environment each documents by ``infra/llm.py``."""

    version: str = "latest"  # the container's version in the SDK's table (djl-lmi / huggingface-llm)
    model_id: str = "/opt/ml/model"  # where SageMaker puts the model data
    tensor_parallel_degree: int | None = Field(None, ge=1)  # default: the instance type's GPU count
    max_input_tokens: int | None = Field(None, ge=1)
    max_total_tokens: int | None = Field(None, ge=2)
    max_batch_size: int | None = Field(None, ge=1)  # LMI OPTION_MAX_ROLLING_BATCH_SIZE, TGI MAX_BATCH_SIZE
    dtype: Literal["fp16", "bf16", "fp32"] | None = None
    rolling_batch: Literal["vllm", "lmi-dist", "trtllm", "disable"] = "vllm"  # LMI's back end

    @model_validator(mode="after")
    def _tokens(self) -> LlmConfig:
        if self.max_input_tokens and self.max_total_tokens and self.max_input_tokens >= self.max_total_tokens:
            raise ValueError(
                f"maxInputTokens={self.max_input_tokens} >= maxTotalTokens={self.max_total_tokens}: "
                f"the total (prompt + generated) must be larger than the input"
            )
        return self


class HuggingFaceConfig(_Model):
    """The Hugging Face inference container (``container: huggingface``, sagemaker-huggingface-inference-
    toolkit): a transformers pipeline, or the model's ``code/inference.py``. Its image is the SDK's
    ``huggingface`` table's for these versions; CPU and GPU instance types both have one."""

    transformers_version: str = "4.51"
    pytorch_version: str | None = None  # default: the one PyTorch the table pairs with transformersVersion
    task: str | None = None  # HF_TASK; default: the container infers it from the model's config.json


class GpuFitConfig(_Model):
    """The GPU-fit check before deploying (``aiops.gpufit``): on by default."""

    enabled: bool = True
    overhead: float = Field(0.2, ge=0, le=2)  # CUDA context, activations, fragmentation


class InferenceComponentsConfig(_Model):
    """Scale to zero with inference components: the endpoint's instances and the model's copies
    both go to 0 when idle; a request then fails until a copy is back (cold start, minutes)."""

    enabled: bool = False
    min_copies: int = Field(0, ge=0)
    max_copies: int = Field(1, ge=1)
    min_instances: int = Field(0, ge=0)
    max_instances: int = Field(1, ge=1)
    accelerators_per_copy: int | None = Field(None, ge=1)  # default: every GPU of the instance
    memory_mb_per_copy: int = Field(1024, ge=128)
    cpus_per_copy: float | None = Field(None, gt=0)
    target_invocations_per_copy: float = Field(4.0, gt=0)  # SageMakerInferenceComponentInvocationsPerCopy
    scale_in_cooldown: int = Field(300, ge=0, le=3600)
    scale_out_cooldown: int = Field(60, ge=0, le=3600)

    @model_validator(mode="after")
    def _bounds(self) -> InferenceComponentsConfig:
        if self.min_copies > self.max_copies:
            raise ValueError(
                f"minCopies={self.min_copies} > maxCopies={self.max_copies}: minCopies must be <= maxCopies"
            )
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"minInstances={self.min_instances} > maxInstances={self.max_instances}: "
                "minInstances must be <= maxInstances"
            )
        return self


class AsyncInferenceConfig(_Model):
    """Scale to zero with asynchronous inference: requests queue (input in S3), instances go to 0
    when the queue is empty; results land in the stack's bucket, SNS says when."""

    enabled: bool = False
    min_capacity: int = Field(0, ge=0)
    max_capacity: int = Field(1, ge=1)
    max_concurrent_invocations_per_instance: int | None = Field(None, ge=1, le=1000)
    target_backlog_per_instance: float = Field(5.0, gt=0)  # ApproximateBacklogSizePerInstance
    scale_in_cooldown: int = Field(600, ge=0, le=3600)
    scale_out_cooldown: int = Field(60, ge=0, le=3600)

    @model_validator(mode="after")
    def _bounds(self) -> AsyncInferenceConfig:
        if self.min_capacity > self.max_capacity:
            raise ValueError(
                f"minCapacity={self.min_capacity} > maxCapacity={self.max_capacity}: "
                "minCapacity must be <= maxCapacity"
            )
        return self


class EndpointConfig(_Model):
    enabled: bool = True
    container: Literal["pytorch", "huggingface", "lmi", "tgi", "custom"] = "pytorch"
    name: str | None = None
    model_data_url: str | None = None
    instance_type: str = "ml.g5.xlarge"
    require_gpu: bool = True
    initial_instance_count: int = Field(1, ge=1)
    variant_name: str = "primary"
    program: str = "inference.py"
    network_isolation: bool = Field(
        False,
        description="EnableNetworkIsolation on the endpoint's model: the container makes no network call "
        "(no pip install of code/requirements.txt at start; the model must bring its dependencies).",
    )
    environment: dict[str, str] = Field(default_factory=dict)
    image: ImageConfig = ImageConfig()
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    data_capture: DataCaptureConfig = DataCaptureConfig()
    serverless: ServerlessConfig = ServerlessConfig()
    dashboard: DashboardConfig = DashboardConfig()
    idle_alarm: IdleAlarmConfig = IdleAlarmConfig()
    llm: LlmConfig = LlmConfig()
    huggingface: HuggingFaceConfig = HuggingFaceConfig()
    gpu_fit: GpuFitConfig = GpuFitConfig()
    # Large models: the size of the model data (``aiops deploy --model`` writes it) sets the
    # download and start-up timeouts and the volume (``infra/llm.py:startup_settings``); each
    # can be set by hand instead.
    model_size_gb: float | None = Field(None, gt=0)
    model_data_download_timeout_seconds: int | None = Field(None, ge=60, le=3600)
    container_startup_health_check_timeout_seconds: int | None = Field(None, ge=60, le=3600)
    volume_size_gb: int | None = Field(None, ge=1, le=512)
    inference_components: InferenceComponentsConfig = InferenceComponentsConfig()
    async_inference: AsyncInferenceConfig = AsyncInferenceConfig()

    @field_validator("name", "variant_name")
    @classmethod
    def _sm_name(cls, value: str | None) -> str | None:
        if value is not None and not is_sagemaker_name(value):
            raise ValueError("allowed: letters, digits and '-', starting with a letter or digit, at most 63")
        return value

    @field_validator("model_data_url")
    @classmethod
    def _s3(cls, value: str | None) -> str | None:
        if value is not None and not is_s3_uri(value):
            raise ValueError(
                "allowed: an s3://bucket/key URI of a model.tar.gz, or an s3://bucket/prefix/ of "
                "uncompressed model files (ending in '/')"
            )
        return value

    @property
    def uncompressed(self) -> bool:
        """A prefix (``s3://bucket/prefix/``): ModelDataSource with S3Prefix and no compression."""
        return bool(self.model_data_url and self.model_data_url.endswith("/"))

    @model_validator(mode="after")
    def _instance(self) -> EndpointConfig:
        if not self.serverless.enabled:
            if not _ML_ANY.match(self.instance_type):
                raise ValueError(
                    f"instanceType={self.instance_type!r}: allowed: a SageMaker type 'ml.<family>.<size>'"
                )
            if self.require_gpu and not is_gpu_type(self.instance_type, "ml."):
                raise ValueError(
                    f"instanceType={self.instance_type!r} is not a GPU type; allowed: {gpu_hint('ml.')} "
                    f"(or set requireGpu: false)"
                )
            if self.initial_instance_count < self.autoscaling.min_capacity or (
                self.initial_instance_count > self.autoscaling.max_capacity
            ):
                raise ValueError(
                    f"initialInstanceCount={self.initial_instance_count} must lie between "
                    f"autoscaling.minCapacity={self.autoscaling.min_capacity} and "
                    f"autoscaling.maxCapacity={self.autoscaling.max_capacity}"
                )
        if self.enabled and self.model_data_url is None:
            raise ValueError(
                "modelDataUrl is missing: the endpoint needs the s3:// URI of a model.tar.gz "
                "(set aiops:endpoint.modelDataUrl, or run `aiops deploy --model ...`, or set enabled: false)"
            )
        if self.data_capture.enabled and self.serverless.enabled:
            raise ValueError("dataCapture is not supported with a serverless variant")
        self._check_container()
        self._check_scale_to_zero()
        return self

    def _check_container(self) -> None:
        if self.container in LLM_CONTAINERS:
            from aiops.gpufit import gpu_count

            gpus = None if self.serverless.enabled else gpu_count(self.instance_type)
            if not gpus:
                where = (
                    "a serverless variant has no GPU"
                    if self.serverless.enabled
                    else (f"instanceType={self.instance_type!r} has no GPU")
                )
                raise ValueError(
                    f"container={self.container!r} needs a GPU instance "
                    f"type; {where}; allowed: {gpu_hint('ml.')}"
                )
            from aiops.infra.images import check_llm_version

            check_llm_version(self.container, self.llm.version)
            if self.container == "tgi" and self.llm.dtype == "fp32":
                raise ValueError("llm.dtype='fp32': TGI serves float16 or bfloat16; allowed: fp16, bf16")
            tp = self.llm.tensor_parallel_degree
            if tp is not None and tp > gpus:
                raise ValueError(
                    f"llm.tensorParallelDegree={tp} > the {gpus} GPU(s) of {self.instance_type}: "
                    f"allowed: 1..{gpus} (or a larger instance type)"
                )
        if self.container == "huggingface":
            from aiops.infra.images import check_huggingface_versions

            check_huggingface_versions(self.huggingface)
        if self.volume_size_gb is not None and (
            self.serverless.enabled or has_local_storage(self.instance_type)
        ):
            raise ValueError(
                f"volumeSizeGb={self.volume_size_gb}: {self.instance_type} has local NVMe storage "
                "(or the variant is serverless), which takes no volume size; remove volumeSizeGb"
            )
        if self.container == "custom" and not (self.image.uri or self.image.own_repository):
            raise ValueError(
                "container='custom' needs image.uri or image.ownRepository: true (the image to run)"
            )

    def _check_scale_to_zero(self) -> None:
        ic, aio = self.inference_components, self.async_inference
        if ic.enabled and self.serverless.enabled:
            raise ValueError(
                "inferenceComponents and serverless cannot be combined: inference components need "
                "instances (set serverless.enabled: false, or inferenceComponents.enabled: false)"
            )
        if aio.enabled and self.serverless.enabled:
            raise ValueError(
                "asyncInference and serverless cannot be combined: asynchronous endpoints need instances"
            )
        if ic.enabled and aio.enabled:
            raise ValueError("inferenceComponents and asyncInference are two scale-to-zero modes: pick one")
        if ic.enabled and ic.accelerators_per_copy is not None:
            from aiops.gpufit import gpu_count

            gpus = gpu_count(self.instance_type) or 0
            if ic.accelerators_per_copy > gpus:
                raise ValueError(
                    f"inferenceComponents.acceleratorsPerCopy={ic.accelerators_per_copy} > the {gpus} GPU(s) "
                    f"of {self.instance_type}"
                )

    @property
    def scales_to_zero(self) -> bool:
        return self.inference_components.enabled or self.async_inference.enabled

    @property
    def kms_on_volume(self) -> bool:
        """Whether the endpoint config may carry the stack's KMS key (see LOCAL_STORAGE_FAMILIES)."""
        return not self.serverless.enabled and not has_local_storage(self.instance_type)


class StackConfig(_Model):
    project: str = PROJECT
    stack: str
    region: str
    name_prefix: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    storage: StorageConfig = StorageConfig()
    access: AccessConfig = AccessConfig()
    network: NetworkConfig = NetworkConfig()
    compute: ComputeConfig = ComputeConfig()
    endpoint: EndpointConfig = EndpointConfig(enabled=False)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        from aiops.stack import check_region

        check_region(value)  # botocore's partition data
        return value

    @field_validator("name_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,29}", value):
            raise ValueError("allowed: lowercase letters, digits and '-', at most 30")
        return value

    @model_validator(mode="after")
    def _wiring(self) -> StackConfig:
        if self.endpoint.enabled and not self.access.enabled:
            raise ValueError("the endpoint needs the execution role: set access.enabled: true")
        return self

    @property
    def prefix(self) -> str:
        return self.name_prefix or f"{self.project}-{self.stack}"[:30].rstrip("-").lower()

    @property
    def endpoint_name(self) -> str:
        return self.endpoint.name or f"{self.prefix}-endpoint"


# --------------------------------------------------------------------------- parsing and errors


def _top_key(name: str) -> str:
    return "aws:region" if name == "region" else f"{NAMESPACE}:{name}"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = StackConfig
    for part in loc:
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        field = fields.get(part) or model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def describe(err: ValidationError, raw: Mapping[str, Any]) -> str:
    parts = []
    for item in err.errors():
        loc = tuple(item["loc"])
        if not loc:
            key, msg = "config", item["msg"]
        else:
            key = _top_key(str(loc[0])) + "".join(
                f".{p}" if isinstance(p, str) else f"[{p}]" for p in loc[1:]
            )
            msg = item["msg"]
        msg = msg.removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            parts.append(f"{key}: unknown key; allowed here: {', '.join(allowed)}")
            continue
        if item["type"] == "missing":
            parts.append(f"{key} is missing: it must be set in the stack config")
            continue
        value = item.get("input")
        if isinstance(value, dict) and re.match(r"^[a-zA-Z][a-zA-Z0-9.]*=", msg):
            parts.append(f"{key}.{msg}")  # a cross-field rule: its message starts with the field
            continue
        shown = "" if isinstance(value, dict) else f"={value!r}"
        parts.append(f"{key}{shown}: {msg}")
    return "invalid stack config: " + "; ".join(parts)


def parse(raw: Mapping[str, Any], *, stack: str, source: str = "stack config") -> StackConfig:
    """Validate the stack's config (keys as in the stack file: ``aws:region``, ``aiops:<section>``)."""
    data: dict[str, Any] = {"stack": stack}
    unknown = []
    for key, value in raw.items():
        ns, _, name = str(key).partition(":")
        if key == "aws:region":
            data["region"] = value
        elif ns == NAMESPACE:
            if name not in SECTIONS:
                unknown.append(key)
            data[name] = value
    if unknown:
        allowed = ", ".join(f"{NAMESPACE}:{s}" for s in SECTIONS)
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; allowed: aws:region, {allowed}")
    if "region" not in data:
        raise ConfigError(f"{source}: aws:region is missing; set it, e.g. `aws:region: us-east-1`")
    try:
        return StackConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe(err, raw)}") from None


def stack_file(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / f"Pulumi.{stack}.yaml"


MAX_RPS_KEY = ("config", f"{NAMESPACE}:endpoint", "autoscaling", "maxRpsPerInstance")


def set_max_rps_per_instance(path: Path, value: float, *, write: bool = True) -> list[str]:
    """Set ``aiops:endpoint.autoscaling.maxRpsPerInstance`` in a stack file, every other line kept as it
    is (comments, order, quoting): PyYAML cannot write comments back, so the one line is edited (or
    added under its parent) and the result is read back and must equal the file's data with only that
    key changed, and validate. ``write=False`` checks all of it and writes nothing (before a benchmark
    runs). Returns warnings: the settings under which the key does not drive the scaling."""
    path = Path(path)
    stack = re.fullmatch(r"Pulumi\.(.+)\.ya?ml", path.name)
    text = _read_stack_text(path)
    doc = _yaml_doc(path, text)
    endpoint = doc["config"].get(MAX_RPS_KEY[1])
    if not isinstance(endpoint, dict):
        raise ConfigError(f"{path}: no {MAX_RPS_KEY[1]} section; the stack declares no endpoint to scale")
    scaling = endpoint.get("autoscaling") or {}
    if isinstance(scaling, dict) and scaling.get("targetInvocationsPerInstance") is not None:
        raise ConfigError(
            f"{path}: {MAX_RPS_KEY[1]}.autoscaling.targetInvocationsPerInstance is set and takes precedence "
            "over maxRpsPerInstance; remove it to scale on the measured maxRpsPerInstance"
        )
    number: float | int = int(value) if float(value).is_integer() else float(value)
    edited = _set_block_value(text, MAX_RPS_KEY, _yaml_scalar(number))
    expected = _with_value(doc, MAX_RPS_KEY, number)
    if edited is None or _yaml_doc(path, edited) != expected:
        raise ConfigError(
            f"{path}: cannot edit {MAX_RPS_KEY[1]}.autoscaling.maxRpsPerInstance in place (the file is "
            f"not in plain block style there); set it by hand to {number}"
        )
    cfg = parse(expected["config"], stack=stack.group(1) if stack else path.stem, source=path.name)
    if write:
        _replace_text(path, edited)
    return _scaling_warnings(cfg)


def _read_stack_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: no such stack file; create it (see Pulumi.dev.yaml) or pick --stack")
    try:
        return path.read_bytes().decode("utf-8")  # as it is: CRLF line ends stay
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err})") from None


def _yaml_doc(path: Path, text: str) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed stack file: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ConfigError(f"{path}: malformed stack file: expected a mapping with a 'config:' mapping")
    return doc


def _yaml_scalar(value: float | int) -> str:
    import yaml

    return yaml.safe_dump(value).splitlines()[0]


def _with_value(doc: dict, keys: tuple[str, ...], value: Any) -> dict:
    import copy

    out = copy.deepcopy(doc)
    node = out
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    return out


_COMMENT_OR_BLANK = re.compile(r"\s*(#.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _key_line(line: str, key: str) -> re.Match | None:
    """``key:`` (plain or quoted) at the start of a block mapping line; group 1: what follows the colon
    up to the line end."""
    quoted = "|".join(re.escape(q) for q in (key, f'"{key}"', f"'{key}'"))
    return re.fullmatch(rf" *(?:{quoted}):( .*|)", line.rstrip("\r\n"))


def _set_block_value(text: str, keys: tuple[str, ...], scalar: str) -> str | None:
    """``text`` with the scalar at ``keys`` set to ``scalar`` (the line replaced, its comment kept), or
    the missing keys added at the end of the deepest block that exists; None when the path is not
    plain block mappings."""
    lines = text.splitlines(keepends=True)
    nl = "\r\n" if "\r\n" in text else "\n"  # added lines end as the file's do
    start, end, parent_indent = 0, len(lines), -1
    for depth, key in enumerate(keys):
        content = [i for i in range(start, end) if not _COMMENT_OR_BLANK.match(lines[i])]
        if not content:
            child_indent = parent_indent + 2
        else:
            child_indent = _indent(lines[content[0]])
            if child_indent <= parent_indent:
                return None
        found = None
        for i in content:
            if _indent(lines[i]) == child_indent and _key_line(lines[i], key):
                found = i
                break
        if found is None:
            step = 2 if parent_indent < 0 else max(child_indent - parent_indent, 1)
            at = (content[-1] + 1) if content else start
            if at == len(lines) and lines and not lines[-1].endswith("\n"):
                lines[-1] += nl
            added = []
            for n, name in enumerate(keys[depth:]):
                pad = " " * (child_indent + n * step)
                last = depth + n == len(keys) - 1
                added.append(f"{pad}{name}: {scalar}{nl}" if last else f"{pad}{name}:{nl}")
            lines[at:at] = added
            return "".join(lines)
        line = lines[found]
        if depth == len(keys) - 1:
            rest = _key_line(line, key).group(1)  # type: ignore[union-attr]
            comment = re.search(r"\s+#.*$", rest)
            bare = line.rstrip("\r\n")
            head, ending = bare[: len(bare) - len(rest)], line[len(bare) :]
            lines[found] = f"{head} {scalar}{comment.group(0) if comment else ''}{ending or nl}"
            return "".join(lines)
        if not _COMMENT_OR_BLANK.match(_key_line(line, key).group(1) or ""):  # type: ignore[union-attr]
            return None  # an inline value (a flow mapping, an anchor): not a block to descend into
        parent_indent = child_indent
        start = found + 1
        end = next(
            (
                i
                for i in range(start, end)
                if not _COMMENT_OR_BLANK.match(lines[i]) and _indent(lines[i]) <= parent_indent
            ),
            end,
        )
    return None


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` over ``path`` through a temporary file beside it (same mode), renamed over it."""
    import os
    import tempfile

    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _scaling_warnings(cfg: StackConfig) -> list[str]:
    ep = cfg.endpoint
    where = f"{NAMESPACE}:endpoint"
    if not ep.enabled:
        return [f"{where}.enabled is false: no endpoint, so nothing scales on maxRpsPerInstance"]
    if ep.inference_components.enabled:
        return [
            f"{where}.inferenceComponents is on: its copies scale on their own policy, "
            "not on maxRpsPerInstance"
        ]
    if ep.async_inference.enabled:
        return [f"{where}.asyncInference is on: it scales on its queue backlog, not on maxRpsPerInstance"]
    if ep.serverless.enabled:
        return [f"{where}.serverless is on: SageMaker scales it, maxRpsPerInstance is not used"]
    if not ep.autoscaling.enabled:
        return [f"{where}.autoscaling.enabled is false: maxRpsPerInstance is recorded but drives no scaling"]
    return []


def _apply_override(config: dict[str, Any], dotted: str, value: Any) -> None:
    top, _, rest = dotted.partition(".")
    if not rest:
        config[top] = value
        return
    node = config.setdefault(top, {})
    parts = rest.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def load_stack_file(
    path: Path, *, stack: str | None = None, overrides: Mapping[str, Any] | None = None
) -> StackConfig:
    """Read and validate ``Pulumi.<stack>.yaml`` (the stack name is taken from the file name).

    ``overrides``: dotted keys (``aiops:endpoint.modelDataUrl``) set before validation.
    """
    import yaml

    path = Path(path)
    if stack is None:
        m = re.fullmatch(r"Pulumi\.(.+)\.ya?ml", path.name)
        stack = m.group(1) if m else path.stem
    if not path.is_file():
        raise ConfigError(f"{path}: no such stack file; create it (see Pulumi.dev.yaml) or pick --stack")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}:{line}: malformed stack file: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config", {}), dict):
        raise ConfigError(f"{path}: malformed stack file: expected a mapping with a 'config:' mapping")
    config = doc.get("config") or {}
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            raise ConfigError(f"{path}: {key} is a secret; aiops config sections hold no secrets")
    for dotted, value in (overrides or {}).items():
        _apply_override(config, dotted, value)
    return parse(config, stack=stack, source=str(path.name))


def from_pulumi_config() -> StackConfig:
    """Read the same keys from the running Pulumi engine (``pulumi up``, Automation API)."""
    import json

    import pulumi

    raw: dict[str, Any] = {}
    region = pulumi.Config("aws").get("region")
    if region is not None:
        raw["aws:region"] = region
    cfg = pulumi.Config(NAMESPACE)
    for section in SECTIONS:
        text = cfg.get(section)
        if text is None:
            continue
        try:
            raw[f"{NAMESPACE}:{section}"] = json.loads(text)
        except ValueError:
            raw[f"{NAMESPACE}:{section}"] = text
    return parse(raw, stack=pulumi.get_stack(), source=f"stack {pulumi.get_stack()!r}")
