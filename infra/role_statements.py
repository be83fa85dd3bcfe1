"""The SageMaker execution role's statements, one group a function, each pure (an empty list when
it does not apply): secrets, notifications, bucket prefixes, the stack key, images, remote
debugging, the VPC, logs and metrics. `infra/policies.py` assembles them into the role's policy.
"""

from __future__ import annotations

from typing import Any

DLC_REPOSITORIES = ("pytorch-inference", "pytorch-training")


def require_arn(arn: str, service: str) -> None:
    """ValueError unless ``arn`` is an ARN of ``service`` (a document names only the ARNs it is given)."""
    if not isinstance(arn, str) or not arn.startswith("arn:") or arn.split(":")[2:3] != [service]:
        raise ValueError(f"expected an {service} ARN, got {arn!r}")


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
        require_arn(own_repository_arn, "ecr")
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
