"""Endpoint: SageMaker model, endpoint configuration, endpoint with safe deployments, autoscaling,
the alarms that roll a bad deployment back, a CloudWatch dashboard and an idle alarm (SNS).

The model's container (PyTorch, LMI, TGI or custom) and its data (a tarball or an uncompressed
prefix) come from ``infra/llm.py``; the two scale-to-zero modes (inference components,
asynchronous inference) from ``infra/scale_to_zero.py``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
from aiops.infra import llm, scale_to_zero
from aiops.infra.endpoint_config import EndpointConfig
from aiops.infra.observability import dashboard_body, idle_alarm_settings
from aiops.infra.scaling import (
    deployment_config,
    scaling_resource_id,
    target_invocations_per_instance,
    target_tracking_configuration,
)
from pulumi_aws import appautoscaling, cloudwatch, ecr, sagemaker, sns

from aiops.stack import LAYOUT


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
    native_provider: pulumi.ProviderResource | None = None  # aws-native (inference components only)
    # the execution role's policy: it names the image repository and the model data a container starts
    # from, so it is in place before a model is (and so before what starts one: endpoint, component)
    role_policy: pulumi.Resource | None = None


def container_environment(config: EndpointConfig, region: str) -> dict[str, str]:
    """The serving container's environment for ``config.container`` (see ``infra/llm.py``), plus the
    user's additions (which win)."""
    return llm.container_environment(config, region)


def production_variant(cfg: EndpointConfig, startup: dict, model_name: pulumi.Input[str]) -> dict[str, Any]:
    """The endpoint configuration's one production variant: serverless, instances, or instances
    scaled by SageMaker for inference components (whose configuration names no model: the
    component does)."""
    ic = cfg.inference_components
    variant: dict[str, Any] = {"variant_name": cfg.variant_name}
    if not ic.enabled:
        variant["model_name"] = model_name
    if cfg.serverless.enabled:
        variant["serverless_config"] = {
            "memory_size_in_mb": cfg.serverless.memory_mb,
            "max_concurrency": cfg.serverless.max_concurrency,
        }
        return variant
    variant["instance_type"] = cfg.instance_type
    variant["initial_instance_count"] = cfg.initial_instance_count
    if not ic.enabled:
        variant.update(startup)
        return variant
    # the timeouts belong to the component's start-up parameters; the volume stays here
    if "volume_size_in_gb" in startup:
        variant["volume_size_in_gb"] = startup["volume_size_in_gb"]
    variant["managed_instance_scaling"] = {
        "status": "ENABLED",
        "min_instance_count": ic.min_instances,
        "max_instance_count": ic.max_instances,
    }
    variant["routing_configs"] = [{"routing_strategy": "LEAST_OUTSTANDING_REQUESTS"}]
    return variant


def data_capture_config(cfg: EndpointConfig, args: EndpointArgs) -> dict[str, Any] | None:
    """Requests and responses captured under the stack bucket's data-capture prefix (stack key)."""
    if not cfg.data_capture.enabled:
        return None
    return {
        "enable_capture": True,
        "initial_sampling_percentage": cfg.data_capture.sampling_percent,
        "destination_s3_uri": pulumi.Output.from_input(args.bucket).apply(
            lambda b: LAYOUT.data_capture_uri(b)
        ),
        "kms_key_id": args.key_arn,
        "capture_options": [{"capture_mode": "Input"}, {"capture_mode": "Output"}],
    }


class Endpoint(pulumi.ComponentResource):
    model: sagemaker.Model
    endpoint_config: sagemaker.EndpointConfiguration
    endpoint: sagemaker.Endpoint

    def __init__(self, name: str, args: EndpointArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiops:infra:Endpoint", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        image = self._image(name, args, child)
        # Alarms carry fixed names and the endpoint's fixed name, so they exist before the endpoint
        # and the endpoint's rollback configuration can name them (no dependency cycle).
        dims = {"EndpointName": args.endpoint_name, "VariantName": cfg.variant_name}
        alarms = self._rollback_alarms(name, args, dims, child)
        self.model = self._model(name, args, image, child)
        startup = llm.startup_settings(cfg)
        self.endpoint_config = self._endpoint_config(name, args, startup, child)
        self.endpoint = self._endpoint(name, args, alarms, child)

        self.inference_component = None
        self.scaling_alarm: cloudwatch.MetricAlarm | None = None
        self.scale_out_policy: appautoscaling.Policy | None = None
        self.scaling_target: appautoscaling.Target | None = None
        self.scaling_policy: appautoscaling.Policy | None = None
        if cfg.inference_components.enabled:
            self._inference_component(name, args, startup, child)
        elif cfg.async_inference.enabled:
            self._async_scaling(name, args, child)
        elif cfg.autoscaling.enabled and not cfg.serverless.enabled:
            self._instance_scaling(name, args, child)

        self._observability(name, args, dims, child)
        self.register_outputs(self._outputs())

    def _image(self, name: str, args: EndpointArgs, child: pulumi.ResourceOptions) -> pulumi.Input[str]:
        """The container image: the given URI, or the stack's own ECR repository (created here) at
        ``image.tag``."""
        self.repository: ecr.Repository | None = None
        if args.image_uri is not None:
            return args.image_uri
        self.repository = ecr.Repository(
            f"{name}-repository",
            name=args.repository_name,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "KMS", "kms_key": args.key_arn}],
            opts=child,
        )
        tag = args.config.image.tag
        return self.repository.repository_url.apply(lambda u: f"{u}:{tag}")

    def _rollback_alarms(
        self, name: str, args: EndpointArgs, dims: dict[str, str], child: pulumi.ResourceOptions
    ) -> list[cloudwatch.MetricAlarm]:
        """5XX errors and p99 model latency: the alarms a deployment rolls back on."""
        cfg = args.config
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
        return [self.alarm_5xx, self.alarm_latency]

    def _model(
        self, name: str, args: EndpointArgs, image: pulumi.Input[str], child: pulumi.ResourceOptions
    ) -> sagemaker.Model:
        cfg = args.config
        if args.role_policy is not None:
            child = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[args.role_policy]))
        # No fixed name: a new model (new artifact, new image) is created before the old one goes.
        return sagemaker.Model(
            f"{name}-model",
            execution_role_arn=args.role_arn,
            primary_container={
                "image": image,
                **llm.model_data(cfg),
                "environment": container_environment(cfg, args.region),
            },
            # Opt-in: the container gets no network at all (no pip install of requirements.txt).
            enable_network_isolation=cfg.network_isolation or None,
            vpc_config={"subnets": list(args.subnet_ids), "security_group_ids": list(args.security_group_ids)}
            if args.subnet_ids
            else None,
            opts=child,
        )

    def _endpoint_config(
        self, name: str, args: EndpointArgs, startup: dict, child: pulumi.ResourceOptions
    ) -> sagemaker.EndpointConfiguration:
        cfg = args.config
        ic = cfg.inference_components
        # Endpoint configurations are immutable: any change replaces this resource. A name_prefix
        # (never a fixed name) lets Pulumi create the new configuration, switch the endpoint to it,
        # and only then delete the old one; a fixed name would collide.
        return sagemaker.EndpointConfiguration(
            f"{name}-config",
            name_prefix=f"{args.prefix}-",
            production_variants=[production_variant(cfg, startup, self.model.name)],
            # Instance types with local NVMe storage encrypt it in hardware and refuse a KmsKeyId
            # (CreateEndpointConfig fails); serverless variants have no ML storage volume.
            kms_key_arn=args.key_arn if cfg.kms_on_volume else None,
            data_capture_config=data_capture_config(cfg, args),
            async_inference_config=self._async_inference(name, args, child),
            # inference components run as this role (the configuration has no model to take it from)
            execution_role_arn=args.role_arn if ic.enabled else None,
            opts=child,
        )

    def _async_inference(self, name: str, args: EndpointArgs, child: pulumi.ResourceOptions) -> Any:
        """The asynchronous-inference configuration and its success / error topics (None when off)."""
        cfg = args.config
        self.async_success_topic: sns.Topic | None = None
        self.async_error_topic: sns.Topic | None = None
        if not cfg.async_inference.enabled:
            return None
        success_name, error_name = scale_to_zero.async_topic_names(args.endpoint_name)
        self.async_success_topic = sns.Topic(
            f"{name}-async-success",
            name=success_name,
            kms_master_key_id=args.key_arn,
            opts=child,
        )
        self.async_error_topic = sns.Topic(
            f"{name}-async-error",
            name=error_name,
            kms_master_key_id=args.key_arn,
            opts=child,
        )
        return pulumi.Output.all(
            args.bucket, args.key_arn, self.async_success_topic.arn, self.async_error_topic.arn
        ).apply(
            lambda v: scale_to_zero.async_inference_config(
                bucket=v[0],
                key_arn=v[1],
                success_topic=v[2],
                error_topic=v[3],
                max_concurrent=cfg.async_inference.max_concurrent_invocations_per_instance,
            )
        )

    def _endpoint(
        self,
        name: str,
        args: EndpointArgs,
        alarms: list[cloudwatch.MetricAlarm],
        child: pulumi.ResourceOptions,
    ) -> sagemaker.Endpoint:
        cfg = args.config
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
        return sagemaker.Endpoint(
            f"{name}-endpoint",
            name=args.endpoint_name,
            endpoint_config_name=self.endpoint_config.name,
            # an endpoint of inference components updates its components (rolling), not its variants
            deployment_config=None if cfg.inference_components.enabled else deployment,
            opts=child,
        )

    def _instance_scaling(self, name: str, args: EndpointArgs, child: pulumi.ResourceOptions) -> None:
        """Target tracking on invocations per instance, between the autoscaling bounds."""
        scaling = args.config.autoscaling
        variant = args.config.variant_name
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

    def _outputs(self) -> dict:
        return {
            "dashboard_name": self.dashboard.dashboard_name if self.dashboard else None,
            "alerts_topic_arn": self.alerts_topic.arn if self.alerts_topic else None,
            "endpoint_name": self.endpoint.name,
            "endpoint_config_name": self.endpoint_config.name,
            "model_name": self.model.name,
            "repository_url": self.repository.repository_url if self.repository else None,
            "inference_component_name": self.inference_component.inference_component_name
            if self.inference_component is not None
            else None,
        }

    def _inference_component(
        self, name: str, args: EndpointArgs, startup: dict, child: pulumi.ResourceOptions
    ) -> None:
        """The model as an inference component (aws-native), its copy-count scaling from 0, and the
        scale-out-from-zero alarm and step policy (see ``infra/scale_to_zero.py``)."""
        import pulumi_aws_native as aws_native

        cfg = args.config
        ic = cfg.inference_components
        from aiops.gpufit import gpu_count

        accelerators = ic.accelerators_per_copy or gpu_count(cfg.instance_type)
        requirements: dict = {"min_memory_required_in_mb": ic.memory_mb_per_copy}
        if accelerators:
            requirements["number_of_accelerator_devices_required"] = accelerators
        if ic.cpus_per_copy:
            requirements["number_of_cpu_cores_required"] = ic.cpus_per_copy
        spec: dict = {"model_name": self.model.name, "compute_resource_requirements": requirements}
        params = {k: v for k, v in startup.items() if k != "volume_size_in_gb"}
        if params:
            spec["startup_parameters"] = params
        component_name = f"{args.endpoint_name}-model"[:63].rstrip("-")  # SageMaker names: no trailing "-"
        native = (
            pulumi.ResourceOptions(parent=self, provider=args.native_provider)
            if args.native_provider
            else child
        )
        self.inference_component = component = aws_native.sagemaker.InferenceComponent(
            f"{name}-inference-component",
            inference_component_name=component_name,
            endpoint_name=self.endpoint.name,
            variant_name=cfg.variant_name,
            specification=spec,
            # created with one copy (the model is checked at creation), then scaled down to minCopies
            runtime_config={"copy_count": max(1, ic.min_copies)},
            opts=native,
        )
        self._scale_from_zero(
            name,
            ("copies-target", "copies-policy", "no-capacity-alarm"),
            dimension=scale_to_zero.IC_DIMENSION,
            resource_id=component.inference_component_name.apply(scale_to_zero.ic_resource_id),
            capacity=(ic.min_copies, ic.max_copies),
            tracking=scale_to_zero.ic_target_tracking(
                target_value=ic.target_invocations_per_copy,
                scale_in_cooldown=ic.scale_in_cooldown,
                scale_out_cooldown=ic.scale_out_cooldown,
            ),
            scale_out_cooldown=ic.scale_out_cooldown,
            alarm={
                "name": f"{args.endpoint_name}-no-capacity",
                "alarm_description": "Requests found no copy of the model: scale out from zero",
                **scale_to_zero.no_capacity_alarm(component_name),
            },
            child=child,
        )

    def _async_scaling(self, name: str, args: EndpointArgs, child: pulumi.ResourceOptions) -> None:
        aio = args.config.async_inference
        variant = args.config.variant_name
        self._scale_from_zero(
            name,
            ("scaling-target", "backlog-policy", "backlog-alarm"),
            dimension=scale_to_zero.VARIANT_DIMENSION,
            resource_id=self.endpoint.name.apply(lambda n: scaling_resource_id(n, variant)),
            capacity=(aio.min_capacity, aio.max_capacity),
            tracking=scale_to_zero.backlog_target_tracking(
                endpoint_name=args.endpoint_name,
                target_value=aio.target_backlog_per_instance,
                scale_in_cooldown=aio.scale_in_cooldown,
                scale_out_cooldown=aio.scale_out_cooldown,
            ),
            scale_out_cooldown=aio.scale_out_cooldown,
            alarm={
                "name": f"{args.endpoint_name}-backlog-without-capacity",
                "alarm_description": "Requests wait while the endpoint has no instance: scale out from zero",
                **scale_to_zero.backlog_without_capacity_alarm(args.endpoint_name),
            },
            child=child,
        )

    def _scale_from_zero(
        self,
        name: str,
        suffixes: tuple[str, str, str],
        *,
        dimension: str,
        resource_id: pulumi.Input[str],
        capacity: tuple[int, int],
        tracking: Any,
        scale_out_cooldown: int,
        alarm: dict[str, Any],
        child: pulumi.ResourceOptions,
    ) -> None:
        """A scalable target that may reach 0, its target-tracking policy, and the step policy with its
        alarm that brings it back from 0 (target tracking alone cannot: with no capacity there is no
        metric to track). Both scale-to-zero modes use it; their resource names stay their own."""
        target, policy, alarm_suffix = suffixes
        self.scaling_target = appautoscaling.Target(
            f"{name}-{target}",
            service_namespace="sagemaker",
            scalable_dimension=dimension,
            resource_id=resource_id,
            min_capacity=capacity[0],
            max_capacity=capacity[1],
            opts=child,
        )
        self.scaling_policy = appautoscaling.Policy(
            f"{name}-{policy}",
            policy_type="TargetTrackingScaling",
            service_namespace=self.scaling_target.service_namespace,
            scalable_dimension=self.scaling_target.scalable_dimension,
            resource_id=self.scaling_target.resource_id,
            target_tracking_scaling_policy_configuration=tracking,
            opts=child,
        )
        self.scale_out_policy = appautoscaling.Policy(
            f"{name}-scale-out-from-zero",
            policy_type="StepScaling",
            service_namespace=self.scaling_target.service_namespace,
            scalable_dimension=self.scaling_target.scalable_dimension,
            resource_id=self.scaling_target.resource_id,
            step_scaling_policy_configuration=scale_to_zero.scale_out_from_zero(cooldown=scale_out_cooldown),
            opts=child,
        )
        self.scaling_alarm = cloudwatch.MetricAlarm(
            f"{name}-{alarm_suffix}", alarm_actions=[self.scale_out_policy.arn], opts=child, **alarm
        )

    def _observability(
        self, name: str, args: EndpointArgs, dims: dict[str, str], child: pulumi.ResourceOptions
    ) -> None:
        """The dashboard, and the idle alarm with its SNS topic (encrypted with the stack key; the
        key policy lets CloudWatch alarms of the account use it, see ``kms_key_policy``). The idle
        alarm is not a rollback alarm: an idle endpoint would otherwise roll back every deployment."""
        cfg = args.config
        self.dashboard: cloudwatch.Dashboard | None = None
        self.alerts_topic: sns.Topic | None = None
        self.alerts_subscription: sns.TopicSubscription | None = None
        self.alarm_idle: cloudwatch.MetricAlarm | None = None
        if cfg.inference_components.enabled:
            instances = (cfg.inference_components.min_instances, cfg.inference_components.max_instances)
        elif cfg.async_inference.enabled:
            instances = (cfg.async_inference.min_capacity, cfg.async_inference.max_capacity)
        elif cfg.autoscaling.enabled:
            instances = (cfg.autoscaling.min_capacity, cfg.autoscaling.max_capacity)
        else:
            instances = (cfg.initial_instance_count, cfg.initial_instance_count)
        if cfg.dashboard.enabled:
            body = dashboard_body(
                endpoint_name=args.endpoint_name,
                variant=cfg.variant_name,
                region=args.region,
                period=cfg.dashboard.period_seconds,
                latency_p99_ms=cfg.alarms.latency_p99_ms,
                min_capacity=instances[0],
                max_capacity=instances[1],
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
                alarm_description=f"No invocations for {idle.hours} h: "
                "the endpoint is idle and still billed per instance-hour",
                dimensions=dims,
                alarm_actions=[self.alerts_topic.arn],
                ok_actions=[self.alerts_topic.arn],
                opts=child,
                **idle_alarm_settings(hours=idle.hours),
            )
