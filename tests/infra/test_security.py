"""Security invariants over the whole plan, for the example stacks and edge configurations."""

from __future__ import annotations

import json

import pytest
from aiops.infra.config import parse
from aiops.infra.instance_types import has_local_storage
from aiops.infra.offline import plan
from aiops.infra.policies import wildcard_statements
from aiops.infra.stack_file import load_stack_file

from .conftest import REPO, merged

POLICY_TYPES = {
    "aws:iam/role:Role": "assumeRolePolicy",
    "aws:iam/rolePolicy:RolePolicy": "policy",
    "aws:s3/bucketPolicy:BucketPolicy": "policy",
    "aws:kms/key:Key": "policy",
}

CONFIGS = {
    "dev": lambda: load_stack_file(REPO / "Pulumi.dev.yaml"),
    "prod": lambda: load_stack_file(REPO / "Pulumi.prod.yaml"),
    "p3-own-image": lambda: parse(
        merged(endpoint={"instanceType": "ml.p3.2xlarge", "image": {"ownRepository": True}}), stack="p3"
    ),
    "serverless": lambda: parse(
        merged(endpoint={"serverless": {"enabled": True}, "dataCapture": {"enabled": False}}), stack="sl"
    ),
    # scale to zero: the aws-native inference component (LMI, uncompressed) and async inference (TGI, p3: EBS)
    "inference-components": lambda: parse(
        merged(
            endpoint={
                "container": "lmi",
                "modelDataUrl": "s3://example-bucket/models/llama/",
                "inferenceComponents": {"enabled": True},
            }
        ),
        stack="ic",
    ),
    "async": lambda: parse(
        merged(
            endpoint={
                "container": "tgi",
                "instanceType": "ml.p3.2xlarge",
                "modelSizeGb": 20,
                "asyncInference": {"enabled": True},
            }
        ),
        stack="async",
    ),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def planned(request):
    cfg = CONFIGS[request.param]()
    return cfg, plan(cfg)


def test_no_public_bucket(planned):
    _, p = planned
    buckets = p.of_type("aws:s3/bucket:Bucket")
    blocks = p.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert len(blocks) == len(buckets) == 1
    for block in blocks:
        for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
            assert block.inputs[flag] is True
    for b in buckets:
        assert "acl" not in b.inputs and "policy" not in b.inputs


def test_tls_only_storage(planned):
    _, p = planned
    (policy,) = p.of_type("aws:s3/bucketPolicy:BucketPolicy")
    doc = json.loads(policy.inputs["policy"])
    deny = [s for s in doc["Statement"] if s["Effect"] == "Deny"]
    assert any(
        s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} and s["Action"] == "s3:*" for s in deny
    )


def test_everything_encrypted_with_the_stack_key(planned):
    cfg, p = planned
    key_arn = p.outputs["kmsKeyArn"]
    (sse,) = p.of_type(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    rule = sse.inputs["rules"][0]
    assert rule["applyServerSideEncryptionByDefault"] == {
        "sseAlgorithm": "aws:kms",
        "kmsMasterKeyId": key_arn,
    }
    assert rule["bucketKeyEnabled"] is True
    for lt in p.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        for mapping in lt.inputs["blockDeviceMappings"]:
            ebs = mapping["ebs"]
            assert ebs["encrypted"] == "true" and ebs["kmsKeyId"] == key_arn and ebs["volumeType"] == "gp3"
    for repo in p.of_type("aws:ecr/repository:Repository"):
        assert repo.inputs["encryptionConfigurations"] == [{"encryptionType": "KMS", "kmsKey": key_arn}]
    for ec in p.of_type("aws:sagemaker/endpointConfiguration:EndpointConfiguration"):
        variants = ec.inputs["productionVariants"]
        exempt = all("serverlessConfig" in v or has_local_storage(v["instanceType"]) for v in variants)
        # Documented AWS exception: local-NVMe instance types (ml.g5, ...) are hardware-encrypted and
        # refuse a KmsKeyId; serverless variants have no ML storage volume.
        assert ec.inputs.get("kmsKeyArn") == (None if exempt else key_arn)
        if "dataCaptureConfig" in ec.inputs:
            assert ec.inputs["dataCaptureConfig"]["kmsKeyId"] == key_arn
        if "asyncInferenceConfig" in ec.inputs:
            assert ec.inputs["asyncInferenceConfig"]["outputConfig"]["kmsKeyId"] == key_arn


def test_every_topic_encrypted_with_the_stack_key(planned):
    cfg, p = planned
    key_arn = p.outputs["kmsKeyArn"]
    topics = p.of_type("aws:sns/topic:Topic")
    idle = cfg.endpoint.enabled and cfg.endpoint.idle_alarm.enabled
    async_topics = 2 if cfg.endpoint.enabled and cfg.endpoint.async_inference.enabled else 0
    assert len(topics) == (1 if idle else 0) + async_topics
    for topic in topics:
        assert topic.inputs["kmsMasterKeyId"] == key_arn
    # CloudWatch alarms can publish to the idle alarm's topic only if the key policy lets them use
    # the key (the async topics are published to by SageMaker as the execution role)
    sids = [s["Sid"] for s in json.loads(p.one("aws:kms/key:Key").inputs["policy"])["Statement"]]
    assert ("CloudWatchAlarmsPublishToEncryptedTopics" in sids) == idle


def test_imdsv2_everywhere(planned):
    _, p = planned
    for lt in p.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        assert lt.inputs["metadataOptions"]["httpTokens"] == "required"
        assert lt.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert not p.of_type("aws:ec2/instance:Instance")  # every machine comes from a launch template


def test_no_open_ingress(planned):
    _, p = planned
    for sg in p.of_type("aws:ec2/securityGroup:SecurityGroup"):
        for rule in sg.inputs.get("ingress", []):
            assert "0.0.0.0/0" not in rule.get("cidrBlocks", []) and "::/0" not in rule.get(
                "ipv6CidrBlocks", []
            )
        assert not any(
            r.get("fromPort", -1) <= 22 <= r.get("toPort", -1) for r in sg.inputs.get("ingress", [])
        )
    for rule in p.of_type("aws:ec2/securityGroupRule:SecurityGroupRule") + p.of_type(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
    ):
        assert rule.inputs.get("type") != "ingress" or "0.0.0.0/0" not in rule.inputs.get("cidrBlocks", [])


def test_no_action_star_resource_star(planned):
    _, p = planned
    seen = 0
    for type_, field in POLICY_TYPES.items():
        for r in p.of_type(type_):
            doc = json.loads(r.inputs[field])
            assert wildcard_statements(doc) == [], f"{r.name}: Action * on Resource *"
            seen += 1
    assert seen >= 4


def test_kms_key_rotates(planned):
    _, p = planned
    for key in p.of_type("aws:kms/key:Key"):
        assert key.inputs["enableKeyRotation"] is True


def test_p3_endpoint_carries_the_key():
    cfg = CONFIGS["p3-own-image"]()
    p = plan(cfg)
    ec = p.one("aws:sagemaker/endpointConfiguration:EndpointConfiguration")
    assert ec.inputs["kmsKeyArn"] == p.outputs["kmsKeyArn"]
