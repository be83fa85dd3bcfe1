"""`aiops invoke --async` against the real moto server: the endpoint check before anything is
uploaded, the input under the stack contract's async-input prefix, moto's own InvokeEndpointAsync
records (its result queue writes the output or the failure object), and the wait, driven by an
injected clock and sleep (no test sleeps). The whole path through the platform emulator, under
IAM enforcement, is in tests/e2e/test_journey.py."""

from __future__ import annotations

import hashlib
import json
import urllib.request

import boto3
import pytest

from aiops.errors import AiopsError
from aiops.stack import LAYOUT, write_outputs

BUCKET = "aiops-test-artifacts"
BODY = b"[[1.0, 2.0]]"


def _moto_results(url: str, *results: dict) -> None:
    """moto's queue of InvokeEndpointAsync results (each: the output, or a failure object)."""
    request = urllib.request.Request(
        f"{url}/moto-api/static/sagemaker/async-endpoint-results",
        data=json.dumps({"results": list(results)}).encode(),
        method="POST",
    )
    urllib.request.urlopen(request).read()


@pytest.fixture
def stack(aws_env, moto_server, aiops_home):
    """The stack's bucket and an endpoint `e-async` (AsyncInferenceConfig) and `e-sync` (none) in moto."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.create_model(
        ModelName="m",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/r",
        PrimaryContainer={"Image": "img", "ModelDataUrl": f"s3://{BUCKET}/m/model.tar.gz"},
    )
    variant = [
        {"VariantName": "primary", "ModelName": "m", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
    ]
    sm.create_endpoint_config(EndpointConfigName="c-sync", ProductionVariants=variant)
    sm.create_endpoint_config(
        EndpointConfigName="c-async",
        ProductionVariants=variant,
        AsyncInferenceConfig={
            "OutputConfig": {
                "S3OutputPath": LAYOUT.async_output_uri(BUCKET),
                "S3FailurePath": LAYOUT.async_failure_uri(BUCKET),
            }
        },
    )
    sm.create_endpoint(EndpointName="e-sync", EndpointConfigName="c-sync")
    sm.create_endpoint(EndpointName="e-async", EndpointConfigName="c-async")
    write_outputs(aiops_home, "dev", {"bucket": BUCKET, "region": "us-east-1"})
    return s3


def _inputs(s3) -> list[str]:
    return [
        o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.async_input).get("Contents", [])
    ]


def test_async_prints_the_result_and_uploads_the_input_under_the_layout(stack, run_cli, moto_server):
    _moto_results(moto_server, {"data": json.dumps({"predictions": [7]})})
    result = run_cli("invoke", "--async", "--endpoint", "e-async", "--data", BODY.decode())
    assert result.returncode == 0, result.output
    assert json.loads(result.stdout) == {"predictions": [7]}
    assert "async " in result.stderr and "s3://" in result.stderr
    assert _inputs(stack) == [LAYOUT.async_input_key(hashlib.sha256(BODY).hexdigest())]


def test_async_failure_object_is_one_error_line(stack, run_cli, moto_server):
    _moto_results(moto_server, {"is_failure": True, "data": "ModelError: the model raised ValueError"})
    result = run_cli("invoke", "--async", "--endpoint", "e-async", "--data", BODY.decode())
    assert result.returncode == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the asynchronous request failed: ModelError: the model raised ValueError")
    assert "failure object s3://" in line and "Traceback" not in result.output


def test_async_against_a_synchronous_endpoint_is_one_line_and_uploads_nothing(stack, run_cli):
    result = run_cli("invoke", "--async", "--endpoint", "e-sync", "--data", BODY.decode())
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: endpoint e-sync is not asynchronous") and "AsyncInferenceConfig" in line
    assert "asyncInference.enabled" in line
    assert _inputs(stack) == []


@pytest.mark.parametrize(
    "args,expected",
    [
        (("--async",), "--async needs --endpoint NAME"),
        (("--inference-component", "ic"), "--inference-component needs --endpoint NAME"),
        (("--async", "--stream", "--endpoint", "e"), "give --async or --stream, not both"),
    ],
)
def test_async_option_misuse_is_one_line(run_cli, args, expected):
    result = run_cli("invoke", *args, "--data", "[1]")
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {expected}")


class FakeTime:
    """A clock that only moves when the code under test sleeps (what it asked for, recorded)."""

    def __init__(self, on_sleep=None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


def test_wait_times_out_after_the_timeout_with_bounded_polls(aws_env, moto_server):
    from aiops.inference.client.asynchronous import wait_for_result

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    fake = FakeTime()
    output = f"{LAYOUT.async_output_uri(BUCKET)}/never.out"
    with pytest.raises(AiopsError) as err:
        wait_for_result(
            s3,
            output,
            f"{LAYOUT.async_failure_uri(BUCKET)}/never-error.out",
            timeout=30,
            sleep=fake.sleep,
            clock=fake.clock,
        )
    message = str(err.value)
    assert message.startswith("no result after 30 s at " + output) and "--timeout" in message
    assert sum(fake.sleeps) == pytest.approx(30)  # waited exactly the timeout, never past it
    assert (
        len(fake.sleeps) <= 10 and max(fake.sleeps) <= 10
    )  # backs off: 0.5 s first, then x1.5, at most 10 s


def test_wait_returns_the_result_on_the_poll_it_appears(aws_env, moto_server):
    from aiops.inference.client.asynchronous import wait_for_result

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    key = f"{LAYOUT.async_output}abc.out"

    def platform_writes(n: int) -> None:  # the "service" finishes after the third wait
        if n == 3:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"ok": 1}', ContentType="application/json")

    fake = FakeTime(platform_writes)
    body, ctype, polls = wait_for_result(
        s3, f"s3://{BUCKET}/{key}", None, timeout=600, sleep=fake.sleep, clock=fake.clock
    )
    assert (body, ctype, polls) == (b'{"ok": 1}', "application/json", 4)
    assert fake.sleeps == [0.5, 0.75, 1.125]
