"""The IAM documents the stack declares, as pure functions: the bucket's and the key's resource
policies, the roles' trust policies, and the SageMaker execution role's policy, assembled from the
statement groups in `infra/role_statements.py` (one function a group).

Kept apart from the components that declare resources (no pulumi import here), so each rule is
unit-tested directly and the components stay thin.
"""

from __future__ import annotations

from typing import Any

from aiops.infra.role_statements import (
    bucket_statements,
    image_repository_arns,
    image_statements,
    key_statements,
    log_and_metric_statements,
    publish_statements,
    remote_debug_statements,
    require_arn,
    secret_statements,
    vpc_statements,
)

ASG_SERVICE_ROLE = "aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"


# ----------------------------------------------------------------------------------- storage


def tls_only_bucket_policy(bucket_arn: str) -> dict[str, Any]:
    """Deny every request to the bucket that does not use TLS (aws:SecureTransport false)."""
    require_arn(bucket_arn, "s3")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def kms_key_policy(
    *,
    account_id: str,
    partition: str = "aws",
    allow_autoscaling: bool = False,
    allow_cloudwatch_alarms: bool = False,
) -> dict[str, Any]:
    """The key policy: the account administers the key through IAM; optionally the EC2 Auto Scaling
    service-linked role may use it for encrypted EBS volumes (it cannot be given an IAM policy);
    optionally CloudWatch alarms of this account may use it to publish to SNS topics encrypted with
    it (without this, alarm notifications to an encrypted topic are dropped silently).

    ``Resource: "*"`` in a key policy means "this key" (AWS requires that form there).
    """
    if not (account_id.isdigit() and len(account_id) == 12):
        raise ValueError(f"account id must be 12 digits, got {account_id!r}")
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AccountAdministersKeyThroughIam",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:{partition}:iam::{account_id}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]
    if allow_autoscaling:
        role = f"arn:{partition}:iam::{account_id}:role/{ASG_SERVICE_ROLE}"
        statements += [
            {
                "Sid": "AutoScalingUsesKeyForEbs",
                "Effect": "Allow",
                "Principal": {"AWS": role},
                "Action": [
                    "kms:Encrypt",
                    "kms:Decrypt",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:DescribeKey",
                ],
                "Resource": "*",
            },
            {
                "Sid": "AutoScalingCreatesGrantsForEbs",
                "Effect": "Allow",
                "Principal": {"AWS": role},
                "Action": "kms:CreateGrant",
                "Resource": "*",
                "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
            },
        ]
    if allow_cloudwatch_alarms:
        statements.append(
            CLOUDWATCH_ALARMS_KEY_STATEMENT
            | {"Condition": {"StringEquals": {"aws:SourceAccount": account_id}}}
        )
    return {"Version": "2012-10-17", "Statement": statements}


# SNS topic encryption with a customer managed key: the publishing service needs these two actions
# on the key (SNS developer guide, "compatibility between event sources from AWS services and
# encrypted topics"). Scoped to alarms of this account by aws:SourceAccount.
CLOUDWATCH_ALARMS_KEY_STATEMENT: dict[str, Any] = {
    "Sid": "CloudWatchAlarmsPublishToEncryptedTopics",
    "Effect": "Allow",
    "Principal": {"Service": "cloudwatch.amazonaws.com"},
    "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
    "Resource": "*",
}


# ------------------------------------------------------------------------------------ access


def assume_role_policy(service: str, *, account_id: str | None = None) -> dict[str, Any]:
    """Trust policy for one AWS service principal, limited to this account where known."""
    if not service.endswith(".amazonaws.com"):
        raise ValueError(f"service principal must end with .amazonaws.com, got {service!r}")
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sts:AssumeRole",
    }
    if account_id:
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": account_id}}
    return {"Version": "2012-10-17", "Statement": [statement]}


def execution_role_policy(
    *,
    bucket_arn: str,
    key_arn: str,
    region: str,
    account_id: str,
    partition: str = "aws",
    read_prefixes: tuple[str, ...],
    write_prefixes: tuple[str, ...],
    image_registry_account: str | None,
    own_repository_arn: str | None = None,
    subnet_ids: tuple[str, ...] = (),
    security_group_ids: tuple[str, ...] = (),
    extra_image_repositories: tuple[tuple[str, str], ...] = (),
    publish_topic_names: tuple[str, ...] = (),
    secret_arns: tuple[str, ...] = (),
    secret_key_arns: tuple[str, ...] = (),
    remote_debug: bool = False,
) -> dict[str, Any]:
    """Least privilege for SageMaker jobs and endpoints run as this role.

    ``remote_debug``: the statement SageMaker documents for training jobs with RemoteDebugConfig
    (``REMOTE_DEBUG_ACTIONS``, the SSM agent's channels; ssmmessages has no resource-level
    permissions, so AWS requires "*").

    ``secret_arns``: the Secrets Manager secrets training jobs read (``--secret``), exactly those;
    ``secret_key_arns``: their customer-managed KMS keys, usable only through Secrets Manager.

    ``extra_image_repositories``: (registry account, repository) of the endpoint's LLM container
    (LMI, TGI). ``publish_topic_names``: the async-inference notification topics (SageMaker
    publishes to them as this role).

    The prefixes are the stack contract's (``aiops.stack.S3Layout.role_read_prefixes`` /
    ``role_write_prefixes``). With subnets (a VPC), the role also gets what SageMaker needs to
    attach jobs and endpoints to them (``vpc_statements``).

    The statements with ``Resource: "*"`` name actions that have no resource-level permissions (AWS
    requires "*" for them): ``ecr:GetAuthorizationToken``, ``cloudwatch:PutMetricData`` (narrowed by
    a namespace condition) and, with ``remote_debug`` only, the ``ssmmessages`` channel actions.
    """
    require_arn(bucket_arn, "s3")
    require_arn(key_arn, "kms")
    if not read_prefixes:
        raise ValueError("at least one readable prefix is needed (models/)")
    repositories = image_repository_arns(
        region=region,
        partition=partition,
        image_registry_account=image_registry_account,
        extra_image_repositories=extra_image_repositories,
        own_repository_arn=own_repository_arn,
    )
    statements = [
        *secret_statements(secret_arns, secret_key_arns),
        *publish_statements(publish_topic_names, region=region, account_id=account_id, partition=partition),
        *bucket_statements(bucket_arn, read_prefixes, write_prefixes),
        *key_statements(key_arn),
        *image_statements(repositories),
        *remote_debug_statements(remote_debug),
    ]
    if subnet_ids:
        statements += vpc_statements(
            region=region,
            account_id=account_id,
            partition=partition,
            subnet_ids=subnet_ids,
            security_group_ids=security_group_ids,
        )
    statements += log_and_metric_statements(region=region, account_id=account_id, partition=partition)
    return {"Version": "2012-10-17", "Statement": statements}


def wildcard_statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Allow statements whose Action and Resource are both ``*`` (what no aiops policy may hold)."""

    def listed(v: Any) -> list[str]:
        return [v] if isinstance(v, str) else list(v or [])

    return [
        s
        for s in document.get("Statement", [])
        if s.get("Effect") == "Allow"
        and any(a in ("*", "*:*") for a in listed(s.get("Action")))
        and "*" in listed(s.get("Resource"))
    ]
