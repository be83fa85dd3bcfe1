"""What the SageMaker training container does for one host before the user's script runs.

From a `TrainingJobSpec` it computes the config files SageMaker writes under
``/opt/ml/input/config``, the ``SM_*`` environment and the command-line arguments that
``sagemaker-training`` (aws/sagemaker-training-toolkit, 5.x: ``environment.Environment.to_env_vars``
/ ``to_cmd_args`` and ``mapping``) hands the script, and what the PyTorch training container adds
(``sagemaker_pytorch_container.training``). `host_launch` is the one way a script is started under
it: local runs, remote-job emulation and tests. tests/test_contract_oracle.py checks it key by key
against that toolkit.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from aiops.training.contract import (
    CHECKPOINT_ENV,
    DISTRIBUTION_FLAGS,
    DISTRIBUTION_INSTANCE_GROUPS_PARAM,
    DISTRIBUTION_MPI,
    EFA_NCCL_INSTANCES,
    EFA_RDMA_INSTANCES,
    INSTANCE_GROUP,
    LOG_LEVEL_PARAM,
    PYTORCH_MASTER_PORT,
    PYTORCH_TRAINING_MODULE,
    SAGEMAKER_PREFIX,
    SUBMIT_DIR_PARAM,
    TOOLKIT_PARAMS,
    TORCHRUN_MASTER_PORT,
    TrainingJobSpec,
    hyperparameters_file,
)

from aiops.errors import UsageError
from aiops.run_folder import ContainerPaths  # the container tree: the core owns it, the run store reads it

# ---------------------------------------------------------------------------------------------
# Config files (what SageMaker writes to /opt/ml/input/config)


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
