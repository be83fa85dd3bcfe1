"""The launch options as nested typed configs (training/launch.py): each config refuses bad values
when it is made, with the option's one-line error; every command-line value is either one a local
run reads or one refused without --remote; the SageMaker options are resolved from the same configs
(given > settings) and reach the CreateTrainingJob request."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from aiops.cli.options import launch_options
from aiops.training.launch import Compute, StoppingCondition
from aiops.training.remote_request import RemoteOptions, build_request, resolve_options

from aiops.errors import UsageError
from aiops.settings import Settings

ROLE = "arn:aws:iam::123456789012:role/train"

BAD = [
    (lambda: launch_options(instance_count=0), "--instance-count 0: needs at least 1."),
    (lambda: launch_options(keep_alive="2h"), "--keep-alive 7200s: SageMaker keeps a warm pool 0 to 3600 s"),
    (lambda: launch_options(keep_alive="10m", spot=True), "warm pools of on-demand instances only"),
    (lambda: launch_options(max_run=0), "--max-run 0: needs at least 1 second."),
    (lambda: launch_options(max_cost=0), "--max-cost 0: the budget must be a positive number of USD."),
    (
        lambda: RemoteOptions(
            compute=Compute(instance_type="ml.g5.xlarge"),
            stopping_condition=StoppingCondition(max_runtime_in_seconds=3600, max_wait_time_in_seconds=60),
        ),
        "--max-wait 60s is shorter than --max-run 3600s",
    ),
    (
        lambda: RemoteOptions(
            compute=Compute(instance_type="ml.g5.xlarge", enable_managed_spot_training=False),
            stopping_condition=StoppingCondition(max_wait_time_in_seconds=7200),
        ),
        "--max-wait only applies to spot jobs",
    ),
]


@pytest.mark.parametrize("make, message", BAD, ids=[b[1] for b in BAD])
def test_a_config_refuses_a_bad_value_when_it_is_made(make, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        make()
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_an_output_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        launch_options(output_dir=tmp_path / "file")


# every value of the command line: (given, whether only a SageMaker job reads it)
GIVEN = {
    "instance_type": ("ml.g5.xlarge", False),  # recorded in resourceconfig.json locally
    "region": ("eu-west-1", False),
    "framework_version": ("2.4", False),  # picks the transformers note of a local run
    "yes": (True, False),
    "wait": (False, False),
    "download": (True, False),
    "output_dir": (Path("out"), False),
    "instance_count": (2, True),
    "spot": (False, True),
    "max_run": (3600, True),
    "max_wait": (7200, True),
    "volume_size": (100, True),
    "keep_alive": ("10m", True),
    "role": (ROLE, True),
    "bucket": ("b", True),
    "stack": ("prod", True),
    "vpc": (False, True),
    "network_isolation": (True, True),
    "image_uri": ("123.dkr.ecr.us-east-1.amazonaws.com/x:1", True),
    "max_cost": (5.0, True),
    "model_params": (7e9, True),
    "fsdp": (True, True),
    "remote_debug": (True, True),
    "max_attempts": (2, True),
}


def test_every_launch_value_is_local_or_refused_without_remote() -> None:
    assert set(GIVEN) == set(inspect.signature(launch_options).parameters)  # a new option is classified here
    assert not launch_options().sagemaker_options_given()
    for name, (value, sagemaker_only) in GIVEN.items():
        assert launch_options(**{name: value}).sagemaker_options_given() is sagemaker_only, name


def _request(options: RemoteOptions) -> dict:
    return build_request(
        job_name="j",
        entry_point="train.py",
        hyperparameters={},
        channel_uris={},
        submit_directory="s3://b/code.tar.gz",
        image_uri="img",
        options=options,
        nproc=None,
        metric_definitions=[],
    )


def test_given_values_reach_the_request_and_settings_fill_the_rest(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    given = launch_options(
        instance_type="ml.g5.xlarge,ml.g6.xlarge",
        instance_count=2,
        volume_size=100,
        keep_alive="10m",
        role=ROLE,
        bucket="b",
        region="eu-west-1",
        network_isolation=True,
        remote_debug=True,
    )
    options, _ = resolve_options(given, settings)
    assert options.instance_types == ["ml.g5.xlarge", "ml.g6.xlarge"]
    assert options.on("ml.g6.xlarge").instance_types == ["ml.g6.xlarge"]
    request = _request(options)
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.g5.xlarge",
        "InstanceCount": 2,
        "VolumeSizeInGB": 100,
        "KeepAlivePeriodInSeconds": 600,
    }
    assert request["EnableManagedSpotTraining"] is False  # a warm pool is kept of on-demand instances
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": settings.aws.max_run_seconds}
    assert request["RoleArn"] == ROLE and request["EnableNetworkIsolation"] is True
    assert request["RemoteDebugConfig"] == {"EnableRemoteDebug": True}
    assert "sagemaker_region" in request["HyperParameters"] and options.region == "eu-west-1"

    defaults, _ = resolve_options(launch_options(role=ROLE, bucket="b"), settings)
    request = _request(defaults)
    assert request["EnableManagedSpotTraining"] is settings.aws.spot
    assert request["ResourceConfig"]["VolumeSizeInGB"] == settings.aws.volume_size_gb
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": settings.aws.max_run_seconds,
        "MaxWaitTimeInSeconds": 2 * settings.aws.max_run_seconds,
    }
    assert defaults.image.framework_version == settings.aws.framework_version
    assert defaults.access.stack == "dev" and defaults.region == settings.aws.region


def test_the_options_tune_shares_with_train_are_the_same_flags() -> None:
    """`aiops tune` takes train's options from cli/options.py: the same flags, types and defaults
    (only a help text may be worded for trials)."""
    import typer.main
    from aiops.cli.app import app

    commands = typer.main.get_command(app).commands
    train = {p.name: p for p in commands["train"].params if p.param_type_name == "option"}
    shared = [p for p in commands["tune"].params if p.name in train and p.name != "help"]
    assert {p.name for p in shared} >= {"instance_type", "instance_count", "spot", "max_run", "role", "stack"}
    for param in shared:
        twin = train[param.name]
        assert (param.opts, param.secondary_opts, param.bare_type(), param.default) == (
            twin.opts,
            twin.secondary_opts,
            twin.bare_type(),
            twin.default,
        ), param.name
