"""`container: huggingface`: the Hugging Face inference image from the SageMaker SDK's table (checked
against the SDK itself), its environment and pull permission in the plan (Pulumi mocks), its config errors."""

from __future__ import annotations

import json

import pytest

from aiops.errors import ConfigError

HF_REPOSITORY = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference"


def primary_container(plan) -> dict:
    return plan.one("aws:sagemaker/model:Model").inputs["primaryContainer"]


# the SDK takes ~4 s of CPU to import: the tests that ask it run on one worker
@pytest.mark.xdist_group("sagemaker-sdk")
def test_image_uris_match_the_sagemaker_sdk():
    image_uris = pytest.importorskip("sagemaker.core.image_uris")
    from aiops.images import huggingface_image_uri

    for region in ("us-east-1", "eu-west-1", "cn-north-1"):
        for instance_type in ("ml.g5.xlarge", "ml.m5.xlarge"):
            for transformers, pytorch in (("4.51.3", "2.6.0"), ("4.37.0", "2.1.0"), ("4.26.0", "1.13.1")):
                ours = huggingface_image_uri(
                    region=region,
                    transformers_version=transformers,
                    pytorch_version=pytorch,
                    instance_type=instance_type,
                )
                assert ours == image_uris.retrieve(
                    "huggingface",
                    region=region,
                    version=transformers,
                    base_framework_version=f"pytorch{pytorch}",
                    instance_type=instance_type,
                    image_scope="inference",
                )
    # an alias and no PyTorch version: the table's one pairing, both versions in full in the tag
    assert (
        huggingface_image_uri(
            region="us-east-1", transformers_version="4.49", pytorch_version=None, instance_type=None
        )
        == f"{HF_REPOSITORY}:2.6.0-transformers4.49.0-cpu-py312-ubuntu22.04"
    )


def test_plan_field_by_field(make_plan):
    plan = make_plan(
        endpoint={
            "container": "huggingface",
            "instanceType": "ml.m5.xlarge",
            "requireGpu": False,
            "huggingface": {"transformersVersion": "4.51", "task": "text-classification"},
        }
    )
    container = primary_container(plan)
    assert container["image"] == f"{HF_REPOSITORY}:2.6.0-transformers4.51.3-cpu-py312-ubuntu22.04"
    assert container["environment"] == {
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": "us-east-1",
        "HF_TASK": "text-classification",
    }
    doc = json.loads(plan.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])
    pull = next(s for s in doc["Statement"] if s["Sid"] == "PullImages")
    assert "arn:aws:ecr:us-east-1:763104351884:repository/huggingface-pytorch-inference" in pull["Resource"]


def test_a_gpu_type_gets_the_cuda_image_and_no_task_is_inferred_by_the_container(make_plan):
    container = primary_container(make_plan(endpoint={"container": "huggingface"}))  # ml.g5.xlarge
    assert container["image"] == f"{HF_REPOSITORY}:2.6.0-transformers4.51.3-gpu-py312-cu124-ubuntu22.04"
    assert "HF_TASK" not in container["environment"]


@pytest.mark.parametrize(
    "huggingface,message",
    [
        (
            {"transformersVersion": "9.9"},
            "aiops:endpoint.huggingface.transformersVersion='9.9': "
            "no Hugging Face inference image known for it; allowed: ",
        ),
        (
            {"transformersVersion": "4.51", "pytorchVersion": "2.1"},
            "huggingface.pytorchVersion='2.1': no Hugging Face inference image pairs transformers 4.51.3 "
            "with PyTorch 2.1; allowed: 2.6.0",
        ),
        (
            {"transformersVersion": "4.10"},
            "huggingface.pytorchVersion=None: transformers 4.10.2 images exist for PyTorch 1.8.1, 1.9.0: "
            "pick one",
        ),
        ({"task": 3}, "aiops:endpoint.huggingface.task=3: Input should be a valid string"),
    ],
)
def test_config_errors_name_the_key(make_plan, huggingface, message):
    with pytest.raises(ConfigError) as err:
        make_plan(endpoint={"container": "huggingface", "huggingface": huggingface})
    assert message in str(err.value) and "\n" not in str(err.value)
