"""The stack config's endpoint section (``aiops:endpoint``) and its parts: image, autoscaling,
deployment, alarms, data capture, serverless, dashboard, idle alarm, the LLM and Hugging Face
containers, the GPU-fit check and the two scale-to-zero modes; the rules that span them are
`EndpointConfig`'s validators.
"""

from __future__ import annotations

import re
from typing import Literal

from aiops.infra.config_sections import Section
from aiops.infra.instance_types import ML_INSTANCE_TYPE, gpu_hint, has_local_storage, is_gpu_type
from pydantic import Field, field_validator, model_validator

from aiops.names import is_s3_uri, is_sagemaker_name

SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)


class ImageConfig(Section):
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


class AutoscalingConfig(Section):
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


class DeploymentConfig(Section):
    traffic: Literal["all-at-once", "canary", "linear"] = "canary"
    canary_percent: int = Field(10, ge=1, le=50)
    linear_step_percent: int = Field(25, ge=5, le=50)
    wait_seconds: int = Field(300, ge=0, le=3600)
    termination_wait_seconds: int = Field(120, ge=0, le=3600)
    max_execution_timeout_seconds: int = Field(3600, ge=600, le=14400)
    auto_rollback: bool = True


class AlarmsConfig(Section):
    errors_5xx_threshold: float = Field(1.0, ge=0, alias="errors5xxThreshold")
    latency_p99_ms: float = Field(1000.0, gt=0)
    period_seconds: int = Field(60, ge=10)
    evaluation_periods: int = Field(2, ge=1)


class DataCaptureConfig(Section):
    """Captured requests go to the stack contract's data-capture prefix (aiops.stack.S3Layout)."""

    enabled: bool = False
    sampling_percent: int = Field(100, ge=0, le=100)


class ServerlessConfig(Section):
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


class DashboardConfig(Section):
    """A CloudWatch dashboard for the endpoint (invocations, latency, errors, instances)."""

    enabled: bool = True
    period_seconds: int = Field(60, ge=60, le=86400)

    @field_validator("period_seconds")
    @classmethod
    def _minute(cls, value: int) -> int:
        if value % 60:
            raise ValueError("allowed: a multiple of 60 seconds")
        return value


class IdleAlarmConfig(Section):
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


class LlmConfig(Section):
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


class HuggingFaceConfig(Section):
    """The Hugging Face inference container (``container: huggingface``, sagemaker-huggingface-inference-
    toolkit): a transformers pipeline, or the model's ``code/inference.py``. Its image is the SDK's
    ``huggingface`` table's for these versions; CPU and GPU instance types both have one."""

    transformers_version: str = "4.51"
    pytorch_version: str | None = None  # default: the one PyTorch the table pairs with transformersVersion
    task: str | None = None  # HF_TASK; default: the container infers it from the model's config.json


class GpuFitConfig(Section):
    """The GPU-fit check before deploying (``aiops.gpufit``): on by default."""

    enabled: bool = True
    overhead: float = Field(0.2, ge=0, le=2)  # CUDA context, activations, fragmentation


class InferenceComponentsConfig(Section):
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


class AsyncInferenceConfig(Section):
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


class EndpointConfig(Section):
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
            if not ML_INSTANCE_TYPE.match(self.instance_type):
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
            if self.container == "lmi" and self.llm.max_input_tokens:
                raise ValueError(
                    f"llm.maxInputTokens={self.llm.max_input_tokens}: TGI's MAX_INPUT_TOKENS, which LMI has "
                    "no equivalent of; LMI bounds prompt and output together by maxTotalTokens "
                    "(OPTION_MAX_MODEL_LEN): remove maxInputTokens"
                )
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
            tp = self.llm.tensor_parallel_degree
            if self.container in LLM_CONTAINERS and tp is not None and tp > ic.accelerators_per_copy:
                raise ValueError(
                    f"llm.tensorParallelDegree={tp} > inferenceComponents.acceleratorsPerCopy="
                    f"{ic.accelerators_per_copy}: a copy of the model sees only its own GPUs; allowed: "
                    f"1..{ic.accelerators_per_copy} (or more acceleratorsPerCopy)"
                )

    @property
    def scales_to_zero(self) -> bool:
        return self.inference_components.enabled or self.async_inference.enabled

    @property
    def kms_on_volume(self) -> bool:
        """Whether the endpoint config may carry the stack's KMS key (see LOCAL_STORAGE_FAMILIES)."""
        return not self.serverless.enabled and not has_local_storage(self.instance_type)
