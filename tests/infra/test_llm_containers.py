"""LLM containers (LMI, TGI, custom), uncompressed model data and large-model start-up settings:
the config rules, the image URIs against the SageMaker SDK, and the plan field by field (mocks)."""

from __future__ import annotations

import pytest

from aiops.errors import ConfigError

MODEL = "aiops:endpoint"
PREFIX = "s3://example-bucket/models/llama/"


def model_and_variant(plan):
    model = plan.one("aws:sagemaker/model:Model")
    config = plan.one("aws:sagemaker/endpointConfiguration:EndpointConfiguration")
    (variant,) = config.inputs["productionVariants"]
    return model.inputs["primaryContainer"], variant


# the SDK takes ~4 s of CPU to import: both tests that ask it run on one worker
@pytest.mark.xdist_group("sagemaker-sdk")
def test_image_uris_match_the_sagemaker_sdk():
    image_uris = pytest.importorskip("sagemaker.core.image_uris")
    from aiops.infra.images import llm_image_uri

    for region in ("us-east-1", "eu-west-1", "cn-north-1"):
        assert llm_image_uri(kind="lmi", region=region, version="latest") == image_uris.retrieve(
            "djl-lmi", region=region, version="0.38.0"
        )
        assert llm_image_uri(kind="tgi", region=region, version="3.3") == image_uris.retrieve(
            "huggingface-llm", region=region, version="3.3.6", instance_type="ml.g5.xlarge"
        )
    assert llm_image_uri(kind="lmi", region="us-east-1", version="0.38.0") == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.38.0-lmi29.0.0-cu130"
    )


def test_lmi_plan_field_by_field(make_plan):
    plan = make_plan(
        endpoint={
            "container": "lmi",
            "instanceType": "ml.g5.12xlarge",
            "modelDataUrl": PREFIX,
            "llm": {"maxTotalTokens": 4096, "maxBatchSize": 16, "dtype": "bf16"},
            "environment": {"OPTION_TRUST_REMOTE_CODE": "false"},
        }
    )
    container, variant = model_and_variant(plan)
    assert (
        container["image"]
        == "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.38.0-lmi29.0.0-cu130"
    )
    assert container["environment"] == {
        "HF_MODEL_ID": "/opt/ml/model",
        "TENSOR_PARALLEL_DEGREE": "4",  # ml.g5.12xlarge has 4 GPUs
        "OPTION_ROLLING_BATCH": "vllm",
        "OPTION_MAX_ROLLING_BATCH_SIZE": "16",
        "OPTION_MAX_MODEL_LEN": "4096",
        "OPTION_DTYPE": "bf16",
        "OPTION_TRUST_REMOTE_CODE": "false",
    }
    # uncompressed: ModelDataSource with S3Prefix and no compression, no ModelDataUrl
    assert "modelDataUrl" not in container
    assert container["modelDataSource"] == {
        "s3DataSources": [{"s3Uri": PREFIX, "s3DataType": "S3Prefix", "compressionType": "None"}]
    }
    assert variant["instanceType"] == "ml.g5.12xlarge" and variant["modelName"]
    for key in (
        "modelDataDownloadTimeoutInSeconds",
        "containerStartupHealthCheckTimeoutInSeconds",
        "volumeSizeInGb",
    ):
        assert key not in variant  # the model's size is unknown: SageMaker's defaults


def test_tgi_plan_field_by_field(make_plan):
    plan = make_plan(
        endpoint={
            "container": "tgi",
            "instanceType": "ml.g5.2xlarge",
            "llm": {
                "maxInputTokens": 2048,
                "maxTotalTokens": 4096,
                "maxBatchSize": 8,
                "dtype": "fp16",
                "tensorParallelDegree": 1,
            },
        }
    )
    container, _ = model_and_variant(plan)
    assert container["image"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:"
        "2.7.0-tgi3.3.6-gpu-py311-cu124-ubuntu22.04"
    )
    assert container["environment"] == {
        "HF_MODEL_ID": "/opt/ml/model",
        "SM_NUM_GPUS": "1",
        "MAX_INPUT_TOKENS": "2048",
        "MAX_TOTAL_TOKENS": "4096",
        "MAX_BATCH_SIZE": "8",  # the launcher's --max-batch-size: requests per batch
        "DTYPE": "float16",
    }
    assert container["modelDataUrl"] == "s3://example-bucket/models/sha256/abc/model.tar.gz"
    assert "modelDataSource" not in container


@pytest.mark.parametrize("container,variable", [("tgi", "SM_NUM_GPUS"), ("lmi", "TENSOR_PARALLEL_DEGREE")])
def test_an_inference_component_shards_over_its_own_gpus(make_plan, container, variable):
    # SageMaker shows a component's copy only its acceleratorsPerCopy devices: sharding over the
    # instance's 4 GPUs would fail to start the container
    endpoint = {
        "container": container,
        "instanceType": "ml.g5.12xlarge",
        "modelDataUrl": PREFIX,
        "inferenceComponents": {"enabled": True, "acceleratorsPerCopy": 2},
    }
    plan = make_plan(endpoint=endpoint)
    model = plan.one("aws:sagemaker/model:Model")
    component = plan.one("aws-native:sagemaker:InferenceComponent")
    assert model.inputs["primaryContainer"]["environment"][variable] == "2"
    requirements = component.inputs["specification"]["computeResourceRequirements"]
    assert requirements["numberOfAcceleratorDevicesRequired"] == 2
    # no acceleratorsPerCopy: a copy takes every GPU of the instance, and shards over them all
    del endpoint["inferenceComponents"]["acceleratorsPerCopy"]
    model = make_plan(endpoint=endpoint).one("aws:sagemaker/model:Model")
    assert model.inputs["primaryContainer"]["environment"][variable] == "4"


def test_pytorch_and_custom_containers(make_plan):
    container, _ = model_and_variant(make_plan())
    assert container["environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["image"].endswith("/pytorch-inference:2.5.1-gpu-py311")
    uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-llm:1.0"
    container, _ = model_and_variant(
        make_plan(endpoint={"container": "custom", "image": {"uri": uri}, "environment": {"PORT": "8080"}})
    )
    assert container["image"] == uri and container["environment"] == {"PORT": "8080"}


def test_startup_settings_from_the_model_size(make_plan):
    # 40 GB: download 300 + 20 x 40 = 1100 s; health check 600 + 10 x 40 = 1000 s; ml.p3 is EBS-backed:
    # volume 2 x 40 + 10 = 90 GB
    plan = make_plan(
        endpoint={
            "container": "lmi",
            "instanceType": "ml.p3.16xlarge",
            "modelSizeGb": 40,
            "modelDataUrl": PREFIX,
        }
    )
    _, variant = model_and_variant(plan)
    assert variant["modelDataDownloadTimeoutInSeconds"] == 1100
    assert variant["containerStartupHealthCheckTimeoutInSeconds"] == 1000
    assert variant["volumeSizeInGb"] == 90
    # 200 GB on a local-NVMe type (g5): both timeouts capped at 3600 s; no volume (g5 refuses it)
    plan = make_plan(
        endpoint={
            "container": "tgi",
            "instanceType": "ml.g5.48xlarge",
            "modelSizeGb": 200,
            "containerStartupHealthCheckTimeoutSeconds": 1800,
        }
    )
    _, variant = model_and_variant(plan)
    assert variant["modelDataDownloadTimeoutInSeconds"] == 3600
    assert variant["containerStartupHealthCheckTimeoutInSeconds"] == 1800  # the override wins
    assert "volumeSizeInGb" not in variant


@pytest.mark.parametrize(
    "endpoint,message",
    [
        (
            {"container": "lmi", "instanceType": "ml.c5.xlarge", "requireGpu": False},
            "aiops:endpoint.container='lmi' needs a GPU instance type; "
            "instanceType='ml.c5.xlarge' has no GPU",
        ),
        (
            {"container": "tgi", "serverless": {"enabled": True}, "dataCapture": {"enabled": False}},
            "a serverless variant has no GPU",
        ),
        (
            {"container": "lmi", "llm": {"tensorParallelDegree": 2}},
            "llm.tensorParallelDegree=2 > the 1 GPU(s) of ml.g5.xlarge",
        ),
        ({"container": "custom"}, "container='custom' needs image.uri or image.ownRepository"),
        (
            {
                "container": "tgi",
                "instanceType": "ml.g5.12xlarge",
                "llm": {"tensorParallelDegree": 4},
                "inferenceComponents": {"enabled": True, "acceleratorsPerCopy": 2},
            },
            "llm.tensorParallelDegree=4 > inferenceComponents.acceleratorsPerCopy=2: a copy of the model "
            "sees only its own GPUs; allowed: 1..2",
        ),
        (
            {"container": "vllm"},
            "aiops:endpoint.container='vllm': Input should be 'pytorch', 'huggingface', 'lmi', 'tgi' or "
            "'custom'",
        ),
        (
            {"container": "tgi", "llm": {"maxInputTokens": 4096, "maxTotalTokens": 4096}},
            "aiops:endpoint.llm.maxInputTokens=4096 >= maxTotalTokens=4096",
        ),
        ({"container": "tgi", "llm": {"dtype": "fp32"}}, "llm.dtype='fp32': TGI serves float16 or bfloat16"),
        (
            {"container": "lmi", "llm": {"maxInputTokens": 1024}},
            "llm.maxInputTokens=1024: TGI's MAX_INPUT_TOKENS, which LMI has no equivalent",
        ),
        (
            {"container": "lmi", "llm": {"version": "9.9"}},
            "aiops:endpoint.llm.version='9.9': no djl-lmi image known",
        ),
        ({"llm": {"maxTokens": 1}}, "aiops:endpoint.llm.maxTokens: unknown key"),
        ({"modelDataUrl": "s3://b/prefix"}, "or an s3://bucket/prefix/ of uncompressed model files"),
        (
            {"instanceType": "ml.g5.xlarge", "volumeSizeGb": 100},
            "volumeSizeGb=100: ml.g5.xlarge has local NVMe storage",
        ),
    ],
)
def test_config_errors_name_the_key(make_config, make_plan, endpoint, message):
    with pytest.raises(ConfigError) as err:
        make_plan(endpoint=endpoint)  # config errors come before any resource is declared
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_model_waits_for_the_role_policy(make_plan):
    # the policy names the container's image repository: switched from tgi to lmi, the new model's
    # container must not be pulled before the policy names djl-inference
    plan = make_plan(endpoint={"container": "lmi", "modelDataUrl": PREFIX})
    (policy,) = [r for r in plan.of_type("aws:iam/rolePolicy:RolePolicy") if r.name.startswith("access-")]
    assert "repository/djl-inference" in policy.inputs["policy"]
    assert policy.name in plan.one("aws:sagemaker/model:Model").dependencies
