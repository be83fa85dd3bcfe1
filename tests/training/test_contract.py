"""Pure pieces of the training contract (the oracle test covers the whole environment)."""

from __future__ import annotations

import pytest
from aiops.training import container, contract, job_inputs
from aiops.training.metrics import MetricDefinition, MetricParser, parse_metric_option

from aiops.errors import UsageError
from aiops.runs import job_name_from_base, validate_job_name


def test_user_args_follow_the_toolkit() -> None:
    hps = {"lr": 0.1, "b": 3, "layers": [1, 2], "opts": {"z": 1, "a": "x"}, "flag": True, "none": None}
    assert container.user_args(hps) == [
        "-b",
        "3",
        "--flag",
        "True",
        "--layers",
        "[1, 2]",
        "--lr",
        "0.1",
        "--none",
        "",
        "--opts",
        "a=x,z=1",
    ]


def test_hyperparameters_file_is_json_encoded_strings() -> None:
    spec = contract.TrainingJobSpec(
        job_name="j",
        entry_point="train.py",
        hyperparameters={"epochs": 3, "name": "a"},
        channels=(),
        submit_directory="file:///code",
        region="eu-west-1",
    )
    encoded = contract.hyperparameters_file(spec)
    assert encoded["epochs"] == "3" and encoded["name"] == '"a"'
    assert encoded["sagemaker_program"] == '"train.py"' and encoded["sagemaker_region"] == '"eu-west-1"'
    assert "sagemaker_torch_distributed_enabled" not in encoded


@pytest.mark.parametrize(
    "raw, value",
    [("3", 3), ("0.1", 0.1), ("true", True), ("[1,2]", [1, 2]), ("adam", "adam"), ("1e-3", 0.001), ("", "")],
)
def test_hp_values_decode_like_json_with_raw_fallback(raw: str, value: object) -> None:
    assert job_inputs.parse_hyperparameter_value(raw) == value


@pytest.mark.parametrize("name", ["learning rate", "a=b", "-lr", "sagemaker_foo", "1lr", "é"])
def test_mangled_hp_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        job_inputs.validate_hyperparameter_name(name)


@pytest.mark.parametrize("name", ["lr", "batch-size", "batch_size", "model.depth", "_private"])
def test_plain_hp_names_pass(name: str) -> None:
    job_inputs.validate_hyperparameter_name(name)


def test_single_host_torchrun_command() -> None:
    spec = contract.TrainingJobSpec(
        job_name="j",
        entry_point="train.py",
        hyperparameters={"epochs": 1},
        channels=(),
        submit_directory="file:///c",
        region="r",
        processes_per_host=2,
        distribution="torch_distributed",
    )
    cmd = container.launch_command(spec, "python", master_port=1234)
    assert cmd == [
        "python",
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        "1234",
        "train.py",
        "--epochs",
        "1",
    ]
    plain = container.launch_command(
        contract.TrainingJobSpec(
            job_name="j",
            entry_point="train.py",
            hyperparameters={},
            channels=(),
            submit_directory="x",
            region="r",
        ),
        "py",
    )
    assert plain == ["py", "--", "train.py"]


def test_metric_parser_definitions_and_default() -> None:
    parser = MetricParser([MetricDefinition("val_acc", r"validation accuracy: ([0-9.]+)")])
    samples = parser.parse("epoch=2; loss=0.25; validation accuracy: 0.97 lr=3")
    assert [(s.name, s.value) for s in samples] == [("val_acc", 0.97), ("epoch", 2.0), ("loss", 0.25)]
    assert parser.parse("loss=nan;") == []
    assert parser.parse("no metrics here") == []


def test_metric_option_parsing() -> None:
    assert parse_metric_option("loss=loss: ([0-9.]+)").regex == "loss: ([0-9.]+)"
    with pytest.raises(UsageError):
        parse_metric_option("loss")


def test_job_names() -> None:
    name = job_name_from_base("my_train script" * 10, now=0)
    validate_job_name(name)
    assert len(name) <= 63 and name.endswith("1970-01-01-00-00-00-000")
    with pytest.raises(UsageError):
        validate_job_name("-bad")


def _spec(**kw: object) -> contract.TrainingJobSpec:
    base = dict(
        job_name="j",
        entry_point="train.py",
        hyperparameters={},
        channels=(),
        submit_directory="s3://b/c",
        region="eu-west-1",
        instance_type="ml.g5.xlarge",
    )
    return contract.TrainingJobSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_distribution_hyperparameters_are_the_sdks() -> None:
    """SDK v2 PyTorch estimator: nothing without `distribution`; torch_distributed adds the flag and
    the instance type; mpi adds its flag, processes per host and the (empty) custom options."""
    hosts = contract.host_names(2)
    none = contract.hyperparameters_file(_spec(hosts=hosts))
    assert not {k for k in none if k not in contract.TOOLKIT_PARAMS}
    torch = contract.hyperparameters_file(_spec(hosts=hosts, distribution="torch_distributed"))
    assert torch["sagemaker_torch_distributed_enabled"] == "true"
    assert torch["sagemaker_instance_type"] == '"ml.g5.xlarge"'
    mpi = contract.hyperparameters_file(_spec(hosts=hosts, distribution="mpi", processes_per_host=4))
    assert (
        mpi["sagemaker_mpi_enabled"],
        mpi["sagemaker_mpi_num_of_processes_per_host"],
        mpi["sagemaker_mpi_custom_mpi_options"],
    ) == ("true", "4", '""')
    assert "sagemaker_torch_distributed_enabled" not in mpi


def test_multi_host_without_distribution_runs_the_script_once_per_host() -> None:
    spec = _spec(hosts=contract.host_names(3)).for_host("algo-2")
    assert container.launch_command(spec, "py") == ["py", "--", "train.py"]
    ddp = _spec(hosts=contract.host_names(3), distribution="torch_distributed").for_host("algo-3")
    assert container.launch_command(ddp, "py")[3:] == [
        "--nnodes",
        "3",
        "--nproc_per_node",
        "1",
        "--master_addr",
        "algo-1",
        "--master_port",
        "7777",
        "--node_rank",
        "2",
        "train.py",
    ]
    with pytest.raises(ValueError):
        spec.for_host("algo-4")


@pytest.mark.parametrize(
    "distribution, count, nproc, expected",
    [
        (None, 1, None, "none"),
        (None, 4, None, "none"),
        (None, 1, 2, "torch_distributed"),
        ("torch_distributed", 2, None, "torch_distributed"),
        ("mpi", 1, 8, "mpi"),
        ("none", 3, None, "none"),
    ],
)
def test_resolve_distribution_defaults(distribution, count, nproc, expected) -> None:
    assert (
        contract.resolve_distribution(distribution, instance_count=count, processes_per_host=nproc)
        == expected
    )


@pytest.mark.parametrize(
    "distribution, count, nproc, message",
    [
        ("torch_distributed", 1, None, "one instance and one process"),
        ("mpi", 1, 1, "one instance and one process"),
        ("horovod", 2, None, "choose one of"),
        ("none", 1, 2, "several processes need a launcher"),
    ],
)
def test_resolve_distribution_refuses(distribution, count, nproc, message) -> None:
    with pytest.raises(UsageError, match=message):
        contract.resolve_distribution(distribution, instance_count=count, processes_per_host=nproc)


def test_pytorch_container_env_defaults_are_the_containers() -> None:
    spec = _spec(hosts=contract.host_names(2), network_interface_name="eth1").for_host("algo-2")
    env = container.pytorch_container_environment(spec, torch_version="2.13.0")
    assert env == {
        "NCCL_SOCKET_IFNAME": "eth1",
        "NCCL_IB_DISABLE": "1",
        "NCCL_DEBUG": "WARN",
        "MASTER_ADDR": "algo-1",
        "MASTER_PORT": "7777",
        "SM_DLC_TORCH_VERSION": "2.13.0",
        "AWS_REGION": "eu-west-1",
    }
    torchrun = container.pytorch_container_environment(
        _spec(distribution="torch_distributed", processes_per_host=2)
    )
    assert torchrun["NCCL_PROTO"] == "simple"


@pytest.mark.parametrize(
    "name, flagged",
    [
        ("api_key", True),
        ("password", True),
        ("hfToken", True),
        ("db-pass", True),
        ("client_secret", True),
        ("max_tokens", False),
        ("keep_prob", False),
        ("lr", False),
        ("monkey", False),
    ],
)
def test_secret_looking_hyperparameter_names(name: str, flagged: bool) -> None:
    assert (job_inputs.secret_looking_hyperparameters({name: 1}) == [name]) is flagged


@pytest.mark.parametrize(
    "count, nproc, distribution, expected",
    [
        (2, None, "none", {}),  # the SDK without `distribution`: the script once per host
        (
            2,
            None,
            "torch_distributed",
            {"sagemaker_torch_distributed_enabled": "true", "sagemaker_instance_type": '"ml.g5.xlarge"'},
        ),
        (
            1,
            4,
            "torch_distributed",
            {
                "sagemaker_torch_distributed_enabled": "true",
                "sagemaker_instance_type": '"ml.g5.xlarge"',
                "sagemaker_mpi_num_of_processes_per_host": "4",
            },
        ),
        (
            2,
            2,
            "mpi",
            {
                "sagemaker_mpi_enabled": "true",
                "sagemaker_mpi_num_of_processes_per_host": "2",
                "sagemaker_mpi_custom_mpi_options": '""',
            },
        ),
    ],
)
def test_remote_request_carries_the_sdks_distribution_keys(count, nproc, distribution, expected) -> None:
    from aiops.training import remote_request as remote
    from aiops.training.launch import Access, Compute

    options = remote.RemoteOptions(
        compute=Compute(instance_type="ml.g5.xlarge", instance_count=count),
        access=Access(region="eu-west-1", role="arn:aws:iam::123456789012:role/r", bucket="b"),
    )
    request = remote.build_request(
        job_name="j",
        entry_point="train.py",
        hyperparameters={"epochs": 1},
        channel_uris={},
        submit_directory="s3://b/code.tar.gz",
        image_uri="img",
        options=options,
        nproc=nproc,
        metric_definitions=[],
        distribution=distribution,
    )
    hps = request["HyperParameters"]
    framework = {
        k: v for k, v in hps.items() if k.startswith("sagemaker_") and k not in contract.TOOLKIT_PARAMS
    }
    assert framework == expected
    assert request["ResourceConfig"]["InstanceCount"] == count


@pytest.mark.parametrize("distribution, nproc", [("none", None), ("torch_distributed", 2), ("mpi", 4)])
def test_a_request_reads_back_as_the_spec_that_wrote_it(distribution: str, nproc: int | None) -> None:
    spec = _spec(
        hosts=contract.host_names(3),
        hyperparameters={"epochs": 3, "layers": [4, 2], "name": "x"},
        channels=("train", "test"),
        distribution=distribution,
        processes_per_host=nproc,
        network_interface_name="eth0",
    )
    encoded = contract.hyperparameters_file(spec)
    back = contract.spec_from_request(
        "j", encoded, ["train", "test"], instance_type="ml.g5.xlarge", instance_count=3
    )
    assert contract.hyperparameters_file(back) == encoded
    assert back.hosts == ("algo-1", "algo-2", "algo-3") and back.distribution == distribution
    if distribution == "mpi":  # mpirun is the container's: aiops never launches it
        with pytest.raises(UsageError, match="mpirun"):
            container.launch_command(back, "py")
    else:
        assert container.launch_command(back.for_host("algo-2"), "py") == container.launch_command(
            spec.for_host("algo-2"), "py"
        )
