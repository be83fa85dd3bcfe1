"""A real moto server on 127.0.0.1, and a small "platform" proxy in front of it.

moto's SageMaker only keeps records: jobs are Completed at once, nothing runs, nothing is
written. The proxy plays the platform's part over real HTTP: when a CreateTrainingJob goes
through, it writes the job's CloudWatch log events and its model.tar.gz into moto, as SageMaker
would; it adds the billing fields moto leaves out of DescribeTrainingJob; it accepts
StopTrainingJob (moto answers 500). It also injects faults (throttling, 5xx, a create that
succeeds but answers 500, ResourceLimitExceeded, jobs of a type described Failed for capacity) and
counts every call, so tests can prove no job is created twice.
"""

from __future__ import annotations

import http.client
import io
import json
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port

REGION = "us-east-1"
ACCOUNT_ROLE = "arn:aws:iam::123456789012:role/aiops-sagemaker-execution"
BUCKET = "aiops-artifacts-test"


@pytest.fixture
def run_cli(cli_in_process):
    """`aiops ...` through the same entry in this process (``cli_in_process``): a remote submission's
    fresh process spends ~1.5 s of its ~2 s importing boto3 and loading the SageMaker service model,
    and these tests submit ~45 jobs. What only a fresh process shows (the first submission end to
    end, imports, the credential chain, Ctrl-C) uses ``fresh_cli``."""
    return cli_in_process


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A source folder holding one train.py that prints a metric line (a module may override it)."""
    src = tmp_path / "project"
    src.mkdir()
    (src / "train.py").write_text("print('epoch=0; loss=1.0;')\n")
    return src


@pytest.fixture(scope="session")
def moto_url() -> Any:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class Fault:
    target: str  # e.g. "SageMaker.CreateTrainingJob", or "s3:PUT" for S3 object writes
    mode: str  # "throttle" | "500" | "forward-then-500" | "access-denied"
    times: int = 1


@dataclass
class Platform:
    moto_url: str
    faults: list[Fault] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)  # answered by moto
    attempts: dict[str, int] = field(default_factory=dict)  # reached the proxy
    create_requests: list[dict[str, Any]] = field(default_factory=list)
    log_lines: list[str] = field(
        default_factory=lambda: ["epoch=0; loss=0.9;", "epoch=1; loss=0.4;", "test_accuracy=0.98;"]
    )
    in_progress_polls: int = 0  # DescribeTrainingJob answers InProgress this many times first
    # instance type -> FailureReason: its jobs are described Failed with it (no capacity, say)
    failing_types: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)  # "created NAME" / "described NAME STATUS", in order
    url: str = ""

    def boto(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.moto_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def take_fault(self, target: str) -> Fault | None:
        for fault in self.faults:
            if fault.target == target and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    def act_for_create(self, request: dict[str, Any]) -> None:
        """What SageMaker would write while running the job: logs per host, then model.tar.gz."""
        job = request["TrainingJobName"]
        logs = self.boto("logs")
        group = "/aws/sagemaker/TrainingJobs"
        try:
            logs.create_log_group(logGroupName=group)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        now = int(time.time() * 1000)
        for host in range(1, request["ResourceConfig"]["InstanceCount"] + 1):
            stream = f"{job}/algo-{host}-{now // 1000}"
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
            logs.put_log_events(
                logGroupName=group,
                logStreamName=stream,
                logEvents=[
                    {"timestamp": now + i, "message": f"{line}"} for i, line in enumerate(self.log_lines)
                ],
            )
        self.publish_metrics(request)
        output = request["OutputDataConfig"]["S3OutputPath"][len("s3://") :]
        bucket, _, prefix = output.partition("/")
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            payload = b"trained-weights"
            info = tarfile.TarInfo("model.pth")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        self.boto("s3").put_object(
            Bucket=bucket, Key=f"{prefix}/{job}/output/model.tar.gz", Body=archive.getvalue()
        )

    def publish_metrics(self, request: dict[str, Any]) -> None:
        """SageMaker reads MetricDefinitions over the log and publishes matches to CloudWatch."""
        import re
        from datetime import datetime, timedelta, timezone

        definitions = request["AlgorithmSpecification"].get("MetricDefinitions", [])
        # One point a minute, centred on now: the reader queries from the job's creation - 5 min to
        # now + 5 min, so every point lies minutes inside that window however slow the run is (points
        # ending at now - 1 min fell out whenever the record's created_at came a moment after them).
        start = datetime.now(tz=timezone.utc) - timedelta(minutes=len(self.log_lines) / 2)
        data = []
        for i, line in enumerate(self.log_lines):
            for definition in definitions:
                match = re.search(definition["Regex"], line)
                if match:
                    data.append(
                        {
                            "MetricName": definition["Name"],
                            "Value": float(match.group(1)),
                            "Timestamp": start + timedelta(minutes=i),
                            "Dimensions": [{"Name": "Host", "Value": f"{request['TrainingJobName']}/algo-1"}],
                        }
                    )
        if data:
            self.boto("cloudwatch").put_metric_data(Namespace="/aws/sagemaker/TrainingJobs", MetricData=data)

    def job_exists(self, name: str) -> bool:
        return any(
            j["TrainingJobName"] == name
            for j in self.boto("sagemaker").list_training_jobs()["TrainingJobSummaries"]
        )

    def inject(self, target: str, mode: str, *, times: int = 1) -> None:
        self.faults.append(Fault(target, mode, times))

    def count(self, target: str) -> int:
        return self.calls.get(target, 0)


def _target(handler: BaseHTTPRequestHandler) -> str:
    target = handler.headers.get("X-Amz-Target")
    if target:
        return target
    return f"s3:{handler.command}"


def _make_handler(platform: Platform) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json_error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"__type": code, "message": message}).encode()
            self._reply(
                status, body, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}
            )

        def _forward(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
            host = platform.moto_url.split("//", 1)[1]
            conn = http.client.HTTPConnection(host, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            out_headers = dict(response.getheaders())
            conn.close()
            return response.status, data, out_headers

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            target = _target(self)
            platform.attempts[target] = platform.attempts.get(target, 0) + 1
            fault = platform.take_fault(target)
            if fault and fault.mode == "throttle":
                return self._json_error(400, "ThrottlingException", "Rate exceeded")
            if fault and fault.mode == "500":
                if target.startswith("s3:"):
                    return self._reply(
                        503,
                        b"<Error><Code>SlowDown</Code><Message>Reduce your request rate</Message></Error>",
                        {"Content-Type": "application/xml"},
                    )
                return self._json_error(500, "InternalFailure", "We encountered an internal error")
            if fault and fault.mode == "quota":
                return self._json_error(
                    400,
                    "ResourceLimitExceeded",
                    "The account-level service limit "
                    "'ml.g5.xlarge for spot training job usage' is 0 Instances, with current "
                    "utilization of 0 Instances and a request delta of 1 Instances.",
                )
            if fault and fault.mode == "expired":
                return self._json_error(
                    400, "ExpiredTokenException", "The security token included in the request is expired"
                )
            if fault and fault.mode == "access-denied" and target.startswith("s3:"):
                denied = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                return self._reply(403, denied, {"Content-Type": "application/xml"})
            if fault and fault.mode == "access-denied":
                return self._json_error(
                    400,
                    "AccessDeniedException",
                    "User: arn:aws:iam::123456789012:user/dev "
                    "is not authorized to perform: sagemaker:CreateTrainingJob on resource: x",
                )
            if target == "SageMaker.StopTrainingJob":  # moto answers 500; the platform accepts the stop
                platform.calls[target] = platform.calls.get(target, 0) + 1
                return self._reply(200, b"{}", {"Content-Type": "application/x-amz-json-1.1"})
            if target == "SageMaker.CreateTrainingJob" and platform.job_exists(
                json.loads(body)["TrainingJobName"]
            ):
                # SageMaker refuses a second job of a name (moto would silently replace the first)
                return self._json_error(
                    400,
                    "ResourceInUse",
                    "Training job names must be unique within an AWS "
                    "account and region, and a training job with this name already exists",
                )
            status, data, headers = self._forward(body)
            platform.calls[target] = platform.calls.get(target, 0) + 1
            if target == "SageMaker.CreateTrainingJob" and status == 200:
                request = json.loads(body)
                platform.create_requests.append(request)
                platform.events.append(f"created {request['TrainingJobName']}")
                platform.act_for_create(request)
            if target == "SageMaker.DescribeTrainingJob" and status == 200:
                described = json.loads(data)
                if platform.in_progress_polls > 0:
                    platform.in_progress_polls -= 1
                    described.update(TrainingJobStatus="InProgress", SecondaryStatus="Training")
                reason = platform.failing_types.get(
                    (described.get("ResourceConfig") or {}).get("InstanceType")
                )
                if reason:
                    described.update(
                        TrainingJobStatus="Failed", SecondaryStatus="Failed", FailureReason=reason
                    )
                platform.events.append(
                    f"described {described['TrainingJobName']} {described['TrainingJobStatus']}"
                )
                if (described.get("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds"):  # a warm pool
                    ended = described["TrainingJobStatus"] != "InProgress"
                    described.setdefault(
                        "WarmPoolStatus",
                        {"Status": "Available", "ResourceRetainedBillableTimeInSeconds": 42}
                        if ended
                        else {"Status": "InUse"},
                    )
                described.setdefault("TrainingTimeInSeconds", 600)
                described.setdefault(
                    "BillableTimeInSeconds", 180 if described.get("EnableManagedSpotTraining") else 600
                )
                data = json.dumps(described).encode()
            if fault and fault.mode == "forward-then-500":
                return self._json_error(500, "InternalFailure", "We encountered an internal error")
            self._reply(status, data, headers)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler


@pytest.fixture
def platform(moto_url: str, monkeypatch: pytest.MonkeyPatch, aiops_home: Any) -> Any:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).read()
    state = Platform(moto_url=moto_url)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    s3 = state.boto("s3")
    s3.create_bucket(Bucket=BUCKET)
    env = {
        "AWS_ENDPOINT_URL": state.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AIOPS_AWS__ROLE_ARN": ACCOUNT_ROLE,
        "AIOPS_AWS__BUCKET": BUCKET,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    state.env = env  # type: ignore[attr-defined]
    yield state
    server.shutdown()
    server.server_close()
