"""Endpoints that cost $0/h when idle: two opt-in modes of the ``Endpoint`` component.

**Inference components** (``endpoint.inferenceComponents.enabled``): the endpoint configuration
has no model, only instances with *managed instance scaling* (minimum 0) and an execution role;
the model runs as an ``InferenceComponent`` (pulumi-aws-native: pulumi-aws 7.x has no such
resource) whose copy count scales between ``minCopies`` (0) and ``maxCopies``: target tracking on
``SageMakerInferenceComponentInvocationsPerCopy``, and the step-scaling policy AWS documents to
scale *out from zero*: a CloudWatch alarm on ``NoCapacityInvocationFailures`` (requests that found
no copy) adds one copy. With no copies left, managed instance scaling releases the instances.
Cold start: the first request fails (no capacity) and triggers the alarm; a copy needs a new
instance, the model download and the container start: minutes (AWS quotes several minutes; the
download and start-up timeouts bound it).

**Asynchronous inference** (``endpoint.asyncInference.enabled``): requests are queued with their
input in S3; the variant's instance count scales between ``minCapacity`` (0) and ``maxCapacity``
by target tracking on ``ApproximateBacklogSizePerInstance``, plus the documented step-scaling
policy on ``HasBacklogWithoutCapacity`` that starts the first instance when requests wait at 0.
Results go to ``s3://<stack bucket>/async-inference/output/``, failures to ``.../failures/``
(``aiops.stack.S3Layout``; encrypted with the stack key), and SNS success / error topics (the stack key)
are notified. Cold start: instance launch, model download and container start (minutes) for the first
request after idle; later requests queue meanwhile instead of failing.

The pure parts (policy documents, alarm settings, resource ids) are functions tested directly;
``InferenceComponents`` / ``AsyncInference`` declare the resources.
"""

from __future__ import annotations

from typing import Any

from aiops.stack import LAYOUT

IC_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
VARIANT_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


def ic_resource_id(inference_component_name: str) -> str:
    return f"inference-component/{inference_component_name}"


def ic_target_tracking(
    *, target_value: float, scale_in_cooldown: int, scale_out_cooldown: int
) -> dict[str, Any]:
    return {
        "target_value": target_value,
        "scale_in_cooldown": scale_in_cooldown,
        "scale_out_cooldown": scale_out_cooldown,
        "predefined_metric_specification": {
            "predefined_metric_type": "SageMakerInferenceComponentInvocationsPerCopy"
        },
    }


def scale_out_from_zero(*, cooldown: int) -> dict[str, Any]:
    """Step scaling: +1 (copy or instance) whenever its alarm is in ALARM."""
    return {
        "adjustment_type": "ChangeInCapacity",
        "metric_aggregation_type": "Maximum",
        "cooldown": cooldown,
        "step_adjustments": [{"metric_interval_lower_bound": "0", "scaling_adjustment": 1}],
    }


def _alarm_at_one(
    metric_name: str, dimensions: dict[str, str], *, statistic: str, period: int, evaluation_periods: int
) -> dict[str, Any]:
    """An AWS/SageMaker alarm in ALARM once the metric reaches 1 (no data: keep the state)."""
    return {
        "namespace": "AWS/SageMaker",
        "metric_name": metric_name,
        "dimensions": dimensions,
        "statistic": statistic,
        "period": period,
        "evaluation_periods": evaluation_periods,
        "threshold": 1,
        "comparison_operator": "GreaterThanOrEqualToThreshold",
        "treat_missing_data": "missing",
    }


def no_capacity_alarm(inference_component_name: str) -> dict[str, Any]:
    """Requests that found no copy of the model: the signal to scale out from zero."""
    return _alarm_at_one(
        "NoCapacityInvocationFailures",
        {"InferenceComponentName": inference_component_name},
        statistic="Maximum",
        period=30,
        evaluation_periods=1,
    )


def backlog_target_tracking(
    *, endpoint_name: str, target_value: float, scale_in_cooldown: int, scale_out_cooldown: int
) -> dict[str, Any]:
    return {
        "target_value": target_value,
        "scale_in_cooldown": scale_in_cooldown,
        "scale_out_cooldown": scale_out_cooldown,
        "customized_metric_specification": {
            "metric_name": "ApproximateBacklogSizePerInstance",
            "namespace": "AWS/SageMaker",
            "dimensions": [{"name": "EndpointName", "value": endpoint_name}],
            "statistic": "Average",
        },
    }


def backlog_without_capacity_alarm(endpoint_name: str) -> dict[str, Any]:
    """Requests waiting while the endpoint has 0 instances: the signal to start one."""
    return _alarm_at_one(
        "HasBacklogWithoutCapacity",
        {"EndpointName": endpoint_name},
        statistic="Average",
        period=60,
        evaluation_periods=2,
    )


def async_topic_names(endpoint_name: str) -> tuple[str, str]:
    """The success and error topics' fixed names (the role's policy names them before they exist)."""
    return f"{endpoint_name}-async-success", f"{endpoint_name}-async-error"


def async_inference_config(
    *, bucket: str, key_arn: str, success_topic: str, error_topic: str, max_concurrent: int | None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "output_config": {
            "s3_output_path": LAYOUT.async_output_uri(bucket),
            "s3_failure_path": LAYOUT.async_failure_uri(bucket),
            "kms_key_id": key_arn,
            "notification_config": {
                "success_topic": success_topic,
                "error_topic": error_topic,
                # no include_inference_response_ins: results stay in the encrypted bucket, not in SNS
            },
        },
    }
    if max_concurrent:
        config["client_config"] = {"max_concurrent_invocations_per_instance": max_concurrent}
    return config
