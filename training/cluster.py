"""Processes per host for a remote distributed job, and the instance types that can run it.

Pure (no AWS, no torch): from the job's `--distribution`, `--instance-type`, `--instance-count`
and `--nproc` it works out what the PyTorch training container will launch, or refuses with one
line before anything is uploaded.

- **Processes per host.** The toolkit's runner (sagemaker-training 5.x ``runner._get_by_runner_type``)
  launches ``sagemaker_mpi_num_of_processes_per_host`` processes per host when that hyperparameter
  is set, else one per GPU (``nvidia-smi --list-gpus``), else one per Neuron device, else 1; its
  TorchDistributedRunner passes that number to ``torchrun --nproc_per_node``. aiops writes the key
  itself, from ``--nproc`` or else the instance type's GPU count in the shipped table
  (``aiops/data/gpus.json``, the one `aiops.gpufit` reads), so the request says what will run
  (the world size, the emulator's process trees) instead of leaving it to the host. A type the
  table does not list (Trainium, a new family) gets no key: the container counts its own devices.
- **Who may use torch_distributed.** The SageMaker SDK's ``validate_torch_distributed_distribution``
  (sagemaker-core 2.27 ``fw_utils``): GPU families (``ml.p*``, ``ml.g*``) and Trainium (``ml.trn*``)
  only, a Python entry point, and a framework version of its lists (GPU 1.13.1 .. 2.8.0, Trainium
  1.11 .. 2.0.0). Like the SDK, the instance and version checks are skipped for ``--image-uri``
  (your own image decides). aiops checks the lists' lower bounds, since ``--framework-version 2.5``
  is an alias the image tables resolve (to 2.5.1), which the SDK's exact-string list would miss.
- **More processes than GPUs** on a GPU type is refused: NCCL refuses two ranks on one device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiops.training import contract

from aiops.errors import UsageError

_FAMILY = re.compile(r"^ml[._]([a-z\d-]+)\.?\w*$")  # the SDK's pattern: ml.<family>.<size>
# Lower bounds of the SDK's TORCH_DISTRIBUTED_GPU_SUPPORTED_FRAMEWORK_VERSIONS and
# TRAINIUM_SUPPORTED_TORCH_DISTRIBUTED_FRAMEWORK_VERSIONS (upper bounds: 2.8.0 and 2.0.0 there).
GPU_MIN_VERSION = (1, 13, 1)
TRAINIUM_VERSIONS = ((1, 11), (2, 0, 0))
GPU_EXAMPLES = "ml.g5.12xlarge (4 GPUs), ml.p4d.24xlarge (8 GPUs)"


def family(instance_type: str) -> str | None:
    match = _FAMILY.match(instance_type or "")
    return match.group(1) if match else None


def is_gpu_type(instance_type: str) -> bool:
    """The SDK's ``_is_gpu_instance``: the family starts with p or g."""
    name = family(instance_type)
    return name is not None and name[:1] in ("p", "g")


def is_trainium_type(instance_type: str) -> bool:
    name = family(instance_type)
    return name is not None and name.startswith("trn")


def _version(text: str) -> tuple[int, ...] | None:
    parts = text.split(".")
    if not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class ProcessPlan:
    """What a remote job launches on each host."""

    distribution: str
    instance_type: str
    instance_count: int
    processes_per_host: int | None  # None: left to the container (the script once per host, or its own count)
    gpus_per_instance: int | None  # from aiops/data/gpus.json; None: not in the table
    source: str  # "--nproc", "gpus.json", "container" or "none"

    @property
    def world_size(self) -> int | None:
        if self.distribution == contract.DISTRIBUTION_NONE:
            return None
        return None if self.processes_per_host is None else self.instance_count * self.processes_per_host

    def line(self) -> str:
        """One line for the user and the run record."""
        hosts = f"{self.instance_count} x {self.instance_type}"
        if self.distribution == contract.DISTRIBUTION_NONE:
            return f"{hosts}: the script once per host (no --distribution)"
        why = {
            "--nproc": "--nproc",
            "gpus.json": "one per GPU",
            "container": "one per device, counted by the container",
        }
        per_host = "?" if self.processes_per_host is None else str(self.processes_per_host)
        world = f", world size {self.world_size}" if self.world_size is not None else ""
        return f"{hosts}, {self.distribution}: {per_host} process(es) per host ({why[self.source]}){world}"


def plan_processes(
    distribution: str,
    instance_type: str,
    instance_count: int,
    nproc: int | None,
    *,
    entry_point: str,
    framework_version: str | None = None,
    image_uri: str | None = None,
) -> ProcessPlan:
    """Processes per host for the request (`nproc` wins, else the type's GPUs); UsageError (exit 2)
    for a job the PyTorch container or the SDK would refuse. `distribution` is already resolved
    (`contract.resolve_distribution`)."""
    from aiops.gpufit import gpu_count

    gpus = gpu_count(instance_type)
    if distribution == contract.DISTRIBUTION_NONE:
        return ProcessPlan(distribution, instance_type, instance_count, nproc, gpus, "none")
    if distribution == contract.DISTRIBUTION_TORCH:
        _check_torch_distributed(instance_type, entry_point, framework_version, image_uri)
    if nproc is not None:
        if gpus and nproc > gpus:
            raise UsageError(
                f"--nproc {nproc} on {instance_type}, which has {gpus} GPU(s): NCCL "
                f"cannot put two ranks on one GPU; use --nproc {gpus} or less (or drop "
                f"--nproc: one process per GPU), or a larger type ({GPU_EXAMPLES})."
            )
        return ProcessPlan(distribution, instance_type, instance_count, nproc, gpus, "--nproc")
    if gpus:
        return ProcessPlan(distribution, instance_type, instance_count, gpus, gpus, "gpus.json")
    # mpi on a CPU type, Trainium, a type the table lacks: the container counts (GPUs, Neuron devices, else 1)
    return ProcessPlan(distribution, instance_type, instance_count, None, gpus, "container")


def _check_torch_distributed(
    instance_type: str, entry_point: str, framework_version: str | None, image_uri: str | None
) -> None:
    if not entry_point.endswith(".py"):
        raise UsageError(
            f"--distribution torch_distributed runs a Python script under torchrun; {entry_point} "
            "is not a .py file (the SageMaker SDK refuses it too)."
        )
    if image_uri:
        return  # as the SDK: your own image decides which instances and versions it supports
    version = _version(framework_version or "")
    if is_gpu_type(instance_type):
        if version is not None and version < GPU_MIN_VERSION:
            raise UsageError(
                "--distribution torch_distributed needs PyTorch 1.13.1 or later on GPU instances (the "
                f"SageMaker SDK's list); --framework-version {framework_version} is older: use 2.5 or later."
            )
        return
    if is_trainium_type(instance_type):
        low, high = TRAINIUM_VERSIONS
        if version is not None and not (low <= version <= high):
            raise UsageError(
                f"--distribution torch_distributed on Trainium ({instance_type}) needs a Neuron PyTorch "
                f"1.11 .. 2.0.0 (the SageMaker SDK's list), not --framework-version {framework_version}; "
                "pass that version, or your Neuron image with --image-uri."
            )
        return
    kind = f"the {family(instance_type)} family" if family(instance_type) else "it"
    raise UsageError(
        "--distribution torch_distributed needs a GPU (ml.p*, ml.g*) or Trainium (ml.trn*) instance type; "
        f"{instance_type} is not one ({kind} has no GPU for torchrun's NCCL ranks; the SageMaker SDK "
        f"refuses it too): use e.g. {GPU_EXAMPLES}, or drop --distribution to run the script once per host."
    )
