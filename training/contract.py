"""The SageMaker training contract, as the PyTorch training container's toolkit computes it.

Everything here is pure: from a job's hyperparameters, channels and resources it computes the
config files SageMaker writes under ``/opt/ml/input/config``, the ``SM_*`` environment and the
command-line arguments that ``sagemaker-training`` (aws/sagemaker-training-toolkit, 5.x:
``environment.Environment.to_env_vars`` / ``to_cmd_args`` and ``mapping``) hands the user's
script. tests/test_contract_oracle.py checks it key by key against that toolkit.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from aiops.errors import UsageError
from aiops.run_folder import ContainerPaths  # the container tree: the core owns it, the run store reads it

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

# A hyperparameter name the toolkit passes through untouched: it becomes `--name` on the command
# line and `SM_HP_<NAME>` in the environment. Anything else is mangled (spaces split the argv,
# `=` breaks env parsing, a `sagemaker_` prefix is swallowed by the framework).
_HP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9\.\-_]+$")  # CreateTrainingJob's ChannelName pattern


# A channel's InputMode and S3DataDistributionType in CreateTrainingJob (the SDK's TrainingInput
# input_mode / distribution). Locally every channel is File and the one host gets every object.
INPUT_MODES = ("File", "FastFile", "Pipe")
S3_DISTRIBUTIONS = ("FullyReplicated", "ShardedByS3Key")


def parse_channel_settings(
    values: Sequence[str], channels: Sequence[str], option: str, allowed: Sequence[str]
) -> dict[str, str]:
    """`--input-mode FastFile` (every channel) or `--input-mode train=FastFile` (one channel; later wins)."""
    settings: dict[str, str] = {}
    for raw in values:
        name, sep, value = raw.rpartition("=")
        value = value.strip()
        if value not in allowed:
            raise UsageError(
                f"{option} {raw!r}: {value!r} is not one of {', '.join(allowed)} "
                f"(e.g. {option} {allowed[-1]} or {option} train={allowed[-1]})."
            )
        targets = [name.strip()] if sep else list(channels)
        for target in targets:
            if target not in channels:
                known = ", ".join(channels) or "none"
                raise UsageError(
                    f"{option} {raw!r}: no channel named {target!r} (channels: {known}); "
                    "add it with --channel NAME=PATH."
                )
            settings[target] = value
    return settings


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


_SECRET_WORDS = frozenset(
    {
        "pass",
        "passwd",
        "password",
        "passphrase",
        "pwd",
        "secret",
        "secrets",
        "token",
        "key",
        "apikey",
        "credential",
        "credentials",
    }
)


def secret_looking_hyperparameters(hyperparameters: Mapping[str, Any]) -> list[str]:
    """Names that look like they carry a secret (hyperparameters and environment variables are shown
    in DescribeTrainingJob, the console and the run record, in the clear). Word-based, so
    `max_tokens` and `TOKENIZERS_PARALLELISM` are not flagged, `HF_TOKEN` and `WANDB_API_KEY` are."""
    flagged = []
    for name in hyperparameters:
        spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
        words = {w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w}
        if words & _SECRET_WORDS or any(w.startswith(("password", "secret")) for w in words):
            flagged.append(name)
    return flagged


def refuse_secret_looking(names: Mapping[str, Any], option: str) -> None:
    """A plain `--hp`/`--env` whose name looks like a secret: its value would be stored and shown in
    the clear, so it goes through `--secret NAME=ARN` (Secrets Manager) instead."""
    flagged = secret_looking_hyperparameters(names)
    if flagged:
        name = flagged[0]
        raise UsageError(
            f"{option} {name} looks like a secret, and {option} values are stored and shown in the clear "
            "(run record, DescribeTrainingJob, the console): put it in AWS Secrets Manager and pass "
            f"--secret {name}=arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME, or rename it if it is not "
            "a secret."
        )


# CreateTrainingJob's Environment: at most 100 entries, names [a-zA-Z_][a-zA-Z0-9_]*, values up to 512
# characters (botocore's sagemaker model)
ENVIRONMENT_MAX_ENTRIES = 100
ENVIRONMENT_MAX_CHARS = 512
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# what the container (the platform, the toolkit, the PyTorch image) and aiops set in every job; a
# value given for them would be overwritten there, so `--env` refuses them
CONTAINER_ENV_PREFIXES = ("SM_", "SAGEMAKER_")
CONTAINER_ENV_NAMES = frozenset(
    {
        "TRAINING_JOB_NAME",
        "CURRENT_HOST",
        CHECKPOINT_ENV,
        "NCCL_SOCKET_IFNAME",
        "NCCL_IB_DISABLE",
        "NCCL_DEBUG",
        "NCCL_PROTO",
        "MASTER_ADDR",
        "MASTER_PORT",
        "AWS_REGION",
        "FI_PROVIDER",
        "FI_EFA_USE_DEVICE_RDMA",
        "RDMAV_FORK_SAFE",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
    }
)


# `--secret NAME=ARN` reaches the script as AIOPS_SECRET_ARN_<NAME>=<ARN>: where the value is, never
# the value (the script reads it with the job's role, or locally from NAME in the user's environment)
SECRET_ARN_ENV_PREFIX = "AIOPS_SECRET_ARN_"


def _check_variable_name(name: str, option: str) -> None:
    longest = ENVIRONMENT_MAX_CHARS - len(SECRET_ARN_ENV_PREFIX)
    if not _ENV_NAME.match(name) or len(name) > longest:
        raise UsageError(
            f"{option} {name}: an environment variable name is letters, digits and '_', not "
            f"starting with a digit (at most {longest} characters)."
        )
    if name.upper().startswith(CONTAINER_ENV_PREFIXES):
        raise UsageError(
            f"{option} {name}: SM_* and SAGEMAKER_* variables belong to the SageMaker "
            "container, which sets them itself; pass the value as a hyperparameter (--hp) "
            "instead."
        )
    if name in CONTAINER_ENV_NAMES:
        raise UsageError(
            f"{option} {name}: the training container sets {name} itself, so a value given here "
            "would be overwritten; choose another name."
        )
    if name.startswith(SECRET_ARN_ENV_PREFIX):
        raise UsageError(
            f"{option} {name}: {SECRET_ARN_ENV_PREFIX}* variables are set by --secret; choose another name."
        )


def validate_environment(environment: Mapping[str, str], secrets: Mapping[str, str] | None = None) -> None:
    """`--env KEY=VALUE`: a name CreateTrainingJob accepts, not one the container owns, not a secret;
    `--secret NAME=ARN`: a variable name and a Secrets Manager secret's full ARN."""
    from aiops.names import is_secret_arn

    secrets = secrets or {}
    for name, value in environment.items():
        _check_variable_name(name, "--env")
        if len(str(value)) > ENVIRONMENT_MAX_CHARS:
            raise UsageError(
                f"--env {name}: the value has {len(str(value))} characters, more than the "
                f"{ENVIRONMENT_MAX_CHARS} SageMaker accepts; put large values in a channel."
            )
    for name, arn in secrets.items():
        _check_variable_name(name, "--secret")
        if name in environment:
            raise UsageError(f"--secret {name} is also given with --env; give it once, as a secret.")
        if not is_secret_arn(arn):  # the value given is not echoed: it may be the secret itself
            raise UsageError(
                f"--secret {name}: what follows '=' is not a Secrets Manager secret ARN (a "
                "secret's value never goes on the command line); give the full ARN "
                "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-AbCdEf, as "
                "`aws secretsmanager describe-secret --secret-id NAME` prints it)."
            )
    if len(environment) + len(secrets) >= ENVIRONMENT_MAX_ENTRIES:  # aiops adds AIOPS_CHECKPOINT_DIR
        raise UsageError(
            f"--env/--secret: {len(environment) + len(secrets)} variables; a SageMaker job "
            f"takes at most {ENVIRONMENT_MAX_ENTRIES - 1} besides the one aiops sets."
        )
    refuse_secret_looking(environment, "--env")


def secret_environment(secrets: Mapping[str, str]) -> dict[str, str]:
    """What `--secret NAME=ARN` puts in the script's environment: AIOPS_SECRET_ARN_<NAME>=<ARN>."""
    return {f"{SECRET_ARN_ENV_PREFIX}{name}": arn for name, arn in secrets.items()}


# ---------------------------------------------------------------------------------------------
# Validation


def validate_hyperparameter_name(name: str) -> None:
    if not _HP_NAME.match(name):
        raise UsageError(
            f"hyperparameter name {name!r} would be mangled by the SageMaker toolkit "
            "(it becomes --NAME and SM_HP_NAME): use letters, digits, '_', '-' and '.', starting "
            "with a letter or '_'."
        )
    if name.startswith(SAGEMAKER_PREFIX) or name in TOOLKIT_PARAMS:
        raise UsageError(
            f"hyperparameter name {name!r} is reserved: the SageMaker toolkit takes every "
            f"'{SAGEMAKER_PREFIX}*' key for itself and never passes it to your script; rename it."
        )


def validate_hyperparameters(hyperparameters: Mapping[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name in hyperparameters:
        validate_hyperparameter_name(name)
        env_name = _hp_env_name(name)
        if env_name in seen:
            raise UsageError(
                f"hyperparameters {seen[env_name]!r} and {name!r} both become {env_name}; rename one of them."
            )
        seen[env_name] = name


def validate_channel_name(name: str) -> None:
    if not _CHANNEL_NAME.match(name) or len(name) > 64:
        raise UsageError(
            f"channel name {name!r} is not valid for SageMaker: use up to 64 letters, digits, "
            "'.', '-' and '_' (e.g. --channel train=./data/train)."
        )


def parse_hyperparameter_value(raw: str) -> Any:
    """A `--hp KEY=VALUE` value: JSON if it parses (3, 0.1, true, [1,2]), else the raw string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# ---------------------------------------------------------------------------------------------
# Config files (what SageMaker writes to /opt/ml/input/config)


def encode_hyperparameters(values: Mapping[str, Any]) -> dict[str, str]:
    """hyperparameters.json: every value JSON-encoded into a string, as the SageMaker SDK sends."""
    return {key: json.dumps(value) for key, value in values.items()}


def hyperparameters_file(spec: TrainingJobSpec) -> dict[str, str]:
    return encode_hyperparameters({**spec.hyperparameters, **spec.framework_hyperparameters()})


def resource_config(spec: TrainingJobSpec) -> dict[str, Any]:
    return {
        "current_host": spec.current_host,
        "current_instance_type": spec.instance_type,
        "current_group_name": INSTANCE_GROUP,
        "hosts": list(spec.hosts),
        "instance_groups": [
            {
                "instance_group_name": INSTANCE_GROUP,
                "instance_type": spec.instance_type,
                "hosts": list(spec.hosts),
            }
        ],
        "network_interface_name": spec.network_interface_name,
    }


def input_data_config(spec: TrainingJobSpec) -> dict[str, dict[str, str]]:
    config: dict[str, dict[str, str]] = {}
    for name in spec.channels:
        entry = {
            "TrainingInputMode": spec.channel_input_modes.get(name, "File"),
            "S3DistributionType": spec.channel_distributions.get(name, "FullyReplicated"),
            "RecordWrapperType": "None",
        }
        if name in spec.channel_content_types:
            entry["ContentType"] = spec.channel_content_types[name]
        config[name] = entry
    return config


def write_config_files(spec: TrainingJobSpec, paths: ContainerPaths) -> None:
    paths.input_config.mkdir(parents=True, exist_ok=True)
    files = {
        "hyperparameters.json": hyperparameters_file(spec),
        "resourceconfig.json": resource_config(spec),
        "inputdataconfig.json": input_data_config(spec),
    }
    for name, content in files.items():
        (paths.input_config / name).write_text(json.dumps(content))


# ---------------------------------------------------------------------------------------------
# Environment and arguments (the toolkit's Environment.to_env_vars / to_cmd_args)


def _hp_env_name(name: str) -> str:
    return f"SM_HP_{name.upper()}"


def _toolkit_str(value: Any) -> str:
    """mapping._decode: how the toolkit turns one value into an argv string."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin1")
    return str(value)


def _env_value(value: Any) -> str:
    """mapping.to_env_vars' format_value."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def decoded_hyperparameters(spec: TrainingJobSpec) -> dict[str, Any]:
    """What the toolkit reads back from hyperparameters.json (json.loads, fallback raw)."""
    decoded: dict[str, Any] = {}
    for key, raw in hyperparameters_file(spec).items():
        try:
            decoded[key] = json.loads(raw)
        except (ValueError, TypeError):
            decoded[key] = raw
    return decoded


def user_args(hyperparameters: Mapping[str, Any]) -> list[str]:
    """mapping.to_cmd_args: sorted `--key value`; one-letter keys get `-k`; dicts as k=v,k=v."""
    args: list[str] = []
    for key in sorted(hyperparameters):
        name = _toolkit_str(key)
        args.append(("--" if len(name) > 1 else "-") + name if name else "")
        value = hyperparameters[key]
        if hasattr(value, "items"):
            args.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            args.append(_toolkit_str(value))
    return args


def num_gpus() -> int:
    """The toolkit counts `nvidia-smi --list-gpus` lines; so do we (no torch import needed)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


@dataclass(frozen=True)
class HostFacts:
    num_gpus: int
    num_cpus: int
    num_neurons: int = 0

    @classmethod
    def detect(cls) -> HostFacts:
        return cls(num_gpus=num_gpus(), num_cpus=multiprocessing.cpu_count())


def training_env(spec: TrainingJobSpec, paths: ContainerPaths, host: HostFacts) -> dict[str, Any]:
    """dict(Environment()): the object serialised into SM_TRAINING_ENV."""
    all_hps = decoded_hyperparameters(spec)
    framework = {k: v for k, v in all_hps.items() if k.startswith(SAGEMAKER_PREFIX) or k in TOOLKIT_PARAMS}
    user_hps = {k: v for k, v in all_hps.items() if k not in framework}
    additional = {k: v for k, v in framework.items() if k not in TOOLKIT_PARAMS}
    resources = resource_config(spec)
    groups = [g["instance_group_name"] for g in resources["instance_groups"]]
    groups_dict = {g["instance_group_name"]: g for g in resources["instance_groups"]}
    if DISTRIBUTION_INSTANCE_GROUPS_PARAM in additional:
        distribution_groups = additional[DISTRIBUTION_INSTANCE_GROUPS_PARAM]
    else:
        distribution_groups = [INSTANCE_GROUP] if any(additional.get(f) for f in DISTRIBUTION_FLAGS) else []
    distribution_hosts = [
        h
        for g in resources["instance_groups"]
        if g["instance_group_name"] in distribution_groups
        for h in g["hosts"]
    ]
    master = distribution_hosts[0] if distribution_hosts else list(spec.hosts)[0]
    channel_dirs = {name: str(paths.channel(name)) for name in input_data_config(spec)}
    return {
        "additional_framework_parameters": additional,
        "channel_input_dirs": channel_dirs,
        "current_host": spec.current_host,
        "current_instance_group": INSTANCE_GROUP,
        "current_instance_group_hosts": list(spec.hosts),
        "current_instance_type": spec.instance_type,
        "distribution_hosts": distribution_hosts,
        "distribution_instance_groups": distribution_groups,
        "framework_module": PYTORCH_TRAINING_MODULE,
        "hosts": list(spec.hosts),
        "hyperparameters": user_hps,
        "input_config_dir": str(paths.input_config),
        "input_data_config": input_data_config(spec),
        "input_dir": str(paths.input),
        "instance_groups": groups,
        "instance_groups_dict": groups_dict,
        "is_hetero": len(groups) > 1,
        "is_master": spec.current_host == master,
        "is_modelparallel_enabled": None,  # the toolkit's `os.environ.get("SM_HP_MP_PARAMETERS") and ...`
        "is_smddpmprun_installed": False,
        "is_smddprun_installed": False,
        "job_name": spec.job_name,
        "log_level": framework.get(LOG_LEVEL_PARAM, 20),
        "master_hostname": master,
        "model_dir": str(paths.model),
        "module_dir": str(framework.get(SUBMIT_DIR_PARAM, paths.code)),
        "module_name": spec.module_name,
        "network_interface_name": spec.network_interface_name,
        "num_cpus": host.num_cpus,
        "num_gpus": host.num_gpus,
        "num_neurons": host.num_neurons,
        "output_data_dir": str(paths.output_data),
        "output_dir": str(paths.output),
        "output_intermediate_dir": str(paths.output_intermediate),
        "resource_config": resources,
        "topology": [],
        "user_entry_point": spec.entry_point,
    }


def sm_environment(spec: TrainingJobSpec, paths: ContainerPaths, host: HostFacts) -> dict[str, str]:
    """Environment.to_env_vars(): every SM_* variable the script sees."""
    env = training_env(spec, paths, host)
    values: dict[str, Any] = {
        "hosts": env["hosts"],
        "network_interface_name": env["network_interface_name"],
        "hps": env["hyperparameters"],
        "user_entry_point": env["user_entry_point"],
        "framework_params": env["additional_framework_parameters"],
        "resource_config": env["resource_config"],
        "input_data_config": env["input_data_config"],
        "output_data_dir": env["output_data_dir"],
        "channels": sorted(env["channel_input_dirs"]),
        "current_host": env["current_host"],
        "current_instance_type": env["current_instance_type"],
        "current_instance_group": env["current_instance_group"],
        "current_instance_group_hosts": env["current_instance_group_hosts"],
        "instance_groups": env["instance_groups"],
        "instance_groups_dict": env["instance_groups_dict"],
        "distribution_instance_groups": env["distribution_instance_groups"],
        "is_hetero": env["is_hetero"],
        "module_name": env["module_name"],
        "log_level": env["log_level"],
        "framework_module": env["framework_module"],
        "input_dir": env["input_dir"],
        "input_config_dir": env["input_config_dir"],
        "output_dir": env["output_dir"],
        "num_cpus": env["num_cpus"],
        "num_gpus": env["num_gpus"],
        "num_neurons": env["num_neurons"],
        "model_dir": env["model_dir"],
        "module_dir": env["module_dir"],
        "training_env": env,
        "user_args": user_args(env["hyperparameters"]),
        "output_intermediate_dir": env["output_intermediate_dir"],
    }
    for name, path in env["channel_input_dirs"].items():
        values[f"channel_{name}"] = path
    for key, value in env["hyperparameters"].items():
        values[f"hp_{key}"] = value
    return {f"SM_{str(k).upper()}": _env_value(v) for k, v in values.items()}


def container_environment(spec: TrainingJobSpec, paths: ContainerPaths, host: HostFacts) -> dict[str, str]:
    """All variables aiops sets for the script: SM_*, the toolkit's own, and the checkpoint dir."""
    env = sm_environment(spec, paths, host)
    env.update(
        {
            # set by the platform / the DLC image / the toolkit in a real job
            "TRAINING_JOB_NAME": spec.job_name,
            "SAGEMAKER_JOB_NAME": spec.job_name,
            "CURRENT_HOST": spec.current_host,
            "SAGEMAKER_REGION": spec.region,
            "SAGEMAKER_TRAINING_MODULE": PYTORCH_TRAINING_MODULE,
            # lets `from sagemaker_training import environment` find this tree instead of /opt/ml
            "SAGEMAKER_BASE_DIR": str(paths.base),
            CHECKPOINT_ENV: str(paths.checkpoints),
        }
    )
    return env


def local_torch_version() -> str:
    """The torch version here, as the container's SM_DLC_TORCH_VERSION names its own (no import)."""
    try:
        return metadata.version("torch")  # the container sets torch.__version__ (e.g. 2.13.0+cpu)
    except metadata.PackageNotFoundError:
        return ""


def pytorch_container_environment(
    spec: TrainingJobSpec,
    *,
    master_addr: str | None = None,
    master_port: int | None = None,
    torch_version: str | None = None,
) -> dict[str, str]:
    """What the PyTorch training container adds before it runs the script
    (sagemaker_pytorch_container.training: _set_nccl_environment, _set_distributed_environment,
    _set_torch_version_environment) and what the platform sets (AWS_REGION).

    `master_addr`/`master_port` default to the container's (first host, 7777); a local run on one
    machine passes 127.0.0.1 and a free port, since `algo-1` does not resolve outside the container.
    """
    env = {
        "NCCL_SOCKET_IFNAME": spec.network_interface_name,
        "NCCL_IB_DISABLE": "1",
        "NCCL_DEBUG": "WARN",
        "MASTER_ADDR": master_addr or spec.hosts[0],  # hosts are sorted: algo-1
        "MASTER_PORT": str(master_port or PYTORCH_MASTER_PORT),
        "SM_DLC_TORCH_VERSION": local_torch_version() if torch_version is None else torch_version,
        "AWS_REGION": spec.region,
    }
    if spec.distributed:
        env["NCCL_PROTO"] = "simple"  # the toolkit's TorchDistributedRunner sets it
        # ... and, on the instance types with EFA, points NCCL's libfabric at it
        # (TorchDistributedRunner._setup)
        if spec.instance_type in EFA_NCCL_INSTANCES:
            env["FI_PROVIDER"] = "efa"
        if spec.instance_type in EFA_RDMA_INSTANCES:
            env.update(FI_EFA_USE_DEVICE_RDMA="1", RDMAV_FORK_SAFE="1")
    return env


@dataclass(frozen=True)
class HostLaunch:
    """Everything one host's script is started with: argv, environment (base env merged), cwd."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


def host_launch(
    spec: TrainingJobSpec,
    paths: ContainerPaths,
    host: HostFacts,
    *,
    python: str,
    base_env: Mapping[str, str] | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    torch_version: str | None = None,
) -> HostLaunch:
    """The full container contract for `spec.current_host`: the toolkit's SM_* env and argv, the
    PyTorch container's env, the code dir first on PYTHONPATH, cwd the code dir. `base_env` (e.g.
    os.environ) is the environment it is layered on. Local runs, remote-job emulation and tests
    all start scripts through this one function."""
    env = dict(base_env or {})
    env.update(container_environment(spec, paths, host))
    env.update(
        pytorch_container_environment(
            spec, master_addr=master_addr, master_port=master_port, torch_version=torch_version
        )
    )
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(paths.code), (base_env or {}).get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"  # live logs, as the container's stdout reaches CloudWatch
    argv = launch_command(spec, python, master_addr=master_addr, master_port=master_port)
    return HostLaunch(argv=argv, env=env, cwd=paths.code)


def launch_command(
    spec: TrainingJobSpec, python: str, *, master_addr: str | None = None, master_port: int | None = None
) -> list[str]:
    """The command the toolkit runs: `python -- ENTRY ARGS`, or torchrun for torch_distributed."""
    args = user_args(training_env_user_hps(spec))
    if spec.effective_distribution == DISTRIBUTION_MPI:
        raise UsageError(
            "--distribution mpi is launched by mpirun inside the SageMaker container; aiops runs it only "
            "with --remote. Use --distribution torch_distributed to run locally."
        )
    if not spec.distributed:
        return [python, "--", spec.entry_point, *args]
    cmd = [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(len(spec.hosts)),
        "--nproc_per_node",
        str(spec.processes_per_host or 1),
    ]
    if len(spec.hosts) > 1:
        cmd += [
            "--master_addr",
            master_addr or spec.hosts[0],
            "--master_port",
            str(master_port or TORCHRUN_MASTER_PORT),
            "--node_rank",
            str(spec.hosts.index(spec.current_host)),
        ]
    elif master_port is not None:
        # One host: the toolkit leaves torchrun's defaults (127.0.0.1:29500); a free port lets
        # several local jobs run side by side.
        cmd += ["--master_addr", master_addr or "127.0.0.1", "--master_port", str(master_port)]
    return [*cmd, spec.entry_point, *args]


def training_env_user_hps(spec: TrainingJobSpec) -> dict[str, Any]:
    decoded = decoded_hyperparameters(spec)
    return {k: v for k, v in decoded.items() if not (k.startswith(SAGEMAKER_PREFIX) or k in TOOLKIT_PARAMS)}
