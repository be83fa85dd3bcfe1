"""Endpoint: SageMaker model, endpoint configuration, endpoint with safe deployments, autoscaling,
the alarms that roll a bad deployment back, a CloudWatch dashboard and an idle alarm (SNS)."""

from __future__ import annotations

from dataclasses import dataclass

import json

import pulumi
from pulumi_aws import appautoscaling, cloudwatch, ecr, sagemaker, sns

from aiops.stack import LAYOUT
from aiops.infra.config import EndpointConfig
from aiops.infra.policies import (
    dashboard_body,
    deployment_config,
    idle_alarm_settings,
    scaling_resource_id,
    target_invocations_per_instance,
    target_tracking_configuration,
)


@dataclass(frozen=True)
class EndpointArgs:
    prefix: str
    region: str
    endpoint_name: str
    config: EndpointConfig
    role_arn: pulumi.Input[str]
    key_arn: pulumi.Input[str]
    bucket: pulumi.Input[str]
    image_uri: str | None  # None: the stack's own ECR repository (created here) with config.image.tag
    repository_name: str | None = None
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()


def container_environment(config: EndpointConfig, region: str) -> dict[str, str]:
    """The serving container's environment (sagemaker-pytorch-inference): the handler module inside
    the model's code/ folder, plus the user's additions (which win)."""
    env = {
        "SAGEMAKER_PROGRAM": config.program,
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": region,
    }
    env.update(config.environment)
    return env


class Endpoint(pulumi.ComponentResource):
    model: sagemaker.Model
    endpoint_config: sagemaker.EndpointConfiguration
    endpoint: sagemaker.Endpoint

    def __init__(self, name: str, args: EndpointArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiops:infra:Endpoint", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        variant = cfg.variant_name

        self.repository: ecr.Repository | None = None
        if args.image_uri is None:
            self.repository = ecr.Repository(
                f"{name}-repository",
                name=args.repository_name,
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration={"scan_on_push": True},
                encryption_configurations=[{"encryption_type": "KMS", "kms_key": args.key_arn}],
                opts=child,
            )
            image: pulumi.Input[str] = self.repository.repository_url.apply(lambda u: f"{u}:{cfg.image.tag}")
        else:
            image = args.image_uri

        # Alarms carry fixed names and the endpoint's fixed name, so they exist before the endpoint
        # and the endpoint's rollback configuration can name them (no dependency cycle).
        dims = {"EndpointName": args.endpoint_name, "VariantName": variant}
        self.alarm_5xx = cloudwatch.MetricAlarm(
            f"{name}-5xx-alarm",
            name=f"{args.endpoint_name}-5xx",
            alarm_description="Invocation 5XX errors from the model container",
            namespace="AWS/SageMaker",
            metric_name="Invocation5XXErrors",
            dimensions=dims,
            statistic="Sum",
            period=cfg.alarms.period_seconds,
            evaluation_periods=cfg.alarms.evaluation_periods,
            threshold=cfg.alarms.errors_5xx_threshold,
            comparison_operator="GreaterThanOrEqualToThreshold",
            treat_missing_data="notBreaching",
            opts=child,
        )
        self.alarm_latency = cloudwatch.MetricAlarm(
            f"{name}-latency-alarm",
            name=f"{args.endpoint_name}-model-latency-p99",
            alarm_description=f"ModelLatency p99 above {cfg.alarms.latency_p99_ms} ms",
            namespace="AWS/SageMaker",
            metric_name="ModelLatency",
            dimensions=dims,
            extended_statistic="p99",
            period=cfg.alarms.period_seconds,
            evaluation_periods=cfg.alarms.evaluation_periods,
            threshold=cfg.alarms.latency_p99_ms * 1000.0,  # ModelLatency is in microseconds
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
            opts=child,
        )
        alarms = [self.alarm_5xx, self.alarm_latency]

        # No fixed name: a new model (new artifact, new image) is created before the old one goes.
        self.model = sagemaker.Model(
            f"{name}-model",
            execution_role_arn=args.role_arn,
            primary_container={
                "image": image,
                "model_data_url": cfg.model_data_url,
                "environment": container_environment(cfg, args.region),
            },
            # Opt-in: the container gets no network at all (no pip install of requirements.txt).
            enable_network_isolation=cfg.network_isolation or None,
            vpc_config={"subnets": list(args.subnet_ids), "security_group_ids": list(args.security_group_ids)}
            if args.subnet_ids else None,
            opts=child,
        )

        variant_args: dict = {"variant_name": variant, "model_name": self.model.name}
        if cfg.serverless.enabled:
            variant_args["serverless_config"] = {
                "memory_size_in_mb": cfg.serverless.memory_mb,
                "max_concurrency": cfg.serverless.max_concurrency,
            }
        else:
            variant_args["instance_type"] = cfg.instance_type
            variant_args["initial_instance_count"] = cfg.initial_instance_count
        data_capture = None
        if cfg.data_capture.enabled:
            data_capture = {
                "enable_capture": True,
                "initial_sampling_percentage": cfg.data_capture.sampling_percent,
                "destination_s3_uri": pulumi.Output.from_input(args.bucket).apply(
                    lambda b: LAYOUT.data_capture_uri(b)
                ),
                "kms_key_id": args.key_arn,
                "capture_options": [{"capture_mode": "Input"}, {"capture_mode": "Output"}],
            }
        # Endpoint configurations are immutable: any change replaces this resource. A name_prefix
        # (never a fixed name) lets Pulumi create the new configuration, switch the endpoint to it,
        # and only then delete the old one; a fixed name would collide.
        self.endpoint_config = sagemaker.EndpointConfiguration(
            f"{name}-config",
            name_prefix=f"{args.prefix}-",
            production_variants=[variant_args],
            # Instance types with local NVMe storage encrypt it in hardware and refuse a KmsKeyId
            # (CreateEndpointConfig fails); serverless variants have no ML storage volume.
            kms_key_arn=args.key_arn if cfg.kms_on_volume else None,
            data_capture_config=data_capture,
            opts=child,
        )

        deployment = deployment_config(
            traffic=cfg.deployment.traffic,
            canary_percent=cfg.deployment.canary_percent,
            linear_step_percent=cfg.deployment.linear_step_percent,
            wait_seconds=cfg.deployment.wait_seconds,
            termination_wait_seconds=cfg.deployment.termination_wait_seconds,
            max_execution_timeout_seconds=cfg.deployment.max_execution_timeout_seconds,
            rollback_alarm_names=[],
        )
        if cfg.deployment.auto_rollback:
            deployment["auto_rollback_configuration"] = {"alarms": [{"alarm_name": a.name} for a in alarms]}
        self.endpoint = sagemaker.Endpoint(
            f"{name}-endpoint",
            name=args.endpoint_name,
            endpoint_config_name=self.endpoint_config.name,
            deployment_config=deployment,
            opts=child,
        )

        self.scaling_target: appautoscaling.Target | None = None
        self.scaling_policy: appautoscaling.Policy | None = None
        scaling = cfg.autoscaling
        if scaling.enabled and not cfg.serverless.enabled:
            self.scaling_target = appautoscaling.Target(
                f"{name}-scaling-target",
                service_namespace="sagemaker",
                scalable_dimension="sagemaker:variant:DesiredInstanceCount",
                resource_id=self.endpoint.name.apply(lambda n: scaling_resource_id(n, variant)),
                min_capacity=scaling.min_capacity,
                max_capacity=scaling.max_capacity,
                opts=child,
            )
            target = target_invocations_per_instance(
                explicit=scaling.target_invocations_per_instance,
                max_rps_per_instance=scaling.max_rps_per_instance,
                target_utilization=scaling.target_utilization,
            )
            self.scaling_policy = appautoscaling.Policy(
                f"{name}-scaling-policy",
                policy_type="TargetTrackingScaling",
                service_namespace=self.scaling_target.service_namespace,
                scalable_dimension=self.scaling_target.scalable_dimension,
                resource_id=self.scaling_target.resource_id,
                target_tracking_scaling_policy_configuration=target_tracking_configuration(
                    target_value=target,
                    scale_in_cooldown=scaling.scale_in_cooldown,
                    scale_out_cooldown=scaling.scale_out_cooldown,
                    disable_scale_in=scaling.disable_scale_in,
                ),
                opts=child,
            )

        self._observability(name, args, dims, child)

        self.register_outputs(
            {
                "dashboard_name": self.dashboard.dashboard_name if self.dashboard else None,
                "alerts_topic_arn": self.alerts_topic.arn if self.alerts_topic else None,
                "endpoint_name": self.endpoint.name,
                "endpoint_config_name": self.endpoint_config.name,
                "model_name": self.model.name,
                "repository_url": self.repository.repository_url if self.repository else None,
            }
        )

    def _observability(self, name: str, args: EndpointArgs, dims: dict[str, str], child: pulumi.ResourceOptions) -> None:
        """The dashboard, and the idle alarm with its SNS topic (encrypted with the stack key; the
        key policy lets CloudWatch alarms of the account use it, see ``kms_key_policy``). The idle
        alarm is not a rollback alarm: an idle endpoint would otherwise roll back every deployment."""
        cfg = args.config
        self.dashboard: cloudwatch.Dashboard | None = None
        self.alerts_topic: sns.Topic | None = None
        self.alerts_subscription: sns.TopicSubscription | None = None
        self.alarm_idle: cloudwatch.MetricAlarm | None = None
        if cfg.dashboard.enabled:
            body = dashboard_body(
                endpoint_name=args.endpoint_name,
                variant=cfg.variant_name,
                region=args.region,
                period=cfg.dashboard.period_seconds,
                latency_p99_ms=cfg.alarms.latency_p99_ms,
                min_capacity=cfg.autoscaling.min_capacity if cfg.autoscaling.enabled else cfg.initial_instance_count,
                max_capacity=cfg.autoscaling.max_capacity if cfg.autoscaling.enabled else cfg.initial_instance_count,
                serverless=cfg.serverless.enabled,
            )
            self.dashboard = cloudwatch.Dashboard(
                f"{name}-dashboard",
                dashboard_name=args.endpoint_name,
                dashboard_body=json.dumps(body, sort_keys=True),
                opts=child,
            )
        idle = cfg.idle_alarm
        if idle.enabled:
            self.alerts_topic = sns.Topic(
                f"{name}-alerts",
                name=f"{args.endpoint_name}-alerts",
                kms_master_key_id=args.key_arn,
                opts=child,
            )
            if idle.email:
                # E-mail subscriptions stay "pending confirmation" until the recipient confirms.
                self.alerts_subscription = sns.TopicSubscription(
                    f"{name}-alerts-email",
                    topic=self.alerts_topic.arn,
                    protocol="email",
                    endpoint=idle.email,
                    opts=child,
                )
            self.alarm_idle = cloudwatch.MetricAlarm(
                f"{name}-idle-alarm",
                name=f"{args.endpoint_name}-idle",
                alarm_description=f"No invocations for {idle.hours} h: the endpoint is idle and still billed per instance-hour",
                dimensions=dims,
                alarm_actions=[self.alerts_topic.arn],
                ok_actions=[self.alerts_topic.arn],
                opts=child,
                **idle_alarm_settings(hours=idle.hours),
            )
