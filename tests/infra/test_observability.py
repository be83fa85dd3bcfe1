"""The endpoint's dashboard and idle alarm in the mocked plan: metrics, dimensions, SNS, KMS."""

from __future__ import annotations

import json

import pytest
from aiops.infra import observability

ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
DASHBOARD = "aws:cloudwatch/dashboard:Dashboard"
TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"


def _metrics(widget):
    """(metric name, stat, dims) of each metric row of a widget (expressions skipped)."""
    rows = []
    for row in widget["properties"]["metrics"]:
        if isinstance(row[0], dict):
            continue
        ns, name, *rest = row
        props = rest.pop() if rest and isinstance(rest[-1], dict) else {}
        dims = dict(zip(rest[::2], rest[1::2], strict=True))
        rows.append((ns, name, props.get("stat"), dims, props))
    return rows


def test_dashboard_body_metrics_and_dimensions(full_plan):
    endpoint = full_plan.one("aws:sagemaker/endpoint:Endpoint")
    dash = full_plan.one(DASHBOARD)
    assert dash.parent == "endpoint" and dash.inputs["dashboardName"] == endpoint.inputs["name"]
    body = json.loads(dash.inputs["dashboardBody"])
    widgets = {w["properties"]["title"].split(" ")[0]: w for w in body["widgets"]}
    assert set(widgets) == {"Invocations", "ModelLatency", "Errors", "Instances"}
    dims = {"EndpointName": endpoint.inputs["name"], "VariantName": "primary"}
    seen = set()
    for w in body["widgets"]:
        assert w["type"] == "metric" and w["properties"]["region"] == "us-east-1"
        for ns, name, stat, d, _ in _metrics(w):
            assert ns == "AWS/SageMaker" and d == dims
            seen.add((name, stat))
    assert {
        ("Invocations", "Sum"),
        ("ModelLatency", "p50"),
        ("ModelLatency", "p90"),
        ("ModelLatency", "p99"),
        ("Invocation4XXErrors", "Sum"),
        ("Invocation5XXErrors", "Sum"),
        ("InvocationsPerInstance", "Sum"),
    } <= seen
    # the instance count is derived: Invocations / InvocationsPerInstance, and labelled so
    inst = widgets["Instances"]["properties"]
    (expr,) = [r[0] for r in inst["metrics"] if isinstance(r[0], dict)]
    ids = {props["id"]: name for _, name, _, _, props in _metrics(widgets["Instances"])}
    assert expr["expression"] == "m1 / m2" and "derived" in expr["label"]
    assert ids == {"m1": "Invocations", "m2": "InvocationsPerInstance"}
    assert [a["value"] for a in inst["annotations"]["horizontal"]] == [1, 2]  # autoscaling bounds
    # latency in microseconds, the p99 rollback threshold drawn (1000 ms default)
    lat = widgets["ModelLatency"]["properties"]
    assert lat["annotations"]["horizontal"][0]["value"] == 1000 * 1000


def test_idle_alarm(full_plan):
    endpoint = full_plan.one("aws:sagemaker/endpoint:Endpoint")
    (idle,) = [a for a in full_plan.of_type(ALARM) if a.inputs["metricName"] == "Invocations"]
    i = idle.inputs
    assert idle.parent == "endpoint" and i["name"] == f"{endpoint.inputs['name']}-idle"
    assert i["namespace"] == "AWS/SageMaker"
    assert i["dimensions"] == {"EndpointName": endpoint.inputs["name"], "VariantName": "primary"}
    assert (i["statistic"], i["period"], i["evaluationPeriods"], i["datapointsToAlarm"]) == (
        "Sum",
        3600,
        4,
        4,
    )
    assert (i["threshold"], i["comparisonOperator"]) == (0, "LessThanOrEqualToThreshold")
    assert i["treatMissingData"] == "breaching"  # an idle endpoint emits no datapoints
    topic = full_plan.one(TOPIC)
    assert topic.parent == "endpoint" and topic.inputs["kmsMasterKeyId"] == full_plan.outputs["kmsKeyArn"]
    topic_arn = full_plan.outputs["alertsTopicArn"]
    assert i["alarmActions"] == [topic_arn] and i["okActions"] == [topic_arn]
    # never a rollback alarm
    rollback = endpoint.inputs["deploymentConfig"]["autoRollbackConfiguration"]["alarms"]
    assert i["name"] not in [a["alarmName"] for a in rollback]
    assert not full_plan.of_type(SUBSCRIPTION)  # no e-mail configured


def test_key_policy_lets_cloudwatch_alarms_use_the_key(full_plan):
    key = full_plan.one("aws:kms/key:Key")
    doc = json.loads(key.inputs["policy"])
    (stmt,) = [s for s in doc["Statement"] if s["Sid"] == "CloudWatchAlarmsPublishToEncryptedTopics"]
    assert stmt["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert stmt["Action"] == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert stmt["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}


def test_idle_hours_and_email(make_plan):
    p = make_plan(endpoint={"idleAlarm": {"hours": 12, "email": "ops@example.com"}})
    (idle,) = [a for a in p.of_type(ALARM) if a.inputs["metricName"] == "Invocations"]
    assert idle.inputs["evaluationPeriods"] == 12 and idle.inputs["datapointsToAlarm"] == 12
    sub = p.one(SUBSCRIPTION)
    assert sub.parent == "endpoint"
    assert (sub.inputs["protocol"], sub.inputs["endpoint"], sub.inputs["topic"]) == (
        "email",
        "ops@example.com",
        p.outputs["alertsTopicArn"],
    )


def test_switches(make_plan):
    p = make_plan(endpoint={"idleAlarm": {"enabled": False}, "dashboard": {"enabled": False}})
    assert not p.of_type(DASHBOARD) and not p.of_type(TOPIC)
    assert len(p.of_type(ALARM)) == 2
    doc = json.loads(p.one("aws:kms/key:Key").inputs["policy"])
    assert "CloudWatchAlarmsPublishToEncryptedTopics" not in [s["Sid"] for s in doc["Statement"]]
    assert "dashboardName" not in p.outputs and "alertsTopicArn" not in p.outputs
    p = make_plan(endpoint={"enabled": False})
    assert not p.of_type(DASHBOARD) and not p.of_type(TOPIC)


def test_serverless_dashboard_has_no_instance_widget(make_plan):
    p = make_plan(endpoint={"serverless": {"enabled": True}, "dataCapture": {"enabled": False}})
    body = json.loads(p.one(DASHBOARD).inputs["dashboardBody"])
    assert [w["properties"]["title"].split(" ")[0] for w in body["widgets"]] == [
        "Invocations",
        "ModelLatency",
        "Errors",
    ]


def test_idle_alarm_settings_bounds():
    assert (
        observability.idle_alarm_settings(hours=168)["evaluation_periods"] == 168
    )  # 7 days, the CloudWatch limit
    with pytest.raises(Exception, match="idleAlarm.hours=169"):
        observability.idle_alarm_settings(hours=169)
