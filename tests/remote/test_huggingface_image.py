"""`--framework huggingface --transformers-version X`: the Hugging Face training image, as the SDK's
`HuggingFace` estimator picks it, checked against sagemaker-core's
`image_uris.get_training_image_uri(framework="huggingface", pytorch_version=...)` for every version of
the table, with the PyTorch version derived from the table as the SDK derives it. The whole request,
against the SDK v2 estimator itself, is tests/remote/test_huggingface_estimator_oracle.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiops.training.images import resolve_framework

from aiops import images
from aiops.errors import UsageError

REGION = "us-east-1"


def _sdk_derived_pytorch(transformers_version: str) -> str:
    """The SDK's own rule (sagemaker.serve's TransformersBuilder._get_supported_version), run on the
    table the SDK ships: the highest PyTorch of that version's entry, major.minor when asked so."""
    from sagemaker.core import image_uris

    config = image_uris.config_for_framework("huggingface")["training"]
    full = config["version_aliases"].get(transformers_version, transformers_version)
    found = []
    for key in config["versions"][full]:
        if key.startswith("pytorch"):
            version = key[len("pytorch") :]
            if len(transformers_version.split(".")) == 2:
                version = ".".join(version.split(".")[:-1])
            found.append(version)
    return sorted(found, reverse=True)[0]


@pytest.mark.xdist_group("sagemaker-sdk")
def test_the_image_is_the_sdks_for_every_pytorch_version_of_the_table() -> None:
    image_uris = pytest.importorskip("sagemaker.core.image_uris")
    table = images.scope_table("huggingface", "training")
    checked = 0
    for full, entry in table["versions"].items():
        if not any(k.startswith("pytorch") for k in entry) or images._release(full) < (4, 26):
            continue
        for asked in (full, ".".join(full.split(".")[:2])):
            framework = resolve_framework(None, asked, None)
            assert framework.pytorch_version == _sdk_derived_pytorch(asked), asked
            assert framework.image_transformers == full
            for instance_type in ("ml.g5.12xlarge", "ml.p4d.24xlarge"):
                ours = images.huggingface_training_image_uri(
                    region=REGION,
                    transformers_version=asked,
                    pytorch_version=framework.pytorch_version,
                    py_version=framework.py_version,
                    instance_type=instance_type,
                )
                sdk = image_uris.get_training_image_uri(
                    REGION,
                    "huggingface",
                    framework_version=asked,
                    py_version=framework.py_version,
                    pytorch_version=framework.pytorch_version,
                    instance_type=instance_type,
                )
                # asked as major.minor, the tag keeps it as given (SDK v2's HuggingFace estimator, the
                # image's short tag); sagemaker-core 2.x expands the transformers part alone
                if asked != full:
                    sdk = sdk.replace(f"-transformers{full}-", f"-transformers{asked}-")
                assert ours == sdk, (asked, instance_type)
                checked += 1
    assert checked >= 30
    # another partition, and a PyTorch version named in full
    assert images.huggingface_training_image_uri(
        region="cn-north-1",
        transformers_version="4.49.0",
        pytorch_version="2.5.1",
        py_version="py311",
        instance_type="ml.g5.xlarge",
    ) == image_uris.get_training_image_uri(
        "cn-north-1",
        "huggingface",
        framework_version="4.49.0",
        py_version="py311",
        pytorch_version="2.5.1",
        instance_type="ml.g5.xlarge",
    )


@pytest.mark.parametrize(
    "framework, transformers, pytorch, message",
    [
        ("huggingface", "4.99", None, "no Hugging Face training image has it; the images exist for "),
        ("huggingface", None, None, "--framework huggingface needs --transformers-version"),
        ("huggingface", "4.49", "2.1", "built on PyTorch 2.5.1 only, not 2.1"),
        ("pytorch", "4.49", None, "use it with --framework huggingface"),
        ("jax", None, None, "--framework jax: choose one of pytorch, huggingface"),
    ],
)
def test_a_combination_without_an_image_is_one_line(framework, transformers, pytorch, message) -> None:
    with pytest.raises(UsageError, match=message) as err:
        resolve_framework(framework, transformers, pytorch)
    assert "\n" not in str(err.value)
    if transformers == "4.99":
        assert "4.56.2, 5.3.0" in str(err.value)  # the versions that exist, in release order


def _submit(run_cli, project: Path, *extra: str):
    return run_cli(
        "train", "train.py", "--source-dir", str(project), "--remote", "--no-wait", "--json", *extra
    )


def test_the_request_is_the_huggingface_estimators(
    run_cli, project: Path, platform, aiops_home: Path
) -> None:
    image_uris = pytest.importorskip("sagemaker.core.image_uris")
    result = _submit(
        run_cli,
        project,
        "--framework",
        "huggingface",
        "--transformers-version",
        "4.49",
        "--instance-type",
        "ml.g5.12xlarge",
        "--instance-count",
        "2",
        "--distribution",
        "torch_distributed",
    )
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    # HuggingFace(transformers_version="4.49", pytorch_version="2.5", py_version="py311", ...)
    assert request["AlgorithmSpecification"]["TrainingImage"] == image_uris.get_training_image_uri(
        REGION,
        "huggingface",
        framework_version="4.49",
        py_version="py311",
        pytorch_version="2.5",
        instance_type="ml.g5.12xlarge",
    ).replace("-transformers4.49.0-", "-transformers4.49-")
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith(
        "/huggingface-pytorch-training:2.5-transformers4.49-gpu-py311-cu124-ubuntu22.04"
    )
    # the estimator's distribution keys for torch_distributed (_huggingface_distribution_configuration)
    hps = request["HyperParameters"]
    assert hps["sagemaker_torch_distributed_enabled"] == "true"
    assert hps["sagemaker_instance_type"] == '"ml.g5.12xlarge"'
    record = json.loads((aiops_home / "runs" / request["TrainingJobName"] / "run.json").read_text())
    assert record["config"]["framework"] == "huggingface"
    assert record["config"]["transformers_version"] == "4.49"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--transformers-version", "4.99"], "--transformers-version 4.99: no Hugging Face training image"),
        (
            ["--transformers-version", "4.49", "--instance-type", "ml.m5.xlarge"],
            "ml.m5.xlarge has no NVIDIA GPU",
        ),
        (["--transformers-version", "4.49", "--framework-version", "2.3"], "PyTorch 2.5.1 only, not 2.3"),
    ],
)
def test_no_image_is_refused_before_any_upload(run_cli, project: Path, platform, extra, expected) -> None:
    result = _submit(run_cli, project, "--framework", "huggingface", *extra)
    assert result.returncode == 2, result.output
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert platform.count("s3:PUT") == 0 and platform.count("SageMaker.CreateTrainingJob") == 0


def test_a_local_run_says_when_the_installed_transformers_is_not_the_images(
    run_cli, project: Path, aiops_home: Path
) -> None:
    from importlib import metadata

    installed = metadata.version("transformers")
    other = "4.49" if not installed.startswith("4.49.") else "4.56"
    result = run_cli(
        "train", "train.py", "--source-dir", str(project), "--transformers-version", other, "--json"
    )
    assert result.returncode == 0, result.output
    job = json.loads(result.stdout)["job_name"]
    record = json.loads((aiops_home / "runs" / job / "run.json").read_text())
    (note,) = [w for w in record["warnings"] if "transformers" in w]
    assert f"installed transformers {installed}" in note and f"--transformers-version {other}" in note
    assert (
        record["config"]["framework"] == "huggingface" and record["config"]["transformers_version"] == other
    )
    # a bad version is refused locally too, before anything runs
    bad = run_cli("train", "train.py", "--source-dir", str(project), "--transformers-version", "3.0")
    assert bad.returncode == 2 and "no Hugging Face training image has it" in bad.stderr
