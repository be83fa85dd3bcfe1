"""The CreateHyperParameterTuningJob request of `aiops tune --remote` equals what the SageMaker SDK's
`HyperparameterTuner` (sagemaker-train, v3) sends for the same inputs: the SDK is the oracle.

The tuner is given the training job `aiops train --remote` would create (`build_request`): its
image, role, resources, channels, hyperparameters, environment and network, as a `ModelTrainer`
carries them (the SDK's own config classes); its request is caught as boto3 is about to send it.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

ROLE = "arn:aws:iam::123456789012:role/aiops-sagemaker-execution"
BUCKET = "aiops-artifacts-test"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-gpu-py311"
METRIC = r"test_accuracy=\btest_accuracy=([0-9.]+)"


class _Sent(Exception):
    pass


def _sdk_request(training: dict[str, Any], ranges: dict[str, Any], **tuner: Any) -> dict[str, Any]:
    """The request the SDK's tuner sends for this training job (boto3 stopped before the wire)."""
    import boto3
    from sagemaker.core.training.configs import Compute, Networking, OutputDataConfig, StoppingCondition
    from sagemaker.train.tuner import HyperparameterTuner

    session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    sent: dict[str, Any] = {}

    def catch(params: dict[str, Any], **_: Any) -> None:
        sent.update(copy.deepcopy(params))
        raise _Sent

    session.events.register("before-parameter-build.sagemaker.CreateHyperParameterTuningJob", catch)
    resources, stopping = training["ResourceConfig"], training["StoppingCondition"]
    vpc = training.get("VpcConfig")
    trainer = SimpleNamespace(  # what a ModelTrainer holds, in the SDK's own config classes
        training_image=training["AlgorithmSpecification"]["TrainingImage"],
        training_input_mode="File",
        role=training["RoleArn"],
        compute=Compute(
            instance_type=resources["InstanceType"],
            instance_count=resources["InstanceCount"],
            volume_size_in_gb=resources["VolumeSizeInGB"],
            enable_managed_spot_training=training["EnableManagedSpotTraining"],
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=stopping["MaxRuntimeInSeconds"],
            max_wait_time_in_seconds=stopping.get("MaxWaitTimeInSeconds"),
        ),
        hyperparameters=dict(training["HyperParameters"]),
        environment=dict(training["Environment"]),
        output_data_config=OutputDataConfig(s3_output_path=training["OutputDataConfig"]["S3OutputPath"]),
        networking=Networking(subnets=vpc["Subnets"], security_group_ids=vpc["SecurityGroupIds"])
        if vpc
        else None,
        checkpoint_config=None,
        source_code=None,
        input_data_config=None,
        base_job_name=None,
        tags=None,
        sagemaker_session=SimpleNamespace(
            boto_session=session,
            boto_region_name="us-east-1",
            settings=SimpleNamespace(include_jumpstart_tags=False),
        ),
    )
    tuner_args = {k: v for k, v in tuner.items() if k != "job_name"}
    hpt = HyperparameterTuner(
        trainer,
        metric_definitions=training["AlgorithmSpecification"]["MetricDefinitions"],
        hyperparameter_ranges=ranges,
        **tuner_args,
    )
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in training["InputDataConfig"]
    }
    with pytest.raises(_Sent):
        hpt.tune(inputs=channels, job_name=tuner["job_name"], wait=False)
    return sent


@pytest.mark.parametrize("spot", [True, False], ids=["spot", "on-demand"])
def test_tuning_request_equals_the_sdk_tuners(spot: bool) -> None:
    from aiops.training.launch import Access, Compute, Networking, StoppingCondition
    from aiops.training.metrics import parse_metric_option
    from aiops.training.remote_request import RemoteOptions, build_request
    from aiops.training.tune import tuning_spec
    from aiops.training.tune_remote import build_tuning_request
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter

    definitions = [parse_metric_option(f"test_accuracy={METRIC}"), parse_metric_option("loss=loss=([0-9.]+)")]
    spec = tuning_spec(
        ["lr=1e-5:1e-2:log", "batch-size=16,32,64", "epochs=2:8", "momentum=0.5:0.99"],
        "test_accuracy:max",
        max_trials=12,
        parallel=3,
        metric_definitions=definitions,
    )
    options = RemoteOptions(
        compute=Compute(instance_type="ml.g5.xlarge", enable_managed_spot_training=spot),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=7200),
        access=Access(region="us-east-1", role=ROLE, bucket=BUCKET),
        networking=Networking(
            subnets=("subnet-0123456789abcdef0",), security_group_ids=("sg-0123456789abcdef0",)
        ),
    )
    training = build_request(
        job_name="digits-tune-251207-120000",
        entry_point="train.py",
        hyperparameters={"epochs": 2, "lr": 1e-3, "batch-size": 16, "momentum": 0.9, "seed": 3},
        channel_uris={"train": f"s3://{BUCKET}/channels/abc/", "test": f"s3://{BUCKET}/channels/def/"},
        submit_directory=f"s3://{BUCKET}/code/0123/sourcedir.tar.gz",
        image_uri=IMAGE,
        options=options,
        nproc=None,
        metric_definitions=definitions,
        environment={"HF_HUB_OFFLINE": "1"},
    )
    ours = build_tuning_request(
        tuning_job_name="digits-tune-251207-120000", spec=spec, training_request=training
    )
    sdk = _sdk_request(
        training,
        {
            "lr": ContinuousParameter(1e-5, 1e-2, scaling_type="Logarithmic"),
            "batch-size": CategoricalParameter([16, 32, 64]),
            "epochs": IntegerParameter(2, 8),
            "momentum": ContinuousParameter(0.5, 0.99),
        },
        objective_metric_name="test_accuracy",
        objective_type="Maximize",
        strategy="Bayesian",
        max_jobs=12,
        max_parallel_jobs=3,
        early_stopping_type="Auto",
        tags=ours["Tags"],
        job_name="digits-tune-251207-120000",
    )
    assert ours == sdk
    static = ours["TrainingJobDefinition"]["StaticHyperParameters"]
    assert "lr" not in static and static["seed"] == "3" and static["sagemaker_program"] == '"train.py"'


def test_bad_ranges_and_limits_are_refused_before_the_request() -> None:
    from aiops.training.metrics import parse_metric_option
    from aiops.training.tune import tuning_spec

    from aiops.errors import UsageError

    definitions = [parse_metric_option("loss=loss=([0-9.]+)")]
    with pytest.raises(UsageError, match="--parallel 5 is greater than --max-trials 4"):
        tuning_spec(["lr=0.1:1"], "loss:min", max_trials=4, parallel=5, metric_definitions=definitions)
    with pytest.raises(UsageError, match="no --metric definition"):
        tuning_spec(["lr=0.1:1"], "accuracy:max", max_trials=4, parallel=1, metric_definitions=definitions)


def test_tuning_job_names_fit_sagemakers_limit() -> None:
    from aiops.training.tune_remote import tuning_job_name, validate_tuning_job_name

    from aiops.errors import UsageError

    name = tuning_job_name("a-very-long-training-script-name-tune", now=0)
    assert len(name) <= 32 and name.endswith("-700101-000000")
    validate_tuning_job_name(name)
    with pytest.raises(UsageError, match="1-32 letters"):
        validate_tuning_job_name("x" * 33)
