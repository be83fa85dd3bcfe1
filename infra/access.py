"""Access: the SageMaker execution role, least privilege."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
from aiops.infra.policies import assume_role_policy, execution_role_policy
from pulumi_aws import iam


@dataclass(frozen=True)
class AccessArgs:
    prefix: str
    region: str
    account_id: pulumi.Input[str]
    partition: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    key_arn: pulumi.Input[str]
    read_prefixes: tuple[str, ...]
    write_prefixes: tuple[str, ...]
    image_registry_account: str | None
    own_repository_arn: pulumi.Input[str] | None = None
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    extra_image_repositories: tuple[tuple[str, str], ...] = ()  # (account, repository): LLM containers
    publish_topic_names: tuple[str, ...] = ()  # async-inference notification topics
    secret_arns: tuple[str, ...] = ()  # Secrets Manager secrets training jobs read (--secret)
    secret_key_arns: tuple[str, ...] = ()  # their customer-managed KMS keys
    remote_debug: bool = False  # the SSM agent of --remote-debug jobs may open sessions


class Access(pulumi.ComponentResource):
    """The role SageMaker training jobs and endpoints run as: its bucket prefixes, the stack's key,
    pulling the framework (or the stack's own) images, writing its own logs and metrics."""

    role: iam.Role

    def __init__(self, name: str, args: AccessArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiops:infra:Access", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.role = iam.Role(
            f"{name}-sagemaker-role",
            description=f"{args.prefix}: SageMaker execution role (aiops)",
            assume_role_policy=pulumi.Output.from_input(args.account_id).apply(
                lambda acct: json.dumps(assume_role_policy("sagemaker.amazonaws.com", account_id=acct))
            ),
            max_session_duration=12 * 3600,
            opts=child,
        )
        document = pulumi.Output.all(
            args.bucket_arn, args.key_arn, args.account_id, args.partition, args.own_repository_arn
        ).apply(
            lambda v: json.dumps(
                execution_role_policy(
                    bucket_arn=v[0],
                    key_arn=v[1],
                    region=args.region,
                    account_id=v[2],
                    partition=v[3],
                    read_prefixes=args.read_prefixes,
                    write_prefixes=args.write_prefixes,
                    image_registry_account=args.image_registry_account,
                    own_repository_arn=v[4],
                    subnet_ids=args.subnet_ids,
                    security_group_ids=args.security_group_ids,
                    extra_image_repositories=args.extra_image_repositories,
                    publish_topic_names=args.publish_topic_names,
                    secret_arns=args.secret_arns,
                    secret_key_arns=args.secret_key_arns,
                    remote_debug=args.remote_debug,
                )
            )
        )
        self.policy = iam.RolePolicy(
            f"{name}-sagemaker-policy", role=self.role.id, policy=document, opts=child
        )
        self.register_outputs({"role_arn": self.role.arn})
