"""The endpoint's capacity rules, as pure functions: the autoscaling target and its target-tracking
policy, and the blue/green deployment that shifts traffic to a new version (rolled back by alarms).
"""

from __future__ import annotations

import math
from typing import Any

from aiops.errors import ConfigError


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
