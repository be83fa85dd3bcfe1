"""Remote jobs on the stack contract: defaults from the stack's outputs only, the one stack rule,
the VPC and network isolation, missing outputs, jobs that can never run twice or be adopted,
every log stream page and every host's metrics. Real moto server behind the platform proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiops.stack import CLIENT_TOKEN_TAG, LAYOUT, write_outputs

from .conftest import BUCKET, REGION

SUBNETS = ["subnet-0aaaaaaaaaaaaaaaa"]
GROUPS = ["sg-0cccccccccccccccc"]
NO_SETTINGS = {"AIOPS_AWS__ROLE_ARN": "", "AIOPS_AWS__BUCKET": ""}  # the stack's outputs only


def _train(run_cli, project: Path, *extra: str, env: dict[str, str] | None = None):
    return run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--instance-type",
        "ml.g5.xlarge",
        "--no-wait",
        "--json",
        *extra,
        env={**NO_SETTINGS, **(env or {})},
    )


def _outputs(home: Path, stack: str, **extra) -> str:
    role = f"arn:aws:iam::123456789012:role/{stack}-role"
    write_outputs(home, stack, {"region": REGION, "bucket": BUCKET, "roleArn": role, **extra})
    return role


def test_stack_outputs_alone_and_the_one_stack_rule(run_cli, project, platform, aiops_home) -> None:
    _outputs(aiops_home, "dev")
    prod = _outputs(aiops_home, "prod")
    qa = _outputs(aiops_home, "qa")
    assert _train(run_cli, project, env={"AIOPS_STACK": "prod"}).returncode == 0
    assert _train(run_cli, project, "--stack", "qa", env={"AIOPS_STACK": "prod"}).returncode == 0
    assert [r["RoleArn"] for r in platform.create_requests] == [prod, qa]


def test_vpc_from_the_stack_outputs_and_network_isolation(run_cli, project, platform, aiops_home) -> None:
    _outputs(aiops_home, "dev", subnetIds=SUBNETS, securityGroupIds=GROUPS)
    result = _train(run_cli, project, "--network-isolation")
    assert result.returncode == 0, result.output
    _train(run_cli, project, "--no-vpc")
    first, second = platform.create_requests
    assert first["VpcConfig"] == {"Subnets": SUBNETS, "SecurityGroupIds": GROUPS}
    assert first["EnableNetworkIsolation"] is True
    assert "VpcConfig" not in second and "EnableNetworkIsolation" not in second


@pytest.mark.parametrize(
    "outputs, extra, missing",
    [
        ({"bucket": BUCKET}, [], "'roleArn'"),
        ({"roleArn": "arn:aws:iam::123456789012:role/r"}, [], "'bucket'"),
        ({"bucket": BUCKET, "roleArn": "arn:aws:iam::123456789012:role/r"}, ["--vpc"], "'subnetIds'"),
    ],
)
def test_missing_outputs_name_the_output_and_deploy(
    run_cli, project, platform, aiops_home, outputs, extra, missing
) -> None:
    write_outputs(aiops_home, "dev", outputs)
    result = _train(run_cli, project, *extra)
    assert result.returncode == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and missing in line and "aiops deploy --stack dev" in line
    assert platform.count("s3:PUT") == 0 and platform.count("SageMaker.CreateTrainingJob") == 0


def test_unknown_region_is_refused_before_anything(run_cli, project, platform, aiops_home) -> None:
    _outputs(aiops_home, "dev")
    result = _train(run_cli, project, "--region", "us-east-7")
    assert result.returncode == 2 and "unknown --region 'us-east-7'" in result.stderr
    assert platform.count("s3:PUT") == 0
    bad = run_cli("jobs", "list", env={"AIOPS_AWS__REGION": "mars-1"})
    assert bad.returncode == 2 and "AIOPS_AWS__REGION" in bad.stderr and "unknown region" in bad.stderr


def test_timed_out_create_and_failed_describe_leave_a_pending_record_resolved_later(
    run_cli, project, platform, aiops_home
) -> None:
    _outputs(aiops_home, "dev")
    platform.inject("SageMaker.CreateTrainingJob", "forward-then-500")  # the job IS created
    platform.inject("SageMaker.DescribeTrainingJob", "500", times=6)  # and every attempt to look after it
    result = _train(run_cli, project, "--job-name", "pending-1")
    assert result.returncode == 1, result.output
    record = json.loads((aiops_home / "runs" / "pending-1" / "run.json").read_text())
    assert record["status"] == "Pending" and record["client_token"]
    # the same name again is refused locally: it can never launch a second job
    again = _train(run_cli, project, "--job-name", "pending-1")
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = run_cli("jobs", "list", "--json")
    assert listed.returncode == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert row["job_name"] == "pending-1" and row["status"] == "Completed"
    record = json.loads((aiops_home / "runs" / "pending-1" / "run.json").read_text())
    assert record["create_outcome"] == "found"
    assert platform.count("SageMaker.CreateTrainingJob") == 1


def test_a_pending_create_that_never_reached_sagemaker_is_marked_not_created(
    run_cli, project, platform, aiops_home
) -> None:
    _outputs(aiops_home, "dev")
    platform.inject("SageMaker.CreateTrainingJob", "500", times=5)
    platform.inject("SageMaker.DescribeTrainingJob", "500", times=6)  # all of botocore's attempts
    assert _train(run_cli, project, "--job-name", "pending-2").returncode == 1
    described = run_cli("jobs", "describe", "pending-2", "--json")
    assert described.returncode == 0, described.output
    record = json.loads(described.stdout)
    assert record["status"] == "NotCreated" and "never reached SageMaker" in record["failure_reason"]
    assert platform.count("SageMaker.CreateTrainingJob") == 0


def test_a_job_of_the_same_name_without_our_token_is_never_adopted(
    run_cli, project, platform, aiops_home
) -> None:
    _outputs(aiops_home, "dev")
    platform.boto("sagemaker").create_training_job(
        TrainingJobName="someone-elses",
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        RoleArn="arn:aws:iam::123456789012:role/other",
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/x"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
        Tags=[{"Key": CLIENT_TOKEN_TAG, "Value": "not-ours"}],
    )
    result = _train(run_cli, project, "--job-name", "someone-elses")
    assert result.returncode == 2, result.output
    assert "not created by this request" in result.stderr and CLIENT_TOKEN_TAG in result.stderr
    record = json.loads((aiops_home / "runs" / "someone-elses" / "run.json").read_text())
    assert record["status"] == "NotCreated"


def test_logs_read_every_page_of_streams_and_every_host(platform, monkeypatch) -> None:
    from aiops.training.remote_logs import LogFollower

    from aiops import aws
    from aiops.stack import TRAINING_LOG_GROUP

    logs = platform.boto("logs")
    logs.create_log_group(logGroupName=TRAINING_LOG_GROUP)
    import time

    hosts = 55  # more than one page of DescribeLogStreams (50)
    now = int(time.time() * 1000)
    for h in range(1, hosts + 1):
        stream = f"job-x/algo-{h}-1700000000"
        logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=stream)
        logs.put_log_events(
            logGroupName=TRAINING_LOG_GROUP,
            logStreamName=stream,
            logEvents=[{"timestamp": now, "message": f"hello from {h}"}],
        )
    events = LogFollower(aws.client("logs", REGION), "job-x").poll()
    assert sorted(m for _, m in events) == sorted(f"hello from {h}" for h in range(1, hosts + 1))


def test_metrics_of_every_host_in_one_batched_call(platform) -> None:
    import time
    from datetime import datetime, timedelta, timezone

    from aiops.training import remote_logs as remote

    from aiops.runs import RunRecord
    from aiops.stack import TRAINING_METRICS_NAMESPACE

    start = datetime.now(tz=timezone.utc) - timedelta(minutes=3)
    data = [
        {
            "MetricName": "loss",
            "Value": v + h,
            "Timestamp": start + timedelta(minutes=i),
            "Dimensions": [{"Name": "Host", "Value": f"job-m/algo-{h}"}],
        }
        for h in (1, 2)
        for i, v in enumerate((0.5, 0.25))
    ]
    platform.boto("cloudwatch").put_metric_data(Namespace=TRAINING_METRICS_NAMESPACE, MetricData=data)
    record = RunRecord.from_json(
        {
            "job_name": "job-m",
            "status": "InProgress",
            "remote": True,
            "region": REGION,
            "created_at": time.time() - 600,
            "request": {
                "AlgorithmSpecification": {"MetricDefinitions": [{"Name": "loss", "Regex": "x"}]},
                "ResourceConfig": {"InstanceCount": 2},
            },
        }
    )
    queries = remote.metric_queries("job-m", ["loss"], 2)
    assert len(queries) == 2  # one GetMetricData for both hosts
    series = remote.metric_series(record)
    assert [p.value for p in series["loss"]] == [1.5, 1.25]
    assert [p.value for p in series["loss@algo-2"]] == [2.5, 2.25]


def test_keys_are_the_layouts(run_cli, project, platform, aiops_home) -> None:
    _outputs(aiops_home, "dev")
    assert _train(run_cli, project).returncode == 0
    keys = [o["Key"] for o in platform.boto("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys and all(LAYOUT.contains(k) for k in keys)
