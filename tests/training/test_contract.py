"""Pure pieces of the training contract (the oracle test covers the whole environment)."""

from __future__ import annotations

import pytest

from aiops.errors import UsageError
from aiops.training import contract
from aiops.training.metrics import MetricDefinition, MetricParser, parse_metric_option
from aiops.training.runs import job_name_from_base, validate_job_name


def test_user_args_follow_the_toolkit() -> None:
    hps = {"lr": 0.1, "b": 3, "layers": [1, 2], "opts": {"z": 1, "a": "x"}, "flag": True, "none": None}
    assert contract.user_args(hps) == [
        "-b", "3", "--flag", "True", "--layers", "[1, 2]", "--lr", "0.1", "--none", "", "--opts", "a=x,z=1",
    ]


def test_hyperparameters_file_is_json_encoded_strings() -> None:
    spec = contract.TrainingJobSpec(job_name="j", entry_point="train.py", hyperparameters={"epochs": 3, "name": "a"},
                                    channels=(), submit_directory="file:///code", region="eu-west-1")
    encoded = contract.hyperparameters_file(spec)
    assert encoded["epochs"] == "3" and encoded["name"] == '"a"'
    assert encoded["sagemaker_program"] == '"train.py"' and encoded["sagemaker_region"] == '"eu-west-1"'
    assert "sagemaker_torch_distributed_enabled" not in encoded


@pytest.mark.parametrize("raw, value", [("3", 3), ("0.1", 0.1), ("true", True), ("[1,2]", [1, 2]),
                                        ("adam", "adam"), ("1e-3", 0.001), ("", "")])
def test_hp_values_decode_like_json_with_raw_fallback(raw: str, value: object) -> None:
    assert contract.parse_hyperparameter_value(raw) == value


@pytest.mark.parametrize("name", ["learning rate", "a=b", "-lr", "sagemaker_foo", "1lr", "é"])
def test_mangled_hp_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        contract.validate_hyperparameter_name(name)


@pytest.mark.parametrize("name", ["lr", "batch-size", "batch_size", "model.depth", "_private"])
def test_plain_hp_names_pass(name: str) -> None:
    contract.validate_hyperparameter_name(name)


def test_single_host_torchrun_command() -> None:
    spec = contract.TrainingJobSpec(job_name="j", entry_point="train.py", hyperparameters={"epochs": 1},
                                    channels=(), submit_directory="file:///c", region="r", processes_per_host=2)
    cmd = contract.launch_command(spec, "python", master_port=1234)
    assert cmd == ["python", "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                   "--master_addr", "127.0.0.1", "--master_port", "1234", "train.py", "--epochs", "1"]
    plain = contract.launch_command(contract.TrainingJobSpec(
        job_name="j", entry_point="train.py", hyperparameters={}, channels=(), submit_directory="x", region="r"), "py")
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
