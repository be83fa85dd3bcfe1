"""Structure and wiring of the planned stack (Pulumi mocks; the same code as `preview --offline`)."""

from __future__ import annotations

import pytest
from aiops.infra.offline import UnknownInvokeError, _mock_invoke

COMPONENTS = {"aiops:infra:Storage", "aiops:infra:Access", "aiops:infra:Endpoint", "aiops:infra:GpuCompute"}


def test_every_component_declared_and_every_child_parented(full_plan):
    types = {r.type for r in full_plan.resources}
    assert COMPONENTS <= types
    components = {r.name for r in full_plan.resources if r.type in COMPONENTS}
    for r in full_plan.resources:
        if r.type in COMPONENTS or r.type.startswith("pulumi:providers:"):
            assert r.parent is None
        else:
            assert r.parent in components, f"{r.type} {r.name} has parent {r.parent}"


def test_storage_resources(full_plan):
    for t in (
        "aws:kms/key:Key",
        "aws:s3/bucket:Bucket",
        "aws:s3/bucketVersioning:BucketVersioning",
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        "aws:s3/bucketPolicy:BucketPolicy",
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    ):
        assert full_plan.one(t).parent == "storage"
    assert full_plan.one("aws:kms/key:Key").inputs["enableKeyRotation"] is True
    rules = {
        r["id"]: r
        for r in full_plan.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration").inputs[
            "rules"
        ]
    }
    assert rules["expire-noncurrent-versions"]["noncurrentVersionExpiration"]["noncurrentDays"] == 30
    assert (
        rules["abort-incomplete-multipart-uploads"]["abortIncompleteMultipartUpload"]["daysAfterInitiation"]
        == 7
    )


def test_scaling_target_names_endpoint_and_variant(full_plan):
    endpoint = full_plan.one("aws:sagemaker/endpoint:Endpoint")
    target = full_plan.one("aws:appautoscaling/target:Target")
    assert target.inputs["resourceId"] == f"endpoint/{endpoint.inputs['name']}/variant/primary"
    assert target.inputs["scalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (1, 2)
    policy = full_plan.one("aws:appautoscaling/policy:Policy")
    assert policy.inputs["resourceId"] == target.inputs["resourceId"]
    tt = policy.inputs["targetTrackingScalingPolicyConfiguration"]
    assert (
        tt["predefinedMetricSpecification"]["predefinedMetricType"]
        == "SageMakerVariantInvocationsPerInstance"
    )
    assert (tt["scaleInCooldown"], tt["scaleOutCooldown"], tt["targetValue"]) == (300, 60, 840)


def test_alarms_feed_the_rollback_config(full_plan):
    endpoint = full_plan.one("aws:sagemaker/endpoint:Endpoint")
    every = full_plan.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    # the idle alarm notifies but never rolls back (an idle endpoint would roll back every deployment)
    alarms = [a for a in every if a.inputs["metricName"] != "Invocations"]
    assert len(every) == 3 and {a.inputs["metricName"] for a in alarms} == {
        "Invocation5XXErrors",
        "ModelLatency",
    }
    rollback = [
        a["alarmName"] for a in endpoint.inputs["deploymentConfig"]["autoRollbackConfiguration"]["alarms"]
    ]
    assert sorted(rollback) == sorted(a.inputs["name"] for a in alarms)
    for a in every:
        assert a.inputs["dimensions"] == {"EndpointName": endpoint.inputs["name"], "VariantName": "primary"}
    routing = endpoint.inputs["deploymentConfig"]["blueGreenUpdatePolicy"]["trafficRoutingConfiguration"]
    assert routing["type"] == "CANARY" and routing["canarySize"]["value"] == 10


def test_endpoint_config_can_be_created_before_the_old_is_deleted(full_plan):
    config = full_plan.one("aws:sagemaker/endpointConfiguration:EndpointConfiguration")
    assert "name" not in config.inputs and config.inputs["namePrefix"].endswith("-")
    assert "name" not in full_plan.one("aws:sagemaker/model:Model").inputs
    endpoint = full_plan.one("aws:sagemaker/endpoint:Endpoint")
    assert endpoint.inputs["endpointConfigName"].startswith(config.inputs["namePrefix"])


def test_model_container(full_plan):
    model = full_plan.one("aws:sagemaker/model:Model")
    container = model.inputs["primaryContainer"]
    assert (
        container["image"] == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5.1-gpu-py311"
    )
    assert container["modelDataUrl"] == "s3://example-bucket/models/sha256/abc/model.tar.gz"
    assert container["environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert model.inputs["executionRoleArn"] == full_plan.outputs["roleArn"]


def test_data_capture_goes_to_the_bucket_with_the_key(full_plan):
    config = full_plan.one("aws:sagemaker/endpointConfiguration:EndpointConfiguration")
    capture = config.inputs["dataCaptureConfig"]
    assert capture["destinationS3Uri"] == f"s3://{full_plan.outputs['bucket']}/data-capture"
    assert capture["kmsKeyId"] == full_plan.outputs["kmsKeyArn"]


def test_outputs(full_plan):
    assert {"bucket", "roleArn", "kmsKeyArn", "endpointName", "region", "launchTemplateId"} <= set(
        full_plan.outputs
    )


def test_gpu_compute(full_plan):
    lt = full_plan.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt.inputs["imageId"] == "ami-0123456789abcdef0" and lt.inputs["instanceType"] == "g5.xlarge"
    ami_call = next(i for i in full_plan.invokes if i["token"] == "aws:ec2/getAmi:getAmi")
    assert {
        "name": "name",
        "values": ["Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"],
    } in ami_call["args"]["filters"]
    asg = full_plan.one("aws:autoscaling/group:Group")
    assert asg.inputs["minSize"] == 0 and asg.inputs["desiredCapacity"] == 0
    assert asg.inputs["vpcZoneIdentifiers"] == ["subnet-0a", "subnet-0b", "subnet-0c"]
    attach = full_plan.one("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert attach.inputs["policyArn"].endswith("AmazonSSMManagedInstanceCore")


def test_spot_uses_mixed_instances(make_plan):
    plan = make_plan(compute={"spot": True})
    dist = plan.one("aws:autoscaling/group:Group").inputs["mixedInstancesPolicy"]["instancesDistribution"]
    assert dist["onDemandPercentageAboveBaseCapacity"] == 0


def test_components_switch_off(make_plan):
    plan = make_plan(endpoint={"enabled": False}, compute={"enabled": False})
    types = {r.type for r in plan.resources}
    assert "aiops:infra:Endpoint" not in types and "aiops:infra:GpuCompute" not in types
    assert "aiops:infra:Storage" in types and "aiops:infra:Access" in types
    assert not any(i["token"].startswith("aws:ec2/") for i in plan.invokes)


def test_own_repository_image(make_plan):
    plan = make_plan(endpoint={"image": {"ownRepository": True, "tag": "1.2.3"}})
    repo = plan.one("aws:ecr/repository:Repository")
    assert repo.inputs["imageTagMutability"] == "IMMUTABLE"
    image = plan.one("aws:sagemaker/model:Model").inputs["primaryContainer"]["image"]
    assert image.endswith(f"/{repo.inputs['name']}:1.2.3")
    import json

    doc = json.loads(plan.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])
    pull = next(s for s in doc["Statement"] if s["Sid"] == "PullImages")
    assert pull["Resource"] == [f"arn:aws:ecr:us-east-1:123456789012:repository/{repo.inputs['name']}"]


def test_serverless_variant(make_plan):
    plan = make_plan(
        endpoint={"serverless": {"enabled": True, "memoryMb": 4096}, "dataCapture": {"enabled": False}}
    )
    variant = plan.one("aws:sagemaker/endpointConfiguration:EndpointConfiguration").inputs[
        "productionVariants"
    ][0]
    assert variant["serverlessConfig"] == {"memorySizeInMb": 4096, "maxConcurrency": 5}
    assert "instanceType" not in variant
    assert plan.of_type("aws:appautoscaling/target:Target") == []
    assert plan.one("aws:sagemaker/model:Model").inputs["primaryContainer"]["image"].endswith("-cpu-py311")


def test_unknown_invoke_raises():
    with pytest.raises(UnknownInvokeError, match="aws:ec2/getInstance"):
        _mock_invoke("aws:ec2/getInstance:getInstance", {}, "us-east-1")


def test_unknown_invoke_inside_a_program_fails_the_plan(make_config, monkeypatch):
    import pulumi_aws as aws
    from aiops.infra import offline, program

    real_build = program.build

    def build_with_extra_invoke(cfg):
        out = real_build(cfg)
        out["zones"] = aws.get_availability_zones_output().names
        return out

    monkeypatch.setattr(program, "build", build_with_extra_invoke)
    with pytest.raises(Exception, match="getAvailabilityZones"):
        offline.plan(make_config(endpoint={"enabled": False}, compute={"enabled": False}))


def test_plans_after_asyncio_run_left_no_event_loop():
    """`asyncio.run` ends by setting no current loop; a plan made afterwards in the same thread
    (another command called in-process, another test in the same worker) still works."""
    import asyncio

    from aiops.infra.config import parse
    from aiops.infra.offline import plan

    from .conftest import merged

    asyncio.run(asyncio.sleep(0))
    result = plan(parse(merged(), stack="test"))
    assert any(r.type == "aws:s3/bucket:Bucket" for r in result.resources)


def test_plans_leave_the_collector_as_they_found_it(make_plan):
    """A plan pauses the cyclic garbage collector while it loads pulumi_aws and runs the program and
    freezes what it loaded (offline._collector_paused): afterwards the collector is on again, or still
    off when the caller had turned it off, and a plan that loads no new module freezes nothing more."""
    import gc

    make_plan()
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    gc.disable()
    try:
        make_plan()
        assert not gc.isenabled()
    finally:
        gc.enable()
    # nothing more frozen (a freeze adds thousands); the count may drop by the frozen objects that
    # reference counting freed meanwhile
    assert gc.get_freeze_count() <= frozen


def test_training_secrets_reach_the_role_and_the_outputs(make_plan):
    import json

    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:aiops/hf-token-AbC123"
    plan = make_plan(access={"trainingSecrets": [arn]})
    doc = json.loads(plan.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])
    read = next(s for s in doc["Statement"] if s["Sid"] == "ReadTrainingSecrets")
    assert read["Action"] == "secretsmanager:GetSecretValue" and read["Resource"] == [arn]
    assert plan.outputs["trainingSecretArns"] == [arn]  # what `aiops train --remote --secret` checks


def test_remote_debug_gives_the_role_the_ssm_channels_only_when_the_stack_says_so(make_plan):
    import json

    from aiops.infra.role_statements import REMOTE_DEBUG_ACTIONS

    def role(plan) -> dict:
        return json.loads(plan.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])

    plain = make_plan()
    assert "ssmmessages" not in json.dumps(role(plain)) and "remoteDebug" not in plain.outputs
    plan = make_plan(access={"remoteDebug": True})
    (debug,) = [s for s in role(plan)["Statement"] if "ssmmessages" in json.dumps(s)]
    assert debug["Sid"] == "RemoteDebugSessions" and debug["Resource"] == "*"
    assert sorted(debug["Action"]) == sorted(REMOTE_DEBUG_ACTIONS) and len(REMOTE_DEBUG_ACTIONS) == 4
    assert plan.outputs["remoteDebug"] is True  # what `aiops train --remote --remote-debug` checks
