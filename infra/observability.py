"""What the endpoint is watched with, as pure functions: its CloudWatch dashboard and the alarm for
an endpoint that has had no invocations for hours (it still costs money).
"""

from __future__ import annotations

from typing import Any

from aiops.errors import ConfigError

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
