"""Processes per host for remote distributed jobs: one per GPU of the instance type (the shipped
table), `--nproc` wins, and the types torch_distributed cannot run are refused (the SDK's rule)."""

from __future__ import annotations

import pytest
from aiops.training import cluster, container, contract

from aiops.errors import UsageError
from aiops.gpufit import load_gpus


def _plan(distribution: str, instance_type: str, count: int, nproc: int | None = None, **kw):
    return cluster.plan_processes(
        distribution,
        instance_type,
        count,
        nproc,
        entry_point="train.py",
        framework_version=kw.pop("framework_version", "2.5"),
        **kw,
    )


@pytest.mark.parametrize(
    "instance_type, count",
    [("ml.g5.12xlarge", 2), ("ml.p4d.24xlarge", 3), ("ml.g5.xlarge", 2), ("ml.p5.48xlarge", 1)],
)
def test_processes_per_host_are_the_gpus_of_the_table(instance_type: str, count: int) -> None:
    gpus = load_gpus().get(instance_type).gpus  # the same table the GPU-fit check reads
    plan = _plan("torch_distributed", instance_type, count)
    assert (plan.processes_per_host, plan.gpus_per_instance, plan.source) == (gpus, gpus, "gpus.json")
    assert plan.world_size == count * gpus
    assert f"{gpus} process(es) per host (one per GPU), world size {count * gpus}" in plan.line()


def test_the_known_counts() -> None:
    assert _plan("torch_distributed", "ml.g5.12xlarge", 2).processes_per_host == 4
    assert _plan("torch_distributed", "ml.p4d.24xlarge", 2).processes_per_host == 8


def test_nproc_overrides_the_gpu_count_but_not_beyond_it() -> None:
    plan = _plan("torch_distributed", "ml.g5.12xlarge", 2, nproc=2)
    assert (plan.processes_per_host, plan.source, plan.world_size) == (2, "--nproc", 4)
    with pytest.raises(
        UsageError, match=r"--nproc 8 on ml.g5.12xlarge, which has 4 GPU\(s\).*--nproc 4 or less"
    ):
        _plan("torch_distributed", "ml.g5.12xlarge", 2, nproc=8)


@pytest.mark.parametrize("instance_type", ["ml.c5.xlarge", "ml.m5.24xlarge", "ml.inf2.xlarge", "ml.r5.large"])
def test_torch_distributed_refuses_families_without_gpus(instance_type: str) -> None:
    with pytest.raises(UsageError) as err:
        _plan("torch_distributed", instance_type, 2)
    message = str(err.value)
    assert message.startswith(
        "--distribution torch_distributed needs a GPU (ml.p*, ml.g*) or Trainium (ml.trn*)"
    )
    assert instance_type in message and "ml.g5.12xlarge" in message and "\n" not in message
    assert err.value.exit_code == 2


def test_what_the_sdk_also_checks() -> None:
    with pytest.raises(UsageError, match="needs PyTorch 1.13.1 or later"):
        _plan("torch_distributed", "ml.g5.12xlarge", 2, framework_version="1.12")
    with pytest.raises(UsageError, match="not a .py file"):
        cluster.plan_processes("torch_distributed", "ml.g5.12xlarge", 2, None, entry_point="train.sh")
    with pytest.raises(
        UsageError, match=r"Trainium \(ml.trn1.32xlarge\) needs a Neuron PyTorch 1.11 .. 2.0.0"
    ):
        _plan("torch_distributed", "ml.trn1.32xlarge", 2)
    trainium = _plan("torch_distributed", "ml.trn1.32xlarge", 2, framework_version="2.0.0")
    assert (trainium.processes_per_host, trainium.source) == (
        None,
        "container",
    )  # Neuron devices: the toolkit counts
    # your own image: the SDK skips its instance and version checks, and so does aiops
    own = _plan(
        "torch_distributed", "ml.c5.xlarge", 2, nproc=2, image_uri="123.dkr.ecr.us-east-1.amazonaws.com/x:1"
    )
    assert own.processes_per_host == 2


def test_mpi_and_no_distribution() -> None:
    mpi = _plan("mpi", "ml.c5.xlarge", 2)  # mpirun on CPUs is fine; the container defaults to one per host
    assert (mpi.processes_per_host, mpi.source) == (None, "container")
    assert _plan("mpi", "ml.p4d.24xlarge", 2).processes_per_host == 8
    none = _plan("none", "ml.g5.12xlarge", 2)
    assert (none.processes_per_host, none.world_size) == (None, None)
    assert "the script once per host" in none.line()


def test_one_multi_gpu_instance_has_something_to_distribute() -> None:
    assert (
        contract.resolve_distribution(
            "torch_distributed", instance_count=1, processes_per_host=None, gpus_per_instance=4
        )
        == "torch_distributed"
    )
    with pytest.raises(UsageError, match="one instance and one process"):
        contract.resolve_distribution(
            "torch_distributed", instance_count=1, processes_per_host=None, gpus_per_instance=1
        )


def test_efa_types_get_the_toolkits_libfabric_env() -> None:
    """TorchDistributedRunner._setup: FI_PROVIDER=efa on EFA types, device RDMA on the p4d/p5 class."""

    def env(instance_type: str, distribution: str = "torch_distributed") -> dict[str, str]:
        spec = contract.TrainingJobSpec(
            job_name="j",
            entry_point="train.py",
            hyperparameters={},
            channels=(),
            submit_directory="s3://b/c",
            region="us-east-1",
            instance_type=instance_type,
            hosts=contract.host_names(2),
            distribution=distribution,
        )
        return container.pytorch_container_environment(spec, torch_version="2.13.0")

    p4d = env("ml.p4d.24xlarge")
    assert (p4d["FI_PROVIDER"], p4d["FI_EFA_USE_DEVICE_RDMA"], p4d["RDMAV_FORK_SAFE"]) == ("efa", "1", "1")
    g5 = env("ml.g5.48xlarge")
    assert g5["FI_PROVIDER"] == "efa" and "FI_EFA_USE_DEVICE_RDMA" not in g5
    assert not {"FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA"} & set(env("ml.g5.12xlarge"))
    assert "FI_PROVIDER" not in env("ml.p4d.24xlarge", "none")  # the runner's own setup: torchrun jobs only


def test_efa_lists_are_the_toolkits() -> None:
    toolkit = pytest.importorskip("sagemaker_training")
    assert contract.EFA_NCCL_INSTANCES == set(toolkit.SM_EFA_NCCL_INSTANCES)
    assert contract.EFA_RDMA_INSTANCES == set(toolkit.SM_EFA_RDMA_INSTANCES)
