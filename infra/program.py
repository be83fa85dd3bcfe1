"""The stack program: one validated StackConfig in, components declared, typed outputs returned.

Used by ``infra/__main__.py`` (the real engine: ``pulumi up``, the Automation API) and by the
offline preview and the tests (Pulumi mocks): one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import pulumi
import pulumi_aws as aws
from aiops.infra.config import StackConfig
from aiops.infra.images import endpoint_image_repositories, endpoint_image_uri, registry_account
from aiops.infra.scale_to_zero import async_topic_names
from pydantic.alias_generators import to_camel

from aiops.stack import LAYOUT, TRAINING_LOG_GROUP


@dataclass
class ProgramOutputs:
    """What the stack exports: ``aiops.stack.StackOutputs`` field by field (the same names, camelCase
    once exported), each a Pulumi value until the engine resolves it; commands read them back as
    StackOutputs (tests/infra/test_stack_contract.py keeps the two field lists equal)."""

    stack: str
    region: str
    bucket: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    kms_key_arn: pulumi.Output[str]
    role_arn: pulumi.Output[str] | None = None
    log_group: str = TRAINING_LOG_GROUP
    subnet_ids: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)
    endpoint_name: pulumi.Output[str] | None = None
    endpoint_config_name: pulumi.Output[str] | None = None
    inference_component_name: pulumi.Output[str] | None = None
    model_data_url: str | None = None
    repository_url: pulumi.Output[str] | None = None
    dashboard_name: pulumi.Output[str] | None = None
    alerts_topic_arn: pulumi.Output[str] | None = None
    launch_template_id: pulumi.Output[str] | None = None
    gpu_group_name: pulumi.Output[str] | None = None
    training_secret_arns: list[str] = field(default_factory=list)
    remote_debug: bool | None = None  # exported only when the stack allows it

    def exported(self) -> dict[str, Any]:
        """camelCase name -> value, the unset ones (None, an empty list) left out."""
        values = {to_camel(f.name): getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if v is not None and not (isinstance(v, list) and not v)}


def build(cfg: StackConfig) -> ProgramOutputs:
    """Declare every resource of the stack; return its outputs (exported by ``export``)."""
    tags = {"aiops:project": cfg.project, "aiops:stack": cfg.stack, **cfg.tags}
    provider = aws.Provider("aws", region=cfg.region, default_tags={"tags": tags})
    opts = pulumi.ResourceOptions(provider=provider)
    invoke = pulumi.InvokeOutputOptions(provider=provider)
    identity = aws.get_caller_identity_output(opts=invoke)
    partition = aws.get_partition_output(opts=invoke).partition

    from aiops.infra.storage import Storage, StorageArgs

    storage = Storage(
        "storage",
        StorageArgs(
            prefix=cfg.prefix,
            account_id=identity.account_id,
            partition=partition,
            noncurrent_version_days=cfg.storage.noncurrent_version_days,
            abort_multipart_days=cfg.storage.abort_multipart_days,
            force_destroy=cfg.storage.force_destroy,
            key_deletion_window_days=cfg.storage.key_deletion_window_days,
            allow_autoscaling_key_use=cfg.compute.enabled,
            allow_cloudwatch_alarms_key_use=cfg.endpoint.enabled and cfg.endpoint.idle_alarm.enabled,
        ),
        opts=opts,
    )
    outputs = ProgramOutputs(
        region=cfg.region,
        stack=cfg.stack,
        bucket=storage.bucket.bucket,
        bucket_arn=storage.bucket.arn,
        kms_key_arn=storage.key.arn,
    )
    net = cfg.network
    if net.enabled:
        outputs.subnet_ids = list(net.subnet_ids)
        outputs.security_group_ids = list(net.security_group_ids)

    ep = cfg.endpoint
    image_uri: str | None = None
    repository_name: str | None = None
    if ep.enabled:
        if ep.image.uri:
            image_uri = ep.image.uri
        elif ep.image.own_repository:
            repository_name = f"{cfg.prefix}-server"
        else:
            image_uri = endpoint_image_uri(ep, cfg.region)

    role_arn: pulumi.Output[str] | None = None
    role_policy: pulumi.Resource | None = None
    if cfg.access.enabled:
        from aiops.infra.access import Access, AccessArgs

        own_repo_arn = None
        if repository_name:
            own_repo_arn = pulumi.Output.all(partition, identity.account_id).apply(
                lambda v: f"arn:{v[0]}:ecr:{cfg.region}:{v[1]}:repository/{repository_name}"
            )
        role_prefixes = LAYOUT.role_prefixes(async_inference=ep.enabled and ep.async_inference.enabled)
        access = Access(
            "access",
            AccessArgs(
                prefix=cfg.prefix,
                region=cfg.region,
                account_id=identity.account_id,
                partition=partition,
                bucket_arn=storage.bucket.arn,
                key_arn=storage.key.arn,
                read_prefixes=role_prefixes[0],
                write_prefixes=role_prefixes[1],
                image_registry_account=registry_account(cfg.region, ep.image.framework_version)
                if not (ep.enabled and (ep.image.uri or ep.image.own_repository))
                else None,
                own_repository_arn=own_repo_arn,
                subnet_ids=net.subnet_ids,
                security_group_ids=net.security_group_ids,
                extra_image_repositories=endpoint_image_repositories(ep, cfg.region)
                if ep.enabled and not (ep.image.uri or ep.image.own_repository)
                else (),
                publish_topic_names=async_topic_names(cfg.endpoint_name)
                if ep.enabled and ep.async_inference.enabled
                else (),
                secret_arns=cfg.access.training_secrets,
                secret_key_arns=cfg.access.training_secret_keys,
                remote_debug=cfg.access.remote_debug,
            ),
            opts=opts,
        )
        role_arn = outputs.role_arn = access.role.arn
        role_policy = access.policy
        outputs.training_secret_arns = list(cfg.access.training_secrets)
        outputs.remote_debug = True if cfg.access.remote_debug else None

    if ep.enabled:
        from aiops.infra.endpoint import Endpoint, EndpointArgs

        assert role_arn is not None  # StackConfig: an endpoint needs access.enabled (its execution role)

        endpoint = Endpoint(
            "endpoint",
            EndpointArgs(
                prefix=cfg.prefix,
                region=cfg.region,
                endpoint_name=cfg.endpoint_name,
                config=ep,
                role_arn=role_arn,
                key_arn=storage.key.arn,
                bucket=storage.bucket.bucket,
                image_uri=image_uri,
                repository_name=repository_name,
                subnet_ids=net.subnet_ids,
                security_group_ids=net.security_group_ids,
                native_provider=_native_provider(cfg) if ep.inference_components.enabled else None,
                role_policy=role_policy,
            ),
            opts=opts,
        )
        outputs.endpoint_name = endpoint.endpoint.name
        outputs.endpoint_config_name = endpoint.endpoint_config.name
        outputs.model_data_url = ep.model_data_url
        if endpoint.inference_component is not None:  # `aiops invoke` names it (InferenceComponentName)
            outputs.inference_component_name = endpoint.inference_component.inference_component_name
        if endpoint.repository is not None:
            outputs.repository_url = endpoint.repository.repository_url
        if endpoint.dashboard is not None:
            outputs.dashboard_name = endpoint.dashboard.dashboard_name
        if endpoint.alerts_topic is not None:
            outputs.alerts_topic_arn = endpoint.alerts_topic.arn

    if cfg.compute.enabled:
        from aiops.infra.compute import GpuCompute, GpuComputeArgs

        compute = GpuCompute(
            "gpu",
            GpuComputeArgs(
                prefix=cfg.prefix, config=cfg.compute, key_arn=storage.key.arn, partition=partition
            ),
            opts=opts,
        )
        outputs.launch_template_id = compute.launch_template.id
        outputs.gpu_group_name = compute.group.name
    return outputs


def _native_provider(cfg: StackConfig):
    """pulumi-aws-native, for the one resource pulumi-aws lacks (sagemaker InferenceComponent)."""
    import pulumi_aws_native as aws_native

    return aws_native.Provider("aws-native", region=cfg.region)


def export(outputs: ProgramOutputs) -> None:
    for key, value in outputs.exported().items():
        pulumi.export(key, value)
