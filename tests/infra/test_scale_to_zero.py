"""Scale to zero: inference components and asynchronous inference, planned under the mocks and
checked field by field; their costs ($0/h idle); the combinations that are refused."""

from __future__ import annotations

import prices
import pytest
from aiops.infra import scale_to_zero
from aiops.infra.costs import plan_costs

from aiops.errors import ConfigError

CONFIG = "aws:sagemaker/endpointConfiguration:EndpointConfiguration"
TARGET = "aws:appautoscaling/target:Target"
POLICY = "aws:appautoscaling/policy:Policy"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
IC = "aws-native:sagemaker:InferenceComponent"
TOPIC = "aws:sns/topic:Topic"


def planned(endpoint: dict):
    """A stack with just the endpoint (and its storage and role), planned under the mocks."""
    from aiops.infra.config import parse
    from aiops.infra.offline import plan

    raw = {
        "aws:region": "us-east-1",
        "aiops:endpoint": {
            "enabled": True,
            "modelDataUrl": "s3://example-bucket/models/sha256/abc/model.tar.gz",
            "instanceType": "ml.g5.xlarge",
            **endpoint,
        },
    }
    return plan(parse(raw, stack="test"))


@pytest.fixture(scope="module")
def ic_plan():
    return planned(
        {
            "container": "lmi",
            "instanceType": "ml.g5.12xlarge",
            "modelSizeGb": 30,
            "modelDataUrl": "s3://example-bucket/models/llama/",
            "inferenceComponents": {
                "enabled": True,
                "maxCopies": 2,
                "maxInstances": 2,
                "memoryMbPerCopy": 65536,
            },
        }
    )


@pytest.fixture(scope="module")
def async_plan():
    return planned(
        {
            "asyncInference": {
                "enabled": True,
                "maxCapacity": 3,
                "maxConcurrentInvocationsPerInstance": 4,
                "targetBacklogPerInstance": 2,
            },
        }
    )


def by_name(plan, type_, suffix):
    (found,) = [r for r in plan.of_type(type_) if r.name.endswith(suffix)]
    return found


def test_inference_components_plan_field_by_field(ic_plan):
    endpoint = ic_plan.one("aws:sagemaker/endpoint:Endpoint")
    config = ic_plan.one(CONFIG)
    role = ic_plan.one("aws:iam/role:Role")
    (variant,) = config.inputs["productionVariants"]
    assert "modelName" not in variant  # the component names the model
    # the mocks name an unnamed role after its resource (the engine would pick a random suffix)
    assert config.inputs["executionRoleArn"] == f"arn:aws:iam::123456789012:role/{role.name}"
    assert variant["managedInstanceScaling"] == {
        "status": "ENABLED",
        "minInstanceCount": 0,
        "maxInstanceCount": 2,
    }
    assert variant["routingConfigs"] == [{"routingStrategy": "LEAST_OUTSTANDING_REQUESTS"}]
    assert variant["instanceType"] == "ml.g5.12xlarge"
    assert "modelDataDownloadTimeoutInSeconds" not in variant and "deploymentConfig" not in endpoint.inputs

    component = ic_plan.one(IC)
    assert component.parent == "endpoint"
    assert (
        component.inputs["endpointName"] == endpoint.inputs["name"]
        and component.inputs["variantName"] == "primary"
    )
    spec = component.inputs["specification"]
    model = ic_plan.one("aws:sagemaker/model:Model")
    assert spec["modelName"] == model.name  # the mocks name an unnamed model after its resource
    # all 4 GPUs of ml.g5.12xlarge per copy; 30 GB: download 300 + 20 x 30 = 900 s,
    # start 600 + 10 x 30 = 900 s
    assert spec["computeResourceRequirements"] == {
        "minMemoryRequiredInMb": 65536,
        "numberOfAcceleratorDevicesRequired": 4,
    }
    assert spec["startupParameters"] == {
        "modelDataDownloadTimeoutInSeconds": 900,
        "containerStartupHealthCheckTimeoutInSeconds": 900,
    }
    assert component.inputs["runtimeConfig"] == {"copyCount": 1}
    name = component.inputs["inferenceComponentName"]

    target = ic_plan.one(TARGET)
    assert target.inputs["resourceId"] == f"inference-component/{name}"
    assert target.inputs["scalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (0, 2)
    tracking = by_name(ic_plan, POLICY, "copies-policy")
    tt = tracking.inputs["targetTrackingScalingPolicyConfiguration"]
    assert tt["predefinedMetricSpecification"] == {
        "predefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"
    }
    step = by_name(ic_plan, POLICY, "scale-out-from-zero")
    assert (
        step.inputs["policyType"] == "StepScaling"
        and step.inputs["resourceId"] == target.inputs["resourceId"]
    )
    assert step.inputs["stepScalingPolicyConfiguration"] == {
        "adjustmentType": "ChangeInCapacity",
        "metricAggregationType": "Maximum",
        "cooldown": 60,
        "stepAdjustments": [{"metricIntervalLowerBound": "0", "scalingAdjustment": 1}],
    }
    alarm = by_name(ic_plan, ALARM, "no-capacity-alarm")
    assert alarm.inputs["metricName"] == "NoCapacityInvocationFailures"
    assert alarm.inputs["dimensions"] == {"InferenceComponentName": name}
    assert alarm.inputs["alarmActions"] == [f"arn:aws:appautoscaling:us-east-1:123456789012:{step.name}"]
    assert (alarm.inputs["threshold"], alarm.inputs["comparisonOperator"]) == (
        1,
        "GreaterThanOrEqualToThreshold",
    )
    provider = ic_plan.one("pulumi:providers:aws-native")
    assert provider.inputs["region"] == "us-east-1"


def test_the_async_role_reads_requests_and_writes_results_only(async_plan):
    """What `aiops invoke --async` and the endpoint do in the stack's bucket (aiops.stack.S3Layout),
    against the role's policy (moto's evaluator): the endpoint reads the requests the user uploaded
    and writes results and failures; it never writes a request nor reads a result."""
    import json

    from moto.iam.access_control import IAMPolicy, PermissionResult

    from aiops.stack import LAYOUT

    documents = [json.loads(r.inputs["policy"]) for r in async_plan.of_type("aws:iam/rolePolicy:RolePolicy")]

    def allowed(action: str, key: str) -> bool:
        results = [
            IAMPolicy(json.dumps(d)).is_action_permitted(action, f"arn:aws:s3:::{bucket}/{key}")
            for d in documents
        ]
        return PermissionResult.DENIED not in results and PermissionResult.PERMITTED in results

    bucket = async_plan.outputs["bucket"]
    request, result, failure = (
        LAYOUT.async_input_key("f" * 64),
        f"{LAYOUT.async_output}req-1.out",
        f"{LAYOUT.async_failures}req-1-error.out",
    )
    assert (
        allowed("s3:GetObject", request)
        and allowed("s3:PutObject", result)
        and allowed("s3:PutObject", failure)
    )
    assert not allowed("s3:PutObject", request)
    assert not allowed("s3:GetObject", result) and not allowed("s3:GetObject", failure)


def test_async_inference_plan_field_by_field(async_plan):
    config = async_plan.one(CONFIG)
    bucket = async_plan.one("aws:s3/bucket:Bucket").inputs.get("bucket") or async_plan.outputs["bucket"]
    key = async_plan.one("aws:kms/key:Key")
    out = config.inputs["asyncInferenceConfig"]["outputConfig"]
    assert out["s3OutputPath"] == f"s3://{bucket}/async-inference/output"
    assert out["s3FailurePath"] == f"s3://{bucket}/async-inference/failures"
    assert out["kmsKeyId"] == f"arn:aws:kms:us-east-1:123456789012:key/{key.name}"
    topics = {t.name: t for t in async_plan.of_type(TOPIC)}
    success, error = topics["endpoint-async-success"], topics["endpoint-async-error"]
    assert out["notificationConfig"] == {
        "successTopic": f"arn:aws:sns:us-east-1:123456789012:{success.inputs['name']}",
        "errorTopic": f"arn:aws:sns:us-east-1:123456789012:{error.inputs['name']}",
    }
    for t in (success, error):
        assert t.inputs["kmsMasterKeyId"] == out["kmsKeyId"]
    assert config.inputs["asyncInferenceConfig"]["clientConfig"] == {"maxConcurrentInvocationsPerInstance": 4}

    endpoint = async_plan.one("aws:sagemaker/endpoint:Endpoint")
    target = async_plan.one(TARGET)
    assert target.inputs["resourceId"] == f"endpoint/{endpoint.inputs['name']}/variant/primary"
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (0, 3)
    tt = by_name(async_plan, POLICY, "backlog-policy").inputs["targetTrackingScalingPolicyConfiguration"]
    assert tt["targetValue"] == 2 and tt["customizedMetricSpecification"] == {
        "metricName": "ApproximateBacklogSizePerInstance",
        "namespace": "AWS/SageMaker",
        "dimensions": [{"name": "EndpointName", "value": endpoint.inputs["name"]}],
        "statistic": "Average",
    }
    step = by_name(async_plan, POLICY, "scale-out-from-zero")
    alarm = by_name(async_plan, ALARM, "backlog-alarm")
    assert alarm.inputs["metricName"] == "HasBacklogWithoutCapacity"
    assert alarm.inputs["dimensions"] == {"EndpointName": endpoint.inputs["name"]}
    assert alarm.inputs["alarmActions"] == [f"arn:aws:appautoscaling:us-east-1:123456789012:{step.name}"]
    # the classic variant still has its blue/green deployment (guardrails support async endpoints)
    assert endpoint.inputs["deploymentConfig"]["blueGreenUpdatePolicy"]


def test_costs_say_zero_when_idle(ic_plan, async_plan):
    # inference components: managed instance scaling 0..2 x ml.g5.12xlarge: $0/h idle, 2 x its price at max
    (line,) = [x for x in plan_costs(ic_plan).lines if x.service == "sagemaker"]
    assert (line.count, line.max_count, line.hourly) == (0, 2, 0.0)
    assert line.max_hourly == pytest.approx(2 * prices.hourly("ml.g5.12xlarge"))
    assert "scales to 0" in line.note and "cold start" in line.note
    # async: 0..3 x ml.g5.xlarge: $0/h idle, 3 x its price at max
    (line,) = [x for x in plan_costs(async_plan).lines if x.service == "sagemaker"]
    assert (line.count, line.max_count, line.hourly) == (0, 3, 0.0)
    assert line.max_hourly == pytest.approx(3 * prices.hourly("ml.g5.xlarge"))
    assert "scales to 0" in line.note


@pytest.mark.parametrize(
    "endpoint,message",
    [
        (
            {
                "inferenceComponents": {"enabled": True},
                "serverless": {"enabled": True},
                "dataCapture": {"enabled": False},
            },
            "inferenceComponents and serverless cannot be combined",
        ),
        (
            {
                "asyncInference": {"enabled": True},
                "serverless": {"enabled": True},
                "dataCapture": {"enabled": False},
            },
            "asyncInference and serverless cannot be combined",
        ),
        ({"inferenceComponents": {"enabled": True}, "asyncInference": {"enabled": True}}, "pick one"),
        (
            {"inferenceComponents": {"enabled": True, "minCopies": 3, "maxCopies": 2}},
            "aiops:endpoint.inferenceComponents.minCopies=3 > maxCopies=2",
        ),
        (
            {"inferenceComponents": {"enabled": True, "acceleratorsPerCopy": 2}},
            "inferenceComponents.acceleratorsPerCopy=2 > the 1 GPU(s) of ml.g5.xlarge",
        ),
    ],
)
def test_refused_combinations(make_config, endpoint, message):
    with pytest.raises(ConfigError) as err:
        make_config(endpoint=endpoint)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_pure_policies():
    assert scale_to_zero.ic_resource_id("m") == "inference-component/m"
    alarm = scale_to_zero.no_capacity_alarm("m")
    assert alarm["statistic"] == "Maximum" and alarm["evaluation_periods"] == 1
    cfg = scale_to_zero.async_inference_config(
        bucket="b", key_arn="k", success_topic="s", error_topic="e", max_concurrent=None
    )
    assert (
        "client_config" not in cfg
        and "include_inference_response_ins" not in cfg["output_config"]["notification_config"]
    )


def test_the_llm_example_stack_validates():
    from aiops.infra.stack_file import load_stack_file

    from .conftest import REPO

    cfg = load_stack_file(REPO / "Pulumi.llm.yaml")
    ep = cfg.endpoint
    assert (ep.container, ep.uncompressed, ep.inference_components.enabled, ep.scales_to_zero) == (
        "lmi",
        True,
        True,
        True,
    )
