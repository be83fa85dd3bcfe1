"""The SageMaker training contract's inputs, as the PyTorch training container's toolkit reads them.

The job one host sees (`TrainingJobSpec`): the hyperparameters the SageMaker SDK adds for the
framework, the SDK's `distribution=` rule, host names, the hyperparameters as SageMaker sends them,
and a CreateTrainingJob request read back as the container does. What the container computes from
it (config files, the ``SM_*`` environment, the command line) is `training.container`'s; what a user
may pass (hyperparameter and channel names, ``--env``, ``--secret``) `training.job_inputs`'.
tests/test_contract_oracle.py checks it key by key against sagemaker-training (5.x).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aiops.errors import UsageError

# Hyperparameters the SageMaker SDK adds for the framework (the toolkit moves every `sagemaker_*`
# key out of the user's hyperparameters into SM_FRAMEWORK_PARAMS or its own settings).
SAGEMAKER_PREFIX = "sagemaker_"
PROGRAM_PARAM = "sagemaker_program"
SUBMIT_DIR_PARAM = "sagemaker_submit_directory"
REGION_PARAM = "sagemaker_region"
LOG_LEVEL_PARAM = "sagemaker_container_log_level"
JOB_NAME_PARAM = "sagemaker_job_name"
TORCH_DISTRIBUTED_PARAM = "sagemaker_torch_distributed_enabled"
# The toolkit reads the process count per host from this key for every runner (torchrun too).
PROCESSES_PER_HOST_PARAM = "sagemaker_mpi_num_of_processes_per_host"
MPI_PARAM = "sagemaker_mpi_enabled"
MPI_OPTIONS_PARAM = "sagemaker_mpi_custom_mpi_options"
INSTANCE_TYPE_PARAM = "sagemaker_instance_type"  # the SDK adds it with torch_distributed
# The SDK's `distribution=` choices aiops speaks (SageMaker SDK v2 PyTorch estimator names).
DISTRIBUTION_NONE = "none"
DISTRIBUTION_TORCH = "torch_distributed"
DISTRIBUTION_MPI = "mpi"
DISTRIBUTIONS = (DISTRIBUTION_NONE, DISTRIBUTION_TORCH, DISTRIBUTION_MPI)
# The toolkit's params.SAGEMAKER_HYPERPARAMETERS: consumed by the toolkit, not framework params.
TOOLKIT_PARAMS = frozenset(
    {
        PROGRAM_PARAM,
        SUBMIT_DIR_PARAM,
        "sagemaker_enable_cloudwatch_metrics",
        REGION_PARAM,
        LOG_LEVEL_PARAM,
        JOB_NAME_PARAM,
        "default_user_module_name",
        "_tuning_objective_metric",
        "sagemaker_s3_output",
    }
)
DISTRIBUTION_FLAGS = (
    "sagemaker_mpi_enabled",
    "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_multi_worker_mirrored_strategy_enabled",
    TORCH_DISTRIBUTED_PARAM,
)
DISTRIBUTION_INSTANCE_GROUPS_PARAM = "sagemaker_distribution_instance_groups"
# What the PyTorch DLC sets as its training module (SM_FRAMEWORK_MODULE).
PYTORCH_TRAINING_MODULE = "sagemaker_pytorch_container.training:main"
INSTANCE_GROUP = "homogeneousCluster"
TORCHRUN_MASTER_PORT = 7777  # the toolkit's torch_distributed.MASTER_PORT
# sagemaker_pytorch_container.training.MASTER_PORT: MASTER_PORT for every job, one host or many.
PYTORCH_MASTER_PORT = 7777
# sagemaker_training.SM_EFA_NCCL_INSTANCES / SM_EFA_RDMA_INSTANCES (5.x): the types whose torchrun
# jobs get FI_PROVIDER=efa, and EFA's device RDMA too.
EFA_NCCL_INSTANCES = frozenset(
    {
        "ml.g4dn.8xlarge",
        "ml.g4dn.12xlarge",
        "ml.g5.48xlarge",
        "ml.p3dn.24xlarge",
        "ml.p4d.24xlarge",
        "ml.p4de.24xlarge",
        "ml.p5.48xlarge",
        "ml.p5e.48xlarge",
        "ml.trn1.32xlarge",
        "ml.p6e-gb200.36xlarge",
    }
)
EFA_RDMA_INSTANCES = frozenset(
    {
        "ml.p4d.24xlarge",
        "ml.p4de.24xlarge",
        "ml.p5.48xlarge",
        "ml.p5e.48xlarge",
        "ml.trn1.32xlarge",
        "ml.p6e-gb200.36xlarge",
    }
)
# Not part of the toolkit: where aiops (and the remote jobs it creates) tell the script to keep
# checkpoints. SageMaker syncs /opt/ml/checkpoints to CheckpointConfig.S3Uri.
CHECKPOINT_ENV = "AIOPS_CHECKPOINT_DIR"
DEFAULT_CHECKPOINT_DIR = "/opt/ml/checkpoints"


@dataclass(frozen=True)
class TrainingJobSpec:
    """What one host of a training job sees: the inputs of the contract."""

    job_name: str
    entry_point: str  # relative to the code dir, e.g. "train.py"
    hyperparameters: Mapping[str, Any]  # the user's, already typed (int, float, str, list, ...)
    channels: tuple[str, ...]  # channel names
    submit_directory: str  # sagemaker_submit_directory: s3://.../sourcedir.tar.gz or file://...
    region: str
    instance_type: str = "local"
    hosts: tuple[str, ...] = ("algo-1",)
    current_host: str = "algo-1"
    network_interface_name: str = "eth0"
    processes_per_host: int | None = None  # processes per host (toolkit default: one per GPU, else 1)
    torch_distributed: bool = False  # older spelling of distribution="torch_distributed"
    distribution: str = DISTRIBUTION_NONE  # one of DISTRIBUTIONS, as `resolve_distribution` decided
    log_level: int = 20
    channel_content_types: Mapping[str, str] = field(default_factory=dict)
    channel_input_modes: Mapping[str, str] = field(default_factory=dict)  # default File
    channel_distributions: Mapping[str, str] = field(default_factory=dict)  # default FullyReplicated

    @property
    def module_name(self) -> str:
        return self.entry_point[:-3] if self.entry_point.endswith(".py") else self.entry_point

    @property
    def effective_distribution(self) -> str:
        if self.torch_distributed and self.distribution == DISTRIBUTION_NONE:
            return DISTRIBUTION_TORCH
        return self.distribution

    @property
    def distributed(self) -> bool:
        """Launched with torchrun (the toolkit's TorchDistributedRunner)."""
        return self.effective_distribution == DISTRIBUTION_TORCH

    def framework_hyperparameters(self) -> dict[str, Any]:
        """The `sagemaker_*` hyperparameters the SageMaker SDK adds to a PyTorch job."""
        params: dict[str, Any] = {
            PROGRAM_PARAM: self.entry_point,
            SUBMIT_DIR_PARAM: self.submit_directory,
            REGION_PARAM: self.region,
            LOG_LEVEL_PARAM: self.log_level,
            JOB_NAME_PARAM: self.job_name,
        }
        # what the SDK v2 PyTorch estimator adds for `distribution=` (nothing without one)
        distribution = self.effective_distribution
        if distribution == DISTRIBUTION_TORCH:
            params[TORCH_DISTRIBUTED_PARAM] = True
            params[INSTANCE_TYPE_PARAM] = self.instance_type
        elif distribution == DISTRIBUTION_MPI:
            params[MPI_PARAM] = True
        if distribution != DISTRIBUTION_NONE and self.processes_per_host is not None:
            params[PROCESSES_PER_HOST_PARAM] = self.processes_per_host
        if distribution == DISTRIBUTION_MPI:
            params[MPI_OPTIONS_PARAM] = ""
        return params

    def for_host(self, host: str) -> TrainingJobSpec:
        """The same job as host `host` of it sees it (SM_CURRENT_HOST, --node_rank)."""
        if host not in self.hosts:
            raise ValueError(f"{host!r} is not one of the job's hosts {list(self.hosts)}")
        return replace(self, current_host=host)


def spec_from_request(
    job_name: str,
    hyperparameters: Mapping[str, str],
    channels: tuple[str, ...] | list[str],
    *,
    instance_type: str,
    instance_count: int,
    region: str | None = None,
    network_interface_name: str = "eth0",
) -> TrainingJobSpec:
    """Read a CreateTrainingJob request back as the container does: `HyperParameters` (JSON-encoded
    strings, `sagemaker_*` keys included), the channel names, ResourceConfig. The spec is for
    algo-1; `spec.for_host("algo-i")` gives each other host. Round-trips `hyperparameters_file`."""
    decoded: dict[str, Any] = {}
    for key, raw in hyperparameters.items():
        try:
            decoded[key] = json.loads(raw)
        except (ValueError, TypeError):
            decoded[key] = raw
    if PROGRAM_PARAM not in decoded or SUBMIT_DIR_PARAM not in decoded:
        raise ValueError(f"the request's HyperParameters lack {PROGRAM_PARAM} / {SUBMIT_DIR_PARAM}")
    if decoded.get(TORCH_DISTRIBUTED_PARAM):
        distribution = DISTRIBUTION_TORCH
    elif decoded.get(MPI_PARAM):
        distribution = DISTRIBUTION_MPI
    else:
        distribution = DISTRIBUTION_NONE
    user = {k: v for k, v in decoded.items() if not (k.startswith(SAGEMAKER_PREFIX) or k in TOOLKIT_PARAMS)}
    processes = decoded.get(PROCESSES_PER_HOST_PARAM)
    return TrainingJobSpec(
        job_name=job_name,
        entry_point=str(decoded[PROGRAM_PARAM]),
        hyperparameters=user,
        channels=tuple(channels),
        submit_directory=str(decoded[SUBMIT_DIR_PARAM]),
        region=str(decoded.get(REGION_PARAM) or region or ""),
        instance_type=instance_type,
        hosts=host_names(instance_count),
        network_interface_name=network_interface_name,
        processes_per_host=int(processes) if processes is not None else None,
        distribution=distribution,
        log_level=int(decoded.get(LOG_LEVEL_PARAM, 20)),
    )


def host_names(instance_count: int) -> tuple[str, ...]:
    """SageMaker's host names for a homogeneous cluster: algo-1 .. algo-N, in order."""
    return tuple(f"algo-{i}" for i in range(1, instance_count + 1))


def resolve_distribution(
    distribution: str | None,
    *,
    instance_count: int,
    processes_per_host: int | None,
    gpus_per_instance: int | None = None,
) -> str:
    """The SDK's rule: no distribution unless asked (a multi-instance job runs the script once per
    host). aiops' `--nproc N` asks for torchrun (torch_distributed) when no distribution is given.
    `gpus_per_instance` (a remote job's type, from aiops/data/gpus.json): the container's default
    processes per host without `--nproc`, so one ml.g5.12xlarge has 4 processes to distribute."""
    if distribution is None:
        return DISTRIBUTION_TORCH if processes_per_host is not None else DISTRIBUTION_NONE
    if distribution not in DISTRIBUTIONS:
        raise UsageError(f"--distribution {distribution}: choose one of {', '.join(DISTRIBUTIONS)}.")
    if (
        distribution != DISTRIBUTION_NONE
        and instance_count == 1
        and (processes_per_host or gpus_per_instance or 1) == 1
    ):
        raise UsageError(
            f"--distribution {distribution} with one instance and one process has nothing to distribute; "
            "add --nproc N (processes per host) or --instance-count N (remote), or drop --distribution."
        )
    if distribution == DISTRIBUTION_NONE and processes_per_host is not None and processes_per_host > 1:
        raise UsageError(
            f"--nproc {processes_per_host} with --distribution none: several processes need a launcher; "
            "use --distribution torch_distributed (torchrun) or drop --nproc."
        )
    return distribution


def encode_hyperparameters(values: Mapping[str, Any]) -> dict[str, str]:
    """hyperparameters.json: every value JSON-encoded into a string, as the SageMaker SDK sends."""
    return {key: json.dumps(value) for key, value in values.items()}


def hyperparameters_file(spec: TrainingJobSpec) -> dict[str, str]:
    return encode_hyperparameters({**spec.hyperparameters, **spec.framework_hyperparameters()})
