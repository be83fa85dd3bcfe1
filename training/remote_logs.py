"""A remote job's logs (every host's CloudWatch stream) and metrics (CloudWatch, where SageMaker
publishes its MetricDefinitions), and following a job to its end (`wait`, `follow`): its status
transitions and every host's log."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from aiops.training.remote_jobs import aws_call

from aiops.aws import error_code
from aiops.runs import TERMINAL, RunRecord
from aiops.stack import TRAINING_LOG_GROUP, TRAINING_METRICS_NAMESPACE

LOG_GROUP = TRAINING_LOG_GROUP


class LogSink(Protocol):
    def status(self, status: str, secondary: str) -> None: ...
    def log(self, stream: str, message: str) -> None: ...
    def silent(self, seconds: float, status: str) -> None: ...


class LogFollower:
    """Follows every host's CloudWatch stream of a job (`<job>/algo-N-...`)."""

    def __init__(self, logs: Any, job_name: str) -> None:
        self.logs = logs
        self.job_name = job_name
        self._tokens: dict[str, str | None] = {}

    def poll(self) -> list[tuple[str, str]]:
        from botocore.exceptions import ClientError

        try:
            pages = self.logs.get_paginator("describe_log_streams").paginate(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{self.job_name}/"
            )
            names = sorted(s["logStreamName"] for page in pages for s in page.get("logStreams", []))
        except ClientError as err:
            if error_code(err) == "ResourceNotFoundException":
                return []  # the group appears with the first log line
            raise
        events: list[tuple[str, str]] = []
        # GetLogEvents has no botocore paginator (its forward token never runs out: a followed stream
        # can always grow), so each stream is read to the token that repeats, and resumed from it.
        for stream in names:  # every page of streams: every host (algo-1 ... algo-N)
            while True:
                kwargs: dict[str, Any] = {
                    "logGroupName": LOG_GROUP,
                    "logStreamName": stream,
                    "startFromHead": True,
                }
                token = self._tokens.get(stream)
                if token:
                    kwargs["nextToken"] = token
                page = self.logs.get_log_events(**kwargs)
                for event in page.get("events", []):
                    events.append((stream, event["message"]))
                new_token = page.get("nextForwardToken")
                if not page.get("events") or new_token == token:
                    self._tokens[stream] = new_token
                    break
                self._tokens[stream] = new_token
        return events


def logs_once(job_name: str, region: str | None) -> list[tuple[str, str]]:
    from aiops import aws

    follower = LogFollower(aws.client("logs", region), job_name)
    return aws_call(f"reading the logs of {job_name}", follower.poll)


METRICS_NAMESPACE = TRAINING_METRICS_NAMESPACE
MAX_QUERIES = 500  # GetMetricData: at most 500 MetricDataQueries per call


def metric_queries(job: str, names: list[str], hosts: int) -> list[dict[str, Any]]:
    """One MetricDataQuery per metric and host (dimension Host=<job>/algo-N, as SageMaker publishes)."""
    return [
        {
            "Id": f"m{i}_{h}",
            "Label": name if h == 1 else f"{name}@algo-{h}",
            "ReturnData": True,
            "MetricStat": {
                "Metric": {
                    "Namespace": METRICS_NAMESPACE,
                    "MetricName": name,
                    "Dimensions": [{"Name": "Host", "Value": f"{job}/algo-{h}"}],
                },
                "Period": 60,
                "Stat": "Average",
            },
        }
        for i, name in enumerate(names)
        for h in range(1, hosts + 1)
    ]


def metric_series(record: RunRecord) -> dict[str, list[Any]]:
    """A remote job's metrics from CloudWatch, where SageMaker publishes its MetricDefinitions
    (namespace /aws/sagemaker/TrainingJobs, dimension Host=<job>/algo-N), as {name: [Point]}.

    Every host, in one batched GetMetricData (paged by NextToken): algo-1's series under the
    metric's name, the others' as ``name@algo-N``.
    """
    from datetime import datetime, timedelta, timezone

    from aiops.training.metrics import Point

    from aiops import aws

    job = record.job_name
    request = record.request or {}
    names = [d["Name"] for d in request.get("AlgorithmSpecification", {}).get("MetricDefinitions", [])]
    hosts = int(request.get("ResourceConfig", {}).get("InstanceCount", 1))
    queries = metric_queries(job, names, hosts)
    cloudwatch = aws.client("cloudwatch", record.region)
    start = datetime.fromtimestamp(record.created_at or 0, tz=timezone.utc) - timedelta(minutes=5)
    end = datetime.now(tz=timezone.utc) + timedelta(minutes=5)

    def fetch() -> dict[str, list[Any]]:
        values: dict[str, list[tuple[Any, float]]] = {}
        for at in range(0, len(queries), MAX_QUERIES):
            kwargs: dict[str, Any] = {
                "MetricDataQueries": queries[at : at + MAX_QUERIES],
                "StartTime": start,
                "EndTime": end,
                "ScanBy": "TimestampAscending",
            }
            while True:
                answer = cloudwatch.get_metric_data(**kwargs)
                for result in answer.get("MetricDataResults", []):
                    values.setdefault(result["Label"], []).extend(
                        zip(result["Timestamps"], result["Values"], strict=True)
                    )
                if not answer.get("NextToken"):
                    break
                kwargs["NextToken"] = answer["NextToken"]
        series: dict[str, list[Any]] = {}
        for label, points in values.items():
            if points:
                points.sort(key=lambda p: p[0])
                first = points[0][0]
                series[label] = [Point((t - first).total_seconds(), float(v)) for t, v in points]
        return series

    return aws_call(f"reading the metrics of {job}", fetch) if queries else {}


# ---------------------------------------------------------------------------------------------
# Following a job to its end


def wait(
    sm: Any,
    logs: Any,
    job_name: str,
    sink: LogSink,
    *,
    poll_seconds: float = 5.0,
    silence_warning_seconds: float = 300.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Show status transitions and every host's log until the job ends; return its description."""
    follower = LogFollower(logs, job_name)
    last_status: tuple[str, str] | None = None
    last_output = clock()
    warned_at = 0.0
    while True:
        description = sm.describe_training_job(TrainingJobName=job_name)
        status = (description["TrainingJobStatus"], description.get("SecondaryStatus", ""))
        if status != last_status:
            sink.status(*status)
            last_status = status
        events = follower.poll()
        for stream, message in events:
            sink.log(stream, message)
        now = clock()
        if events:
            last_output = now
        elif now - last_output >= silence_warning_seconds and now - warned_at >= silence_warning_seconds:
            sink.silent(now - last_output, "/".join(s for s in status if s))
            warned_at = now
        if status[0] in TERMINAL:
            for stream, message in follower.poll():  # the last lines land just after the end
                sink.log(stream, message)
            return description
        sleep(poll_seconds)


def follow(
    job_name: str,
    region: str,
    sink: LogSink,
    *,
    silence_warning_seconds: float = 300.0,
    poll_seconds: float = 5.0,
) -> dict[str, Any]:
    from aiops import aws

    sm, logs = aws.client("sagemaker", region), aws.client("logs", region)
    return aws_call(
        f"following {job_name}",
        lambda: wait(
            sm,
            logs,
            job_name,
            sink,
            poll_seconds=poll_seconds,
            silence_warning_seconds=silence_warning_seconds,
        ),
    )
