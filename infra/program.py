"""The stack program: one validated StackConfig in, components declared, outputs returned.

Used by ``infra/__main__.py`` (the real engine: ``pulumi up``, the Automation API) and by the
offline preview and the tests (Pulumi mocks): one code path.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws
from aiops.infra.config import StackConfig
from aiops.infra.images import endpoint_image_repositories, endpoint_image_uri, registry_account
from aiops.infra.scale_to_zero import async_topic_names

from aiops.stack import LAYOUT, TRAINING_LOG_GROUP


def build(cfg: StackConfig) -> dict[str, Any]:
    """Declare every resource of the stack; return the outputs (also exported by ``export``)."""
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
    outputs: dict[str, Any] = {
        "region": cfg.region,
        "stack": cfg.stack,
        "bucket": storage.bucket.bucket,
        "bucketArn": storage.bucket.arn,
        "kmsKeyArn": storage.key.arn,
        "logGroup": TRAINING_LOG_GROUP,
    }
    net = cfg.network
    if net.enabled:
        outputs["subnetIds"] = list(net.subnet_ids)
        outputs["securityGroupIds"] = list(net.security_group_ids)

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

    role_arn = None
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
        role_arn = access.role.arn
        outputs["roleArn"] = role_arn
        if cfg.access.training_secrets:
            outputs["trainingSecretArns"] = list(cfg.access.training_secrets)
        if cfg.access.remote_debug:
            outputs["remoteDebug"] = True

    if ep.enabled:
        from aiops.infra.endpoint import Endpoint, EndpointArgs

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
            ),
            opts=opts,
        )
        outputs["endpointName"] = endpoint.endpoint.name
        outputs["endpointConfigName"] = endpoint.endpoint_config.name
        outputs["modelDataUrl"] = ep.model_data_url
        if endpoint.inference_component is not None:  # `aiops invoke` names it (InferenceComponentName)
            outputs["inferenceComponentName"] = endpoint.inference_component.inference_component_name
        if endpoint.repository is not None:
            outputs["repositoryUrl"] = endpoint.repository.repository_url
        if endpoint.dashboard is not None:
            outputs["dashboardName"] = endpoint.dashboard.dashboard_name
        if endpoint.alerts_topic is not None:
            outputs["alertsTopicArn"] = endpoint.alerts_topic.arn

    if cfg.compute.enabled:
        from aiops.infra.compute import GpuCompute, GpuComputeArgs

        compute = GpuCompute(
            "gpu",
            GpuComputeArgs(
                prefix=cfg.prefix, config=cfg.compute, key_arn=storage.key.arn, partition=partition
            ),
            opts=opts,
        )
        outputs["launchTemplateId"] = compute.launch_template.id
        outputs["gpuGroupName"] = compute.group.name
    return outputs


def _native_provider(cfg: StackConfig):
    """pulumi-aws-native, for the one resource pulumi-aws lacks (sagemaker InferenceComponent)."""
    import pulumi_aws_native as aws_native

    return aws_native.Provider("aws-native", region=cfg.region)


def export(outputs: dict[str, Any]) -> None:
    for key, value in outputs.items():
        pulumi.export(key, value)
