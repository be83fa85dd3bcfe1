"""Pure functions that compute policies: IAM documents, scaling and deployment settings.

Kept apart from the components that declare resources (no pulumi import here), so each rule is
unit-tested directly and the components stay thin.
"""

from __future__ import annotations

import math
from typing import Any

from aiops.errors import ConfigError

DLC_REPOSITORIES = ("pytorch-inference", "pytorch-training")
ASG_SERVICE_ROLE = "aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"


def _arn_ok(arn: str, service: str) -> None:
    if not isinstance(arn, str) or not arn.startswith("arn:") or arn.split(":")[2:3] != [service]:
        raise ValueError(f"expected an {service} ARN, got {arn!r}")


# ----------------------------------------------------------------------------------- storage


def tls_only_bucket_policy(bucket_arn: str) -> dict[str, Any]:
    """Deny every request to the bucket that does not use TLS (aws:SecureTransport false)."""
    _arn_ok(bucket_arn, "s3")
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
    _arn_ok(bucket_arn, "s3")
    _arn_ok(key_arn, "kms")
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


# The execution role's statements, one idea a function (each pure; an empty list when it does not apply)


def image_repository_arns(
    *,
    region: str,
    partition: str,
    image_registry_account: str | None,
    extra_image_repositories: tuple[tuple[str, str], ...],
    own_repository_arn: str | None,
) -> list[str]:
    """The ECR repositories the role pulls from: the PyTorch DLCs, the LLM containers', the stack's."""
    repos = []
    if image_registry_account:
        repos += [
            f"arn:{partition}:ecr:{region}:{image_registry_account}:repository/{r}" for r in DLC_REPOSITORIES
        ]
    repos += [f"arn:{partition}:ecr:{region}:{acct}:repository/{r}" for acct, r in extra_image_repositories]
    if own_repository_arn:
        _arn_ok(own_repository_arn, "ecr")
        repos.append(own_repository_arn)
    return repos


def secret_statements(secret_arns: tuple[str, ...], secret_key_arns: tuple[str, ...]) -> list[dict[str, Any]]:
    """GetSecretValue on exactly the training secrets; their keys' Decrypt only through Secrets Manager."""
    statements: list[dict[str, Any]] = []
    if secret_arns:
        statements.append(
            {
                "Sid": "ReadTrainingSecrets",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": list(secret_arns),
            }
        )
    if secret_key_arns:
        statements.append(
            {
                "Sid": "DecryptTrainingSecrets",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": list(secret_key_arns),
                "Condition": {
                    "StringEquals": {
                        "kms:ViaService": [
                            f"secretsmanager.{region}.amazonaws.com"
                            for region in sorted({arn.split(":")[3] for arn in secret_arns})
                        ]
                    }
                },
            }
        )
    return statements


def publish_statements(
    topic_names: tuple[str, ...], *, region: str, account_id: str, partition: str
) -> list[dict[str, Any]]:
    """sns:Publish on the async-inference notification topics."""
    if not topic_names:
        return []
    return [
        {
            "Sid": "PublishAsyncNotifications",
            "Effect": "Allow",
            "Action": "sns:Publish",
            "Resource": [f"arn:{partition}:sns:{region}:{account_id}:{t}" for t in topic_names],
        }
    ]


def bucket_statements(
    bucket_arn: str, read_prefixes: tuple[str, ...], write_prefixes: tuple[str, ...]
) -> list[dict[str, Any]]:
    """List and read the stack contract's readable prefixes; write only the writable ones."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListOwnPrefixes",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {
                "StringLike": {
                    "s3:prefix": [f"{p}*" for p in sorted(set(read_prefixes) | set(write_prefixes))]
                }
            },
        },
        {
            "Sid": "ReadOwnPrefixes",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": [f"{bucket_arn}/{p}*" for p in read_prefixes],
        },
    ]
    if write_prefixes:
        statements.append(
            {
                "Sid": "WriteOwnPrefixes",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": [f"{bucket_arn}/{p}*" for p in write_prefixes],
            }
        )
    return statements


def key_statements(key_arn: str) -> list[dict[str, Any]]:
    """The stack key: use it, and grant it to the AWS resources SageMaker creates (volumes)."""
    return [
        {
            "Sid": "UseStackKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
            "Resource": key_arn,
        },
        {
            "Sid": "GrantStackKeyToAwsResources",
            "Effect": "Allow",
            "Action": "kms:CreateGrant",
            "Resource": key_arn,
            "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
        },
    ]


def image_statements(repositories: list[str]) -> list[dict[str, Any]]:
    """ECR login (no resource-level permissions: "*") and pulls from exactly ``repositories``."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "EcrLogin",
            "Effect": "Allow",
            "Action": "ecr:GetAuthorizationToken",
            "Resource": "*",
        }
    ]
    if repositories:
        statements.append(
            {
                "Sid": "PullImages",
                "Effect": "Allow",
                "Action": [
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                ],
                "Resource": repositories,
            }
        )
    return statements


def log_and_metric_statements(*, region: str, account_id: str, partition: str) -> list[dict[str, Any]]:
    """SageMaker's own log groups; metrics only in SageMaker's and aiops's namespaces."""
    return [
        {
            "Sid": "OwnLogs",
            "Effect": "Allow",
            "Action": [
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "logs:DescribeLogStreams",
            ],
            "Resource": [
                f"arn:{partition}:logs:{region}:{account_id}:log-group:/aws/sagemaker/*",
                f"arn:{partition}:logs:{region}:{account_id}:log-group:/aws/sagemaker/*:log-stream:*",
            ],
        },
        {
            "Sid": "OwnMetrics",
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "aiops/*"]}},
        },
    ]


def remote_debug_statements(remote_debug: bool) -> list[dict[str, Any]]:
    """The SSM agent's channels for --remote-debug jobs (no resource-level permissions: "*")."""
    if not remote_debug:
        return []
    return [
        {
            "Sid": "RemoteDebugSessions",
            "Effect": "Allow",
            "Action": list(REMOTE_DEBUG_ACTIONS),
            "Resource": "*",
        }
    ]


# "Access a training container through AWS Systems Manager for remote debugging": the IAM role
REMOTE_DEBUG_ACTIONS = (
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
)

VPC_DESCRIBE_ACTIONS = (
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeVpcs",
    "ec2:DescribeDhcpOptions",
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
)
VPC_INTERFACE_ACTIONS = (
    "ec2:CreateNetworkInterfacePermission",
    "ec2:DeleteNetworkInterface",
    "ec2:DeleteNetworkInterfacePermission",
)


def vpc_statements(
    *,
    region: str,
    account_id: str,
    partition: str,
    subnet_ids: tuple[str, ...],
    security_group_ids: tuple[str, ...],
) -> list[dict[str, Any]]:
    """The ec2 permissions SageMaker documents for jobs and endpoints with a VpcConfig ("Give
    SageMaker access to resources in your Amazon VPC"), scoped where EC2 has resource-level
    permissions: CreateNetworkInterface to this account's interfaces in the region and the
    configured subnets and security groups; the interface actions to this account's interfaces.
    The Describe* actions support no resource-level permissions, so AWS requires "*" for them."""
    if not subnet_ids or not security_group_ids:
        raise ValueError("a VPC needs both subnet_ids and security_group_ids")
    ec2 = f"arn:{partition}:ec2:{region}:{account_id}"
    return [
        {
            "Sid": "VpcDescribe",
            "Effect": "Allow",
            "Action": list(VPC_DESCRIBE_ACTIONS),
            "Resource": "*",
        },
        {
            "Sid": "VpcCreateNetworkInterfaces",
            "Effect": "Allow",
            "Action": "ec2:CreateNetworkInterface",
            "Resource": [f"{ec2}:network-interface/*"]
            + [f"{ec2}:subnet/{s}" for s in subnet_ids]
            + [f"{ec2}:security-group/{g}" for g in security_group_ids],
        },
        {
            "Sid": "VpcManageNetworkInterfaces",
            "Effect": "Allow",
            "Action": list(VPC_INTERFACE_ACTIONS),
            "Resource": f"{ec2}:network-interface/*",
        },
    ]


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


# --------------------------------------------------------------------------- scaling, deployment


def scaling_resource_id(endpoint_name: str, variant_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant_name}"


def target_invocations_per_instance(
    *, explicit: float | None, max_rps_per_instance: float, target_utilization: float
) -> float:
    """Target for SageMakerVariantInvocationsPerInstance (invocations per instance per MINUTE).

    Either the configured value, or the measured sustainable requests/s of one instance times 60,
    times the utilisation to aim at (headroom for the time a scale-out takes).
    """
    if explicit is not None:
        if explicit <= 0:
            raise ConfigError(
                f"aiops:endpoint.autoscaling.targetInvocationsPerInstance={explicit!r}: must be > 0"
            )
        return float(explicit)
    if max_rps_per_instance <= 0 or not 0 < target_utilization <= 1:
        raise ConfigError(
            "aiops:endpoint.autoscaling: maxRpsPerInstance must be > 0 and targetUtilization in (0, 1]"
        )
    return float(math.floor(max_rps_per_instance * 60 * target_utilization))


def target_tracking_configuration(
    *, target_value: float, scale_in_cooldown: int, scale_out_cooldown: int, disable_scale_in: bool
) -> dict[str, Any]:
    return {
        "target_value": target_value,
        "scale_in_cooldown": scale_in_cooldown,
        "scale_out_cooldown": scale_out_cooldown,
        "disable_scale_in": disable_scale_in,
        "predefined_metric_specification": {
            "predefined_metric_type": "SageMakerVariantInvocationsPerInstance",
        },
    }


def deployment_config(
    *,
    traffic: str,
    canary_percent: int,
    linear_step_percent: int,
    wait_seconds: int,
    termination_wait_seconds: int,
    max_execution_timeout_seconds: int,
    rollback_alarm_names: list[str],
) -> dict[str, Any]:
    """The endpoint's DeploymentConfig: blue/green with the chosen traffic shifting, rolled back
    automatically when any of the alarms fires during the deployment."""
    routing: dict[str, Any] = {"wait_interval_in_seconds": wait_seconds}
    if traffic == "all-at-once":
        routing["type"] = "ALL_AT_ONCE"
    elif traffic == "canary":
        routing["type"] = "CANARY"
        routing["canary_size"] = {"type": "CAPACITY_PERCENT", "value": canary_percent}
    elif traffic == "linear":
        routing["type"] = "LINEAR"
        routing["linear_step_size"] = {"type": "CAPACITY_PERCENT", "value": linear_step_percent}
    else:
        raise ConfigError(
            f"aiops:endpoint.deployment.traffic={traffic!r}: allowed: all-at-once, canary, linear"
        )
    config: dict[str, Any] = {
        "blue_green_update_policy": {
            "traffic_routing_configuration": routing,
            "termination_wait_in_seconds": termination_wait_seconds,
            "maximum_execution_timeout_in_seconds": max_execution_timeout_seconds,
        }
    }
    if rollback_alarm_names:
        config["auto_rollback_configuration"] = {"alarms": [{"alarm_name": n} for n in rollback_alarm_names]}
    return config


# ------------------------------------------------------------------------------ observability

SAGEMAKER_NAMESPACE = "AWS/SageMaker"


def _metric(name: str, endpoint_name: str, variant: str, **props: Any) -> list[Any]:
    return [SAGEMAKER_NAMESPACE, name, "EndpointName", endpoint_name, "VariantName", variant, props]


def dashboard_body(
    *,
    endpoint_name: str,
    variant: str,
    region: str,
    period: int = 60,
    latency_p99_ms: float | None = None,
    min_capacity: int | None = None,
    max_capacity: int | None = None,
    serverless: bool = False,
) -> dict[str, Any]:
    """The endpoint's CloudWatch dashboard (the ``DashboardBody`` document, as a dict).

    Invocations; ModelLatency p50/p90/p99 (microseconds, as SageMaker publishes it);
    Invocation4XXErrors and Invocation5XXErrors; and the instance count. SageMaker publishes no
    instance-count metric for an endpoint variant, so the count is derived with metric math:
    ``Invocations / InvocationsPerInstance`` (InvocationsPerInstance is Invocations divided by the
    variant's instance count). It has datapoints only while there is traffic; the autoscaling bounds
    are drawn as horizontal lines. A serverless variant has no instances: that widget is left out.
    """

    def widget(x: int, y: int, title: str, metrics: list[Any], **props: Any) -> dict[str, Any]:
        return {
            "type": "metric",
            "x": x,
            "y": y,
            "width": 12,
            "height": 6,
            "properties": {
                "title": title,
                "region": region,
                "view": "timeSeries",
                "stacked": False,
                "period": period,
                "metrics": metrics,
                **props,
            },
        }

    m = lambda name, **p: _metric(name, endpoint_name, variant, **p)  # noqa: E731
    latency_props: dict[str, Any] = {"yAxis": {"left": {"label": "microseconds", "showUnits": False}}}
    if latency_p99_ms is not None:
        latency_props["annotations"] = {
            "horizontal": [{"label": "p99 alarm (rollback)", "value": latency_p99_ms * 1000.0}]
        }
    widgets = [
        widget(0, 0, "Invocations", [m("Invocations", stat="Sum", label="Invocations")], stat="Sum"),
        widget(
            12,
            0,
            "ModelLatency p50 / p90 / p99 (microseconds)",
            [
                m("ModelLatency", stat="p50", label="p50"),
                m("ModelLatency", stat="p90", label="p90"),
                m("ModelLatency", stat="p99", label="p99"),
            ],
            **latency_props,
        ),
        widget(
            0,
            6,
            "Errors",
            [
                m("Invocation4XXErrors", stat="Sum", label="4XX errors"),
                m("Invocation5XXErrors", stat="Sum", label="5XX errors"),
            ],
            stat="Sum",
        ),
    ]
    if not serverless:
        instance_props: dict[str, Any] = {
            "yAxis": {"left": {"min": 0, "label": "instances", "showUnits": False}}
        }
        bounds = [
            {"label": f"{k} capacity", "value": v}
            for k, v in (("min", min_capacity), ("max", max_capacity))
            if v is not None
        ]
        if bounds:
            instance_props["annotations"] = {"horizontal": bounds}
        widgets.append(
            widget(
                12,
                6,
                "Instances (derived: Invocations / InvocationsPerInstance; no data while idle)",
                [
                    [{"expression": "m1 / m2", "id": "e1", "label": "instances (derived)"}],
                    m("Invocations", stat="Sum", id="m1", visible=False),
                    m("InvocationsPerInstance", stat="Sum", id="m2", visible=False),
                ],
                **instance_props,
            )
        )
    return {"widgets": widgets}


def idle_alarm_settings(*, hours: int) -> dict[str, Any]:
    """No invocations for ``hours``: hourly Sum of Invocations <= 0 in every one of the last
    ``hours`` periods. An idle endpoint emits no Invocations datapoints at all, so missing data
    counts as breaching (otherwise the alarm would sit in INSUFFICIENT_DATA exactly when idle)."""
    if not 1 <= hours <= 168:
        raise ConfigError(f"aiops:endpoint.idleAlarm.hours={hours!r}: allowed: 1 to 168")
    return {
        "namespace": SAGEMAKER_NAMESPACE,
        "metric_name": "Invocations",
        "statistic": "Sum",
        "period": 3600,
        "evaluation_periods": hours,
        "datapoints_to_alarm": hours,
        "threshold": 0.0,
        "comparison_operator": "LessThanOrEqualToThreshold",
        "treat_missing_data": "breaching",
    }
