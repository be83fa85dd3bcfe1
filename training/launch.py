"""How a job is launched, besides the job itself: nested typed configs in the shapes of the SageMaker
SDK v3's `ModelTrainer` (`sagemaker.train.configs`: `Compute`, `StoppingCondition`, `Networking`),
grouped in one `LaunchOptions`.

The command line fills them (None: not given, so settings and the deployed stack decide); the
SageMaker backend resolves them into `remote_request.RemoteOptions`, made of the same configs with
every value decided. Each config checks what it can alone when it is made (`__post_init__`), with
the option's one-line error.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from aiops.training.images import Framework

from aiops.errors import UsageError

MAX_KEEP_ALIVE_SECONDS = 3600  # SageMaker keeps a warm pool at most an hour after a job

# a field a local run reads too (the rest are SageMaker's: the local backend refuses them)
LOCAL = {"local": True}


@dataclass(frozen=True)
class Compute:
    """The job's instances (the SDK's `Compute`, CreateTrainingJob's ResourceConfig)."""

    instance_type: str | None = field(default=None, metadata=LOCAL)  # one type, or A,B,C to fall back
    instance_count: int = 1
    volume_size_in_gb: int | None = None
    enable_managed_spot_training: bool | None = None  # None: settings decide (on-demand with a warm pool)
    keep_alive_period_in_seconds: int | None = None  # a warm pool kept after the job

    def __post_init__(self) -> None:
        if self.instance_count < 1:
            raise UsageError(f"--instance-count {self.instance_count}: needs at least 1.")
        keep_alive = self.keep_alive_period_in_seconds
        if keep_alive is not None and not 0 <= keep_alive <= MAX_KEEP_ALIVE_SECONDS:
            raise UsageError(
                f"--keep-alive {keep_alive}s: SageMaker keeps a warm pool 0 to "
                f"{MAX_KEEP_ALIVE_SECONDS} s (1h) after a job; give at most 1h."
            )
        if keep_alive and self.enable_managed_spot_training:
            # "SageMaker Managed Warm Pools cannot be used with spot instances." (Developer Guide,
            # Managed Warm Pools, Considerations: docs.aws.amazon.com/sagemaker/latest/dg/
            # train-warm-pools.html#train-warm-pools-considerations)
            raise UsageError(
                "--keep-alive: SageMaker keeps warm pools of on-demand instances only; "
                "use --on-demand (the default with --keep-alive) or drop --keep-alive."
            )


@dataclass(frozen=True)
class StoppingCondition:
    """How long the job may run, and a spot job wait (the SDK's `StoppingCondition`)."""

    max_runtime_in_seconds: int | None = None
    max_wait_time_in_seconds: int | None = None  # spot only; None: twice the run time

    def __post_init__(self) -> None:
        max_run = self.max_runtime_in_seconds
        if max_run is not None and max_run < 1:
            raise UsageError(f"--max-run {max_run}: needs at least 1 second.")

    def check_spot(self, spot: bool, max_run: int) -> None:
        """What only the resolved purchase option decides: a wait is a spot job's, and covers its run."""
        max_wait = self.max_wait_time_in_seconds
        if spot and max_wait is not None and max_wait < max_run:
            raise UsageError(
                f"--max-wait {max_wait}s is shorter than --max-run {max_run}s; a spot job's wait "
                "includes its run time, so raise --max-wait or lower --max-run."
            )
        if not spot and max_wait is not None:
            raise UsageError("--max-wait only applies to spot jobs; drop it or use --spot.")


@dataclass(frozen=True)
class Networking:
    """The job's network (the SDK's `Networking`). Subnets and security groups come from the stack."""

    vpc: bool | None = None  # None: the stack's VPC when it has one; True: required; False: never
    enable_network_isolation: bool = False
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Access:
    """Where the job runs and as whom: the stack whose outputs give the role, bucket and key."""

    role: str | None = None
    bucket: str | None = None
    region: str | None = field(default=None, metadata=LOCAL)
    stack: str | None = None
    kms_key_id: str | None = None  # the stack's; encrypts the output and the volumes


@dataclass(frozen=True)
class Image:
    """The training image: given (`--image-uri`, the SDK's `training_image`) or the framework's DLC."""

    training_image: str | None = None
    framework_version: str | None = field(default=None, metadata=LOCAL)
    # resolved from the job's framework (training.images.resolve_framework), never given
    py_version: str | None = None
    framework: Framework = field(default_factory=Framework)


@dataclass(frozen=True)
class Budget:
    """The budget guard: refuse a launch that may cost more than `max_cost` USD unless confirmed."""

    max_cost: float | None = None
    confirmed: bool = field(default=False, metadata=LOCAL)  # --yes

    def __post_init__(self) -> None:
        if self.max_cost is not None and self.max_cost <= 0:
            raise UsageError(f"--max-cost {self.max_cost:g}: the budget must be a positive number of USD.")


@dataclass(frozen=True)
class GpuFit:
    """The GPU-fit check: the model's parameter count, and whether its state is sharded (FSDP)."""

    model_params: float | None = None
    fsdp: bool = False


@dataclass(frozen=True)
class LaunchOptions:
    """The command line's launch values, one config a concern. Local runs read `output_dir`, the
    instance type, the region and the framework version; the rest belong to SageMaker jobs."""

    compute: Compute = field(default_factory=Compute)
    stopping_condition: StoppingCondition = field(default_factory=StoppingCondition)
    networking: Networking = field(default_factory=Networking)
    access: Access = field(default_factory=Access)
    image: Image = field(default_factory=Image)
    budget: Budget = field(default_factory=Budget)
    gpu_fit: GpuFit = field(default_factory=GpuFit)
    remote_debug: bool = False  # RemoteDebugConfig: `aiops jobs connect` opens a shell on a host
    max_attempts: int | None = None  # capacity fallback: at most this many jobs (default: one a type)
    # following the job
    wait: bool = field(default=True, metadata=LOCAL)
    download: bool = field(default=False, metadata=LOCAL)  # a local run's model is in its folder already
    output_dir: Path | None = field(default=None, metadata=LOCAL)  # also OUTPUT_DIR/<job>/output/

    def __post_init__(self) -> None:
        if self.output_dir is not None and self.output_dir.exists() and not self.output_dir.is_dir():
            raise UsageError(f"--output-dir {self.output_dir}: exists and is not a folder.")

    def sagemaker_options_given(self) -> bool:
        """Whether any value only a SageMaker job reads differs from its default."""
        return _differs(self)


def _differs(config: Any) -> bool:
    for spec in fields(config):
        if spec.metadata.get("local"):
            continue
        value = getattr(config, spec.name)
        if hasattr(value, "__dataclass_fields__"):
            if _differs(value):
                return True
            continue
        default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
        if value != default:
            return True
    return False
