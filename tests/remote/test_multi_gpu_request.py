"""Multi-GPU, multi-node `aiops train --remote`: the CreateTrainingJob the PyTorch container expects,
the refusals before any upload, and the cost estimate (instances x hours x the table's price).
Real CLI process, real moto server behind the platform proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiops.pricing import load_prices

REGION = "us-east-1"


def _submit(run_cli, project: Path, instance_type: str, *extra: str):
    return run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        "--json",
        "--instance-type",
        instance_type,
        "--distribution",
        "torch_distributed",
        *extra,
    )


@pytest.mark.parametrize(
    "instance_type, count, nproc, per_host",
    [
        ("ml.g5.12xlarge", 2, None, 4),  # 4 x A10G per host (ml.p4d.24xlarge, 8: the cost test below)
        ("ml.g5.12xlarge", 2, "2", 2),  # --nproc wins
        ("ml.g5.12xlarge", 1, None, 4),  # one host with 4 GPUs has something to distribute
    ],
)
def test_request_for_multi_gpu_hosts(
    run_cli, project: Path, platform, instance_type, count, nproc, per_host
) -> None:
    extra = ["--instance-count", str(count)] + (["--nproc", nproc] if nproc else [])
    result = _submit(run_cli, project, instance_type, *extra)
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    hp = request["HyperParameters"]
    assert request["ResourceConfig"]["InstanceType"] == instance_type
    assert request["ResourceConfig"]["InstanceCount"] == count
    assert hp["sagemaker_torch_distributed_enabled"] == "true"
    assert hp["sagemaker_instance_type"] == json.dumps(instance_type)
    assert hp["sagemaker_mpi_num_of_processes_per_host"] == str(per_host)  # torchrun --nproc_per_node
    assert "gpu" in request["AlgorithmSpecification"]["TrainingImage"]
    assert request.get("EnableInterContainerTrafficEncryption") is (True if count > 1 else None)
    record = json.loads(run_cli("jobs", "describe", json.loads(result.stdout)["job_name"], "--json").stdout)
    assert record["config"]["processes_per_host"] == per_host
    assert record["config"]["world_size"] == per_host * count


@pytest.mark.parametrize(
    "instance_type, extra, expected",
    [
        (
            "ml.c5.xlarge",
            ["--instance-count", "2"],
            "--distribution torch_distributed needs a GPU (ml.p*, ml.g*) or Trainium",
        ),
        (
            "ml.m5.24xlarge",
            ["--instance-count", "4"],
            "--distribution torch_distributed needs a GPU (ml.p*, ml.g*) or Trainium",
        ),
        ("ml.g5.12xlarge", ["--instance-count", "2", "--nproc", "8"], "which has 4 GPU(s)"),
        ("ml.g5.xlarge", [], "one instance and one process"),
    ],
)
def test_types_that_cannot_run_it_are_refused_before_any_upload(
    run_cli, project: Path, platform, instance_type, extra, expected
) -> None:
    result = _submit(run_cli, project, instance_type, *extra)
    assert result.returncode == 2, result.output
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert platform.count("s3:PUT") == 0 and platform.count("SageMaker.CreateTrainingJob") == 0


def test_cost_estimate_multiplies_instances_hours_and_the_tables_price(
    run_cli, project: Path, platform
) -> None:
    price = load_prices().lookup("sagemaker", "ml.p4d.24xlarge", REGION)
    assert price is not None
    result = _submit(run_cli, project, "ml.p4d.24xlarge", "--instance-count", "3", "--max-run", "5400")
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    assert request["HyperParameters"]["sagemaker_mpi_num_of_processes_per_host"] == "8"  # 8 x A100 per host
    assert request["ResourceConfig"]["InstanceCount"] == 3
    on_demand = round(3 * 1.5 * price.on_demand_hourly, 2)
    spot = round(3 * 1.5 * price.spot_hourly, 2)
    assert (
        f"estimate: up to ${spot:,.2f} (spot; on-demand ${on_demand:,.2f}, spot ${spot:,.2f}) "
        "for 3 x ml.p4d.24xlarge over at most 1.5 h" in result.stderr
    ), result.stderr
    record = json.loads(run_cli("jobs", "describe", json.loads(result.stdout)["job_name"], "--json").stdout)
    assert record["estimated_max_cost_usd"] == spot
