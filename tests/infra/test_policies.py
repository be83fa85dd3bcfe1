"""The pure policy functions, tested directly."""

from __future__ import annotations

import pytest
from aiops.infra import images, policies, scaling

from aiops.errors import ConfigError

BUCKET = "arn:aws:s3:::b-1"
KEY = "arn:aws:kms:us-east-1:123456789012:key/k"


def role_policy(**kw):
    args = dict(
        bucket_arn=BUCKET,
        key_arn=KEY,
        region="us-east-1",
        account_id="123456789012",
        read_prefixes=("models/",),
        write_prefixes=("output/",),
        image_registry_account="763104351884",
    )
    args.update(kw)
    return policies.execution_role_policy(**args)


def test_tls_only_policy_denies_insecure_transport():
    doc = policies.tls_only_bucket_policy(BUCKET)
    (st,) = doc["Statement"]
    assert st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert st["Resource"] == [BUCKET, BUCKET + "/*"]


def test_tls_policy_rejects_non_s3_arn():
    with pytest.raises(ValueError, match="expected an s3 ARN"):
        policies.tls_only_bucket_policy(KEY)


def test_execution_role_is_scoped():
    doc = role_policy()
    assert policies.wildcard_statements(doc) == []
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["ReadOwnPrefixes"]["Resource"] == [BUCKET + "/models/*"]
    assert by_sid["WriteOwnPrefixes"]["Resource"] == [BUCKET + "/output/*"]
    assert by_sid["UseStackKey"]["Resource"] == KEY
    assert (
        by_sid["PullImages"]["Resource"][0]
        == "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-inference"
    )
    # The only Resource "*" statements are single actions without resource-level permissions.
    star = sorted(s["Sid"] for s in doc["Statement"] if s["Resource"] == "*")
    assert star == ["EcrLogin", "OwnMetrics"]
    assert by_sid["OwnMetrics"]["Condition"]["StringLike"]["cloudwatch:namespace"]


def test_execution_role_own_repository():
    repo = "arn:aws:ecr:us-east-1:123456789012:repository/aiops-x-server"
    doc = role_policy(image_registry_account=None, own_repository_arn=repo)
    pull = next(s for s in doc["Statement"] if s["Sid"] == "PullImages")
    assert pull["Resource"] == [repo]


def test_execution_role_needs_a_readable_prefix():
    with pytest.raises(ValueError, match="readable prefix"):
        role_policy(read_prefixes=())


def test_wildcard_detector():
    doc = {
        "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"},
            {"Effect": "Deny", "Action": "*", "Resource": "*"},
        ]
    }
    assert len(policies.wildcard_statements(doc)) == 1


def test_kms_key_policy():
    doc = policies.kms_key_policy(account_id="123456789012")
    assert [s["Sid"] for s in doc["Statement"]] == ["AccountAdministersKeyThroughIam"]
    assert policies.wildcard_statements(doc) == []
    doc = policies.kms_key_policy(account_id="123456789012", allow_autoscaling=True)
    assert "AWSServiceRoleForAutoScaling" in doc["Statement"][1]["Principal"]["AWS"]
    with pytest.raises(ValueError, match="12 digits"):
        policies.kms_key_policy(account_id="12")
    doc = policies.kms_key_policy(account_id="123456789012", allow_cloudwatch_alarms=True)
    assert doc["Statement"][-1] == {
        "Sid": "CloudWatchAlarmsPublishToEncryptedTopics",
        "Effect": "Allow",
        "Principal": {"Service": "cloudwatch.amazonaws.com"},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
        "Resource": "*",
        "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}},
    }
    assert "Condition" not in policies.CLOUDWATCH_ALARMS_KEY_STATEMENT  # the shared template is not mutated


def test_assume_role_policy():
    doc = policies.assume_role_policy("sagemaker.amazonaws.com", account_id="123456789012")
    assert doc["Statement"][0]["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}
    with pytest.raises(ValueError):
        policies.assume_role_policy("sagemaker")


def test_scaling_resource_id():
    assert scaling.scaling_resource_id("ep", "primary") == "endpoint/ep/variant/primary"


@pytest.mark.parametrize(
    "explicit, rps, util, expected", [(None, 20, 0.7, 840.0), (None, 10, 1.0, 600.0), (50, 1, 1, 50.0)]
)
def test_target_invocations(explicit, rps, util, expected):
    assert (
        scaling.target_invocations_per_instance(
            explicit=explicit, max_rps_per_instance=rps, target_utilization=util
        )
        == expected
    )


def test_target_invocations_rejects_bad_values():
    with pytest.raises(ConfigError):
        scaling.target_invocations_per_instance(explicit=None, max_rps_per_instance=0, target_utilization=0.5)


def test_target_tracking_configuration():
    c = scaling.target_tracking_configuration(
        target_value=10, scale_in_cooldown=300, scale_out_cooldown=60, disable_scale_in=False
    )
    assert (
        c["predefined_metric_specification"]["predefined_metric_type"]
        == "SageMakerVariantInvocationsPerInstance"
    )


@pytest.mark.parametrize(
    "traffic, kind, size_key",
    [
        ("canary", "CANARY", "canary_size"),
        ("linear", "LINEAR", "linear_step_size"),
        ("all-at-once", "ALL_AT_ONCE", None),
    ],
)
def test_deployment_config(traffic, kind, size_key):
    c = scaling.deployment_config(
        traffic=traffic,
        canary_percent=10,
        linear_step_percent=20,
        wait_seconds=60,
        termination_wait_seconds=0,
        max_execution_timeout_seconds=3600,
        rollback_alarm_names=["a", "b"],
    )
    routing = c["blue_green_update_policy"]["traffic_routing_configuration"]
    assert routing["type"] == kind
    if size_key:
        assert routing[size_key]["type"] == "CAPACITY_PERCENT"
    assert c["auto_rollback_configuration"] == {"alarms": [{"alarm_name": "a"}, {"alarm_name": "b"}]}
    with pytest.raises(ConfigError, match="allowed: all-at-once, canary, linear"):
        scaling.deployment_config(
            traffic="x",
            canary_percent=1,
            linear_step_percent=1,
            wait_seconds=0,
            termination_wait_seconds=0,
            max_execution_timeout_seconds=600,
            rollback_alarm_names=[],
        )


def test_image_uris():
    assert images.pytorch_inference_uri(
        region="us-east-1", version="2.5", py_version="py311", instance_type="ml.g5.xlarge"
    ) == ("763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5.1-gpu-py311")
    assert images.pytorch_inference_uri(
        region="cn-north-1", version="2.6", py_version="py312", instance_type=None
    ) == ("727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/pytorch-inference:2.6.0-cpu-py312")
    with pytest.raises(ConfigError, match="pyVersion='py39'"):
        images.pytorch_inference_uri(region="us-east-1", version="2.5", py_version="py39", instance_type=None)
    with pytest.raises(ConfigError, match="frameworkVersion='0.1'"):
        images.pytorch_inference_uri(
            region="us-east-1", version="0.1", py_version="py311", instance_type=None
        )


SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:aiops/hf-token-AbC123"
OTHER_REGION_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:wandb-Xy9Zz1"


def test_execution_role_reads_exactly_the_training_secrets():
    assert not any(
        "secretsmanager" in str(s["Action"]) or s["Sid"] == "DecryptTrainingSecrets"
        for s in role_policy()["Statement"]
    )  # none unless listed
    doc = role_policy(secret_arns=(SECRET, OTHER_REGION_SECRET), secret_key_arns=(KEY,))
    assert policies.wildcard_statements(doc) == []
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["ReadTrainingSecrets"] == {
        "Sid": "ReadTrainingSecrets",
        "Effect": "Allow",
        "Action": "secretsmanager:GetSecretValue",
        "Resource": [SECRET, OTHER_REGION_SECRET],
    }
    assert by_sid["DecryptTrainingSecrets"]["Resource"] == [KEY]
    assert by_sid["DecryptTrainingSecrets"]["Condition"] == {
        "StringEquals": {
            "kms:ViaService": [
                "secretsmanager.eu-west-1.amazonaws.com",
                "secretsmanager.us-east-1.amazonaws.com",
            ]
        }
    }
    assert "DecryptTrainingSecrets" not in {s["Sid"] for s in role_policy(secret_arns=(SECRET,))["Statement"]}
