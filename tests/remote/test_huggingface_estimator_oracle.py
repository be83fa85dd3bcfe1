"""`aiops train --remote --framework huggingface` sends the CreateTrainingJob request the SageMaker SDK
v2 `HuggingFace` estimator sends for the same job: the estimator is the oracle, dict for dict.

The estimator gets what a user would give it for that job: the same versions, instance, count,
distribution, hyperparameters, environment, metrics, spot and stopping settings, and the locations
aiops chose (job name, the content-hashed `sourcedir.tar.gz` and channels, the stack's output and
checkpoint prefixes). It runs in its own process (tests/remote/sdk_v2_estimator.py) from the SDK v2
folder `make install` puts at `.venv/sdk-v2`, since v2 needs sagemaker-core<2 and its `sagemaker`
package would replace the namespace aiops imports `sagemaker.core` from. Both jobs share one run of
it (the SDK's import is the slow part).

Where the two differ on purpose, the difference is named (`DELIBERATE`) and asserted, not dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiops.training.contract import CHECKPOINT_ENV

SDK_V2 = Path(sys.prefix) / "sdk-v2"
ORACLE = Path(__file__).with_name("sdk_v2_estimator.py")


# Request fields aiops sets and the estimator does not, and why.
DELIBERATE = {
    # managed-by, and the client token that makes a retried CreateTrainingJob idempotent
    "Tags": "aiops tags every job it creates",
    # the estimator turns on SageMaker Debugger's hook and the profiler by default; aiops asks for
    # neither (its scripts do not use smdebug, and metrics come from the logs' regexes)
    "DebugHookConfig": "estimator default, not asked for",
    "ProfilerConfig": "estimator default, not asked for",
}


def _estimator_requests(jobs: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    if not (SDK_V2 / "sagemaker" / "huggingface").is_dir():
        pytest.skip(f"the SDK v2 oracle is not installed at {SDK_V2} (make install)")
    env = {
        **os.environ,
        "PYTHONPATH": str(SDK_V2),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    done = subprocess.run(
        [sys.executable, str(ORACLE), str(out)],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _submit(run_cli, project: Path, channel: Path, *extra: str) -> None:
    result = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        "--json",
        "--framework",
        "huggingface",
        "--hp",
        "epochs=3",
        "--hp",
        "lr=0.0002",
        "--hp",
        "model-name=tiny",
        "--channel",
        f"train={channel}",
        "--env",
        "HF_HUB_OFFLINE=1",
        "--metric",
        "loss=loss=([0-9.]+);",
        *extra,
    )
    assert result.returncode == 0, result.output


def _estimator_job(ours: dict[str, Any], **estimator: Any) -> dict[str, Any]:
    """The estimator's arguments for the job aiops sent as `ours`: the locations from it, the rest given."""
    hps = ours["HyperParameters"]
    return {
        "job_name": ours["TrainingJobName"],
        "inputs": {
            c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in ours["InputDataConfig"]
        },
        "estimator": {
            "entry_point": json.loads(hps["sagemaker_program"]),
            "source_dir": json.loads(hps["sagemaker_submit_directory"]),
            "role": ours["RoleArn"],
            "output_path": ours["OutputDataConfig"]["S3OutputPath"],
            "checkpoint_s3_uri": ours["CheckpointConfig"]["S3Uri"],
            "checkpoint_local_path": "/opt/ml/checkpoints",
            "hyperparameters": {"epochs": 3, "lr": 0.0002, "model-name": "tiny"},
            "environment": {"HF_HUB_OFFLINE": "1"},
            "metric_definitions": [{"Name": "loss", "Regex": "loss=([0-9.]+);"}],
            "py_version": "py311",
            **estimator,
        },
    }


def _compare(ours: dict[str, Any], sdk: dict[str, Any]) -> None:
    ours, sdk = json.loads(json.dumps(ours)), json.loads(json.dumps(sdk))
    # every field the estimator sends, aiops sends with the same value, except:
    assert set(DELIBERATE) - {"Tags"} <= set(sdk) and "Tags" in ours and "Tags" not in sdk
    for name in DELIBERATE:
        ours.pop(name, None), sdk.pop(name, None)
    # aiops names the (default) File mode on each channel; the estimator leaves it to the job's
    # TrainingInputMode, which is File: the same channel
    for channel in ours["InputDataConfig"]:
        assert channel.pop("InputMode") == sdk["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    # the checkpoint folder, also in the environment so a script finds it the same way locally
    # (where it is not /opt/ml/checkpoints); the rest of the environment is the user's --env
    assert ours["Environment"].pop(CHECKPOINT_ENV) == sdk["CheckpointConfig"]["LocalPath"]
    # on-demand: aiops says so (False, the API's default); the estimator leaves the field out
    if "EnableManagedSpotTraining" not in sdk:
        assert ours.pop("EnableManagedSpotTraining") is False
    differ = {f: (ours.get(f), sdk.get(f)) for f in sorted(set(ours) | set(sdk)) if ours.get(f) != sdk.get(f)}
    assert not differ, json.dumps(differ, indent=1, sort_keys=True)  # field: [aiops's, the estimator's]


def test_the_request_is_the_sdk_v2_huggingface_estimators(
    run_cli, project: Path, platform, tmp_path: Path
) -> None:
    channel = tmp_path / "train"
    channel.mkdir()
    (channel / "data.jsonl").write_text('{"text": "hello"}\n')
    # plain: one host, spot, transformers asked as major.minor (the SDK's alias to 4.49.0, PyTorch 2.5)
    _submit(
        run_cli,
        project,
        channel,
        "--transformers-version",
        "4.49",
        "--instance-type",
        "ml.g5.2xlarge",
        "--spot",
        "--max-run",
        "7200",
        "--max-wait",
        "10800",
    )
    # torch_distributed on 2 multi-GPU hosts, on-demand, versions in full (the estimator's torch_distributed
    # check takes only a full PyTorch version: 2.5.1, not 2.5)
    _submit(
        run_cli,
        project,
        channel,
        "--transformers-version",
        "4.49.0",
        "--instance-type",
        "ml.g5.12xlarge",
        "--instance-count",
        "2",
        "--distribution",
        "torch_distributed",
        "--on-demand",
        "--volume-size",
        "100",
    )
    plain, distributed = platform.create_requests
    jobs = [
        _estimator_job(
            plain,
            transformers_version="4.49",
            pytorch_version="2.5",
            instance_type="ml.g5.2xlarge",
            instance_count=1,
            use_spot_instances=True,
            max_run=7200,
            max_wait=10800,
        ),
        _estimator_job(
            distributed,
            transformers_version="4.49.0",
            pytorch_version="2.5.1",
            instance_type="ml.g5.12xlarge",
            instance_count=2,
            volume_size=100,
            distribution={"torch_distributed": {"enabled": True}},
            # aiops encrypts traffic between hosts by default; with the estimator one asks for it
            encrypt_inter_container_traffic=True,
        ),
    ]
    sdk_plain, sdk_distributed = _estimator_requests(jobs, tmp_path / "sdk-requests.json")
    # the fields the issue names, seen in the oracle's own request, so a rename on either side shows
    for sdk in (sdk_plain, sdk_distributed):
        assert {"AlgorithmSpecification", "HyperParameters", "Environment", "InputDataConfig"} <= set(sdk)
        assert {"OutputDataConfig", "ResourceConfig", "StoppingCondition", "CheckpointConfig"} <= set(sdk)
    assert sdk_distributed["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert "sagemaker_torch_distributed_enabled" not in sdk_plain["HyperParameters"]
    assert sdk_plain["EnableManagedSpotTraining"] and not sdk_distributed.get("EnableManagedSpotTraining")
    _compare(plain, sdk_plain)
    # aiops writes the processes per host it planned (training/cluster.py: the type's 4 GPUs), which
    # the toolkit's runner would count for itself on the host (one per GPU) when the key is absent
    assert "sagemaker_mpi_num_of_processes_per_host" not in sdk_distributed["HyperParameters"]
    assert distributed["HyperParameters"].pop("sagemaker_mpi_num_of_processes_per_host") == "4"
    _compare(distributed, sdk_distributed)
