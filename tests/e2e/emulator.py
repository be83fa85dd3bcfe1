"""The emulated AWS account of the journey test: moto with IAM enforced, and a platform in front.

What stands in for what:

- **AWS APIs**: a moto server in its own process (``moto_server.py``), IAM enforcement on. Users
  and the CLI reach it through the platform proxy (``AWS_ENDPOINT_URL``) with the credentials of an
  admin IAM user (the person deploying and training); the emulator reaches it directly.
- **the SageMaker service** (``Platform``): an HTTP proxy in front of moto. moto keeps SageMaker
  records only (a training job is Completed the moment it is created); the proxy forwards every
  call and, when a CreateTrainingJob or CreateEndpoint/UpdateEndpoint succeeds, does what the
  service does: ``TrainingJob`` runs the job, ``EndpointHost`` serves the model. DescribeTrainingJob
  and DescribeEndpoint answer with the emulator's status (InProgress until the job is done);
  StopTrainingJob (moto: HTTP 500) stops the job; UpdateEndpoint (moto: HTTP 500) switches the
  endpoint's config; ``POST /endpoints/NAME/invocations`` (sagemaker-runtime) reaches the model,
  and ``/endpoints/NAME/invocations-response-stream`` relays its chunked answer as PayloadPart
  event-stream frames as it arrives.
- **an endpoint's model**: its ModelDataUrl (model.tar.gz) or its ModelDataSource S3Prefix
  (uncompressed files) downloaded as the role, served by `aiops serve`; the LLM containers' images
  (TGI, LMI) by `aiops serve --container tgi|lmi` with the model's environment, as their entry
  points read it; one told to shard over more GPUs than it sees (the instance type's, or an inference
  component's accelerators) fails to start.
- **scale to zero**: ``POST /endpoints/NAME/async-invocations`` (InvokeEndpointAsync) is answered
  by the platform for an endpoint with an ``AsyncInferenceConfig`` (moto's own answer is a
  placeholder in a bucket of its own): the request is queued and ``EndpointHost`` does what the
  service does (input read as the role, the served handler, output or failure written under the
  configured S3 paths, the SNS topic notified as the role). Inference components, which moto
  lacks, are kept by the platform (``ComponentHost``); ``invoke_endpoint(...,
  InferenceComponentName=...)`` is routed to the component's model.
- **the service principal**: an IAM user named ``sagemaker.amazonaws.com`` (see moto_server.py),
  which assumes the job's role through moto STS; the trust policy is also judged (iam_judge.py).
- **the execution role**: every S3 object or listing the platform reads or writes for a job or an
  endpoint goes to moto with the assumed role's credentials (moto enforces the role's policy), and
  every call is recorded and judged against the deployed documents (``iam_judge``), including
  what moto cannot enforce (logs, KMS, ECR, CloudWatch metrics, EC2 network interfaces, bucket and
  key policies). Logs and metrics are then written with the platform's own credentials, since
  moto would check them against ``Resource: "*"``.
- **warm pools** (``WarmPool``): a job with ``KeepAlivePeriodInSeconds`` leaves its instances in a
  pool when it ends; a later job that matches as SageMaker matches (instance type and count, role,
  VPC config, volume size and KMS key) within the period takes the pool and starts without the
  provisioning phase (no "Launching requested ML instances" transition); DescribeTrainingJob
  answers ``WarmPoolStatus`` (InUse, Available, Reused with ``ReusedByJob``, Terminated past the
  period, with ``ResourceRetainedBillableTimeInSeconds``).
- **capacity** (``Platform.inject_capacity``): an instance type without capacity, as SageMaker says
  it: CreateTrainingJob refused with ResourceLimitExceeded; or the job created and failed before
  any instance runs, on-demand with ``CapacityError: Unable to provision requested ML compute
  capacity...``, spot with EC2's ``InsufficientInstanceCapacity``. The platform counts every job's
  runs and the most jobs running at once (``runs``, ``peak_running``).
- **remote debugging**: a job with ``RemoteDebugConfig.EnableRemoteDebug`` has, on each host, the
  SSM agent open its channels as the role (the four ``ssmmessages`` actions, judged and recorded).
- **a training instance**: a process tree in a job network namespace (``sandbox.py``), running the
  script as the PyTorch training container would: the toolkit's env and argv computed by
  ``aiops.training.container`` from the job's own hyperparameters, plus the container's env.
  Unless the job asks for EnableNetworkIsolation, its script reaches AWS as the execution role, as
  in a container: ``AWS_ENDPOINT_URL`` is the platform (through the namespace's forwarder) and
  ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` the platform's credentials endpoint, which hands out the
  job's assumed-role session (SageMaker's 169.254.170.2 endpoint does the same); moto enforces the
  role's policy on every call the script makes.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import queue
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from iam_judge import AccessDenied, Call, Documents, Judge, documents_from_moto

from aiops.gpufit import gpu_count

ACCOUNT = "123456789012"
SERVICE = "sagemaker.amazonaws.com"
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
ENDPOINT_LOG_GROUP = "/aws/sagemaker/Endpoints"
JOB_TIME_CAP = 600.0  # no emulated job runs longer, whatever its MaxRuntimeInSeconds
STOP_GRACE = 120.0  # SageMaker: SIGTERM, then 120 s before SIGKILL
CREDENTIALS_PATH = "/_container-credentials/"  # + job name: the job's role session, as botocore reads it
LAUNCHING = "Launching requested ML instances"  # the provisioning phase a warm pool skips
PREPARING = "Preparing the instances for training"
ON_DEMAND_CAPACITY = (
    "CapacityError: Unable to provision requested ML compute capacity. Please retry using a different ML "
    "instance type."
)
SPOT_CAPACITY = (
    "InsufficientInstanceCapacity: We currently do not have sufficient {type} capacity for spot training "
    "in the Availability Zones you requested."
)
SSM_AGENT_ACTIONS = (  # what the SSM agent of a remote-debug container asks of the role
    "ssmmessages:CreateControlChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenDataChannel",
)


# --------------------------------------------------------------------------------------------
# The account: moto in its own process, the admin user, the service user


@dataclass
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def kwargs(self) -> dict[str, str]:
        out = {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key}
        if self.token:
            out["aws_session_token"] = self.token
        return out


ADMIN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
SERVICE_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}
)
BOOTSTRAP_REQUESTS = 6  # two users, each with an inline policy and an access key


class MotoAccount:
    """A moto server process with IAM enforcement on, an admin user and the service user."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._clients_lock = threading.Lock()
        here = Path(__file__).parent
        self.proc = subprocess.Popen(
            [sys.executable, str(here / "moto_server.py"), str(BOOTSTRAP_REQUESTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "port":
            self.close()
            raise RuntimeError(f"the moto server did not start (exit {self.proc.poll()})")
        self.url = f"http://127.0.0.1:{line[1]}"
        self.admin = self._bootstrap_user("admin", ADMIN_POLICY)
        self.service = self._bootstrap_user(SERVICE, SERVICE_POLICY)
        self._check_enforced()

    def _bootstrap_user(self, name: str, policy: str) -> Credentials:
        iam = self.client("iam", Credentials("bootstrap", "bootstrap"))
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=policy)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    def _check_enforced(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client("s3", self.service).list_buckets()
        except ClientError as err:
            if err.response["Error"]["Code"] == "AccessDenied":
                return
            raise
        raise RuntimeError("moto does not enforce IAM: the service user could list buckets")

    def client(self, service: str, creds: Credentials | None = None, endpoint: str | None = None) -> Any:
        """A boto3 client (cached, thread-safe; the sessions share aiops.aws's one model loader)."""
        from botocore.config import Config

        from aiops import aws

        creds = creds or self.admin
        key = (service, creds.access_key, endpoint or self.url)
        with self._clients_lock:
            if key not in self._clients:
                self._clients[key] = aws.session(self.region, **creds.kwargs()).client(
                    service,
                    endpoint_url=endpoint or self.url,
                    config=Config(retries={"mode": "standard", "max_attempts": 3}),
                )
            return self._clients[key]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------------
# Acting as the execution role


def _s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


class RoleSession:
    """The platform acting as one execution role: judged, recorded, and enforced by moto for S3."""

    def __init__(self, platform: Platform, role_arn: str, session_name: str, doing: str) -> None:
        self.platform = platform
        self.account = platform.account
        self.role_arn = role_arn
        self.doing = doing
        self.docs = platform.documents(role_arn)
        self.judge = Judge(lambda: self.docs)
        self.calls = self.judge.calls
        self.check(SERVICE, "sts:AssumeRole", role_arn, {"aws:SourceAccount": ACCOUNT}, doing)
        answer = self.account.client("sts", self.account.service).assume_role(
            RoleArn=role_arn, RoleSessionName=session_name
        )
        c = answer["Credentials"]
        self.creds = Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
        self.principal = answer["AssumedRoleUser"]["Arn"]
        self.s3 = self.account.client("s3", self.creds)

    def check(
        self,
        principal: str | None,
        action: str,
        resource: str,
        context: dict[str, str] | None = None,
        doing: str | None = None,
    ) -> None:
        ctx = {"aws:SecureTransport": "true", **(context or {})}
        call = Call(
            principal or self.principal, action, resource, tuple(sorted(ctx.items())), doing or self.doing
        )
        self.platform.record(call)
        self.judge.check(call)

    def _object_key(self, bucket: str, key: str) -> str | None:
        """The KMS key an object is encrypted with (S3 decrypts with it on the reader's behalf)."""
        head = self.account.client("s3").head_object(Bucket=bucket, Key=key)
        return self.platform.key_arn(head.get("SSEKMSKeyId") or self.platform.bucket_key(bucket))

    def _moto(self, call: Callable[[], Any], action: str, resource: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return call()
        except ClientError as err:
            code = err.response["Error"]["Code"]
            raise AccessDenied(
                Call(self.principal, action, resource, (), self.doing),
                f"moto answered {code}: {err.response['Error'].get('Message', '')}",
            ) from None

    def get(self, uri: str, dest: Path, doing: str) -> None:
        bucket, key = _s3_uri(uri)
        resource = f"arn:aws:s3:::{bucket}/{key}"
        self.check(None, "s3:GetObject", resource, doing=doing)
        kms_key = self._object_key(bucket, key)
        if kms_key:
            self.check(
                None,
                "kms:Decrypt",
                kms_key,
                {"kms:ViaService": f"s3.{self.account.region}.amazonaws.com"},
                doing=doing,
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._moto(lambda: self.s3.download_file(bucket, key, str(dest)), "s3:GetObject", resource)

    def list(self, uri: str, doing: str) -> list[str]:
        bucket, prefix = _s3_uri(uri)
        self.check(None, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": prefix}, doing=doing)
        keys: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        pages = self._moto(
            lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix)),
            "s3:ListBucket",
            f"arn:aws:s3:::{bucket}",
        )
        for page in pages:
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def download_prefix(self, uri: str, dest: Path, doing: str) -> int:
        """An S3Prefix channel (or checkpoints): every object under the prefix, paths kept."""
        bucket, prefix = _s3_uri(uri)
        count = 0
        for key in self.list(uri, doing):
            rel = key[len(prefix) :].lstrip("/")
            if not rel or key.endswith("/"):
                continue
            self.get(f"s3://{bucket}/{key}", dest / rel, doing)
            count += 1
        return count

    def put(
        self, uri: str, data: bytes, doing: str, kms_key: str | None = None, content_type: str | None = None
    ) -> None:
        bucket, key = _s3_uri(uri)
        resource = f"arn:aws:s3:::{bucket}/{key}"
        self.check(None, "s3:PutObject", resource, doing=doing)
        used_key = self.platform.key_arn(kms_key or self.platform.bucket_key(bucket))
        if used_key:
            self.check(
                None,
                "kms:GenerateDataKey",
                used_key,
                {"kms:ViaService": f"s3.{self.account.region}.amazonaws.com"},
                doing=doing,
            )
        extra: dict[str, str] = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key} if kms_key else {}
        if content_type:
            extra["ContentType"] = content_type
        self._moto(
            lambda: self.s3.put_object(Bucket=bucket, Key=key, Body=data, **extra), "s3:PutObject", resource
        )

    def publish(self, topic_arn: str, message: str, doing: str) -> None:
        """SNS Publish as the role; an encrypted topic also needs the role's use of its key. Judged
        here and sent with the platform's credentials (moto checks SNS actions against "*" only)."""
        self.check(None, "sns:Publish", topic_arn, doing=doing)
        sns = self.account.client("sns")
        topic_key = sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"].get("KmsMasterKeyId")
        if topic_key:
            context = {"kms:ViaService": f"sns.{self.account.region}.amazonaws.com"}
            for action in ("kms:GenerateDataKey", "kms:Decrypt"):
                self.check(None, action, self.platform.key_arn(topic_key), context, doing=doing)
        sns.publish(TopicArn=topic_arn, Message=message)

    def pull_image(self, image: str, doing: str) -> None:
        """What pulling the container image asks of the role (ECR: login, then layers)."""
        registry, _, path = image.partition("/")
        account, _, rest = registry.partition(".dkr.ecr.")
        region = rest.split(".", 1)[0]
        repository = path.split(":", 1)[0].split("@", 1)[0]
        self.check(None, "ecr:GetAuthorizationToken", "*", doing=doing)
        arn = f"arn:aws:ecr:{region}:{account}:repository/{repository}"
        for action in ("ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"):
            self.check(None, action, arn, doing=doing)

    def log_stream(self, group: str, stream: str, doing: str) -> LogStream:
        region, account = self.account.region, ACCOUNT
        group_arn = f"arn:aws:logs:{region}:{account}:log-group:{group}"
        logs = self.account.client("logs")
        if not self.platform.log_group_exists(group):
            self.check(None, "logs:CreateLogGroup", group_arn, doing=doing)
            try:
                logs.create_log_group(logGroupName=group)
            except logs.exceptions.ResourceAlreadyExistsException:
                pass
        stream_arn = f"{group_arn}:log-stream:{stream}"
        self.check(None, "logs:CreateLogStream", stream_arn, doing=doing)
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        return LogStream(self, logs, group, stream, stream_arn)


@dataclass
class LogStream:
    session: RoleSession
    logs: Any
    group: str
    name: str
    arn: str

    def put(self, messages: list[str]) -> None:
        # CloudWatch refuses an empty message (a blank line of a traceback); the platform's log
        # agent drops them, so the emulator does too.
        messages = [m for m in messages if m]
        if not messages:
            return
        self.session.check(None, "logs:PutLogEvents", self.arn, doing=f"writing {self.name}")
        now = int(time.time() * 1000)
        self.logs.put_log_events(
            logGroupName=self.group,
            logStreamName=self.name,
            logEvents=[{"timestamp": now, "message": m} for m in messages],
        )


# --------------------------------------------------------------------------------------------
# A training job


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def host_command(request: dict[str, Any], hosts: list[str], host: str) -> tuple[list[str], dict[str, str]]:
    """argv and env of one host, from the CreateTrainingJob request alone (what the container has):
    the request read back as the toolkit reads it (``contract.spec_from_request``), then the
    toolkit's env and argv and the PyTorch container's env (``container.host_launch``, the one
    function local runs use too) on top of the image's own env, then the request's Environment."""
    from aiops.training import container, contract

    from aiops.run_folder import ContainerPaths

    resources = request["ResourceConfig"]
    spec = contract.spec_from_request(
        request["TrainingJobName"],
        request.get("HyperParameters", {}),
        [c["ChannelName"] for c in request.get("InputDataConfig", [])],
        instance_type=resources["InstanceType"],
        instance_count=int(resources["InstanceCount"]),
        region=request["_region"],
    ).for_host(host)
    if list(spec.hosts) != hosts:
        raise RuntimeError(f"the contract's hosts {list(spec.hosts)} are not the platform's {hosts}")
    if spec.effective_distribution == contract.DISTRIBUTION_MPI:
        raise NotImplementedError("the platform emulator does not run mpirun jobs (distribution mpi)")
    image_env = {  # what the PyTorch DLC image's own ENV lines give every process
        "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TRAINING_JOB_ARN": (
            f"arn:aws:sagemaker:{spec.region}:{ACCOUNT}:training-job/{request['TrainingJobName']}"
        ),
    }
    launch = container.host_launch(
        spec,
        ContainerPaths(Path("/opt/ml")),
        container.HostFacts(num_gpus=0, num_cpus=os.cpu_count() or 1),
        python=sys.executable,
        base_env=image_env,
    )
    env = dict(launch.env)
    env.update(request.get("Environment") or {})
    return list(launch.argv), env


def _tar(folder: Path) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return data.getvalue()


def pool_key(request: dict[str, Any]) -> tuple[Any, ...]:
    """What a warm pool and a later job must share, as SageMaker matches them."""
    resources = request["ResourceConfig"]
    return (
        resources["InstanceType"],
        int(resources["InstanceCount"]),
        request["RoleArn"],
        json.dumps(request.get("VpcConfig") or {}, sort_keys=True),
        int(resources.get("VolumeSizeInGB", 0)),
        resources.get("VolumeKmsKeyId"),
    )


@dataclass
class WarmPool:
    """The instances a job with KeepAlivePeriodInSeconds leaves behind."""

    job: str
    key: tuple[Any, ...]
    keep_alive: float
    since: float  # when the job ended
    status: str = "Available"
    reused_by: str | None = None
    until: float | None = None  # reused or terminated then

    def refresh(self, now: float) -> None:
        if self.status == "Available" and now - self.since > self.keep_alive:
            self.status, self.until = "Terminated", self.since + self.keep_alive

    def describe(self, now: float) -> dict[str, Any]:
        self.refresh(now)
        out: dict[str, Any] = {
            "Status": self.status,
            "ResourceRetainedBillableTimeInSeconds": int((self.until or now) - self.since),
        }
        if self.reused_by:
            out["ReusedByJob"] = self.reused_by
        return out


@dataclass
class Host:
    name: str
    dir: Path
    proc: subprocess.Popen | None = None
    stream: LogStream | None = None
    synced: dict[str, tuple[int, int]] = field(default_factory=dict)


class TrainingJob:
    """One CreateTrainingJob, run as SageMaker would run it (see the module docstring)."""

    def __init__(
        self,
        platform: Platform,
        request: dict[str, Any],
        interruptions: int,
        *,
        pool: WarmPool | None = None,
        capacity: str | None = None,
    ) -> None:
        self.platform = platform
        self.request = request
        self.reused_pool = pool  # the warm pool this job runs on (no provisioning phase)
        self.capacity = capacity  # "on-demand" | "spot": no capacity for its type, it fails at start
        self.keep_alive = float(request["ResourceConfig"].get("KeepAlivePeriodInSeconds") or 0)
        self.pool: WarmPool | None = None  # the pool it leaves when it ends
        self.provisioned = False
        self.name = request["TrainingJobName"]
        self.status = "InProgress"
        self.secondary = "Starting"
        self.failure_reason: str | None = None
        self.transitions: list[dict[str, Any]] = []
        self.started = time.time()
        self.ended: float | None = None
        self.billable = 0.0
        self.model_artifact: str | None = None
        self.final_metrics: dict[str, float] = {}
        self.interruptions_left = interruptions if request.get("EnableManagedSpotTraining") else 0
        self.interrupted = 0
        self.attempts = 0
        self.stop_requested = threading.Event()
        self.done = threading.Event()
        self.hosts: list[Host] = []
        self.session: RoleSession | None = None
        self.workdir = platform.workdir / "jobs" / self.name
        self.log_names: set[str] = set()
        self.lines: list[tuple[str, str]] = []  # (host, line), every attempt
        if pool is None:
            self._set("Starting", LAUNCHING)
        self._set("Starting", PREPARING)
        self.thread = threading.Thread(target=self._run, name=f"job-{self.name}", daemon=True)
        self.thread.start()

    # -- status

    def _set(self, secondary: str, message: str) -> None:
        now = time.time()
        if self.transitions:
            self.transitions[-1]["EndTime"] = now
        self.transitions.append({"Status": secondary, "StartTime": now, "StatusMessage": message})
        self.secondary = secondary

    def describe(self, described: dict[str, Any]) -> dict[str, Any]:
        out = dict(described)
        out.update(
            TrainingJobStatus=self.status,
            SecondaryStatus=self.secondary,
            SecondaryStatusTransitions=self.transitions,
            TrainingStartTime=self.started,
        )
        if self.failure_reason:
            out["FailureReason"] = self.failure_reason
        if self.request.get("RemoteDebugConfig"):  # moto drops it
            out["RemoteDebugConfig"] = self.request["RemoteDebugConfig"]
        if self.keep_alive and self.provisioned:
            out["WarmPoolStatus"] = (
                self.pool.describe(time.time()) if self.pool is not None else {"Status": "InUse"}
            )
        if self.ended is not None:
            out["TrainingEndTime"] = self.ended
            out["TrainingTimeInSeconds"] = max(1, int(round(self.ended - self.started)))
            out["BillableTimeInSeconds"] = max(1, int(round(self.billable)))
        if self.model_artifact:
            out["ModelArtifacts"] = {"S3ModelArtifacts": self.model_artifact}
        else:
            out.pop("ModelArtifacts", None)
        if self.final_metrics:
            out["FinalMetricDataList"] = [
                {"MetricName": k, "Value": v, "Timestamp": self.ended or time.time()}
                for k, v in sorted(self.final_metrics.items())
            ]
        return out

    # -- the run

    def _run(self) -> None:
        try:
            if self.capacity is not None:  # no instance was ever started: nothing runs, no pool
                if self.capacity == "spot":
                    self._set(
                        "Starting",
                        "Insufficient capacity error from EC2 while launching instances, retrying!",
                    )
                    reason = SPOT_CAPACITY.format(type=self.request["ResourceConfig"]["InstanceType"])
                else:
                    reason = ON_DEMAND_CAPACITY
                self._fail(reason)
                return
            self.provisioned = True
            self.platform.job_started(self.name)
            try:
                self._run_attempts()
            finally:
                self.platform.job_ended(self.name)
        except AccessDenied as err:
            self._fail(f"ClientError: {err}")
        except Exception as err:  # the emulator's own failure must show, not hang the CLI
            self._fail(f"InternalServerError: the platform emulator failed: {type(err).__name__}: {err}")
        finally:
            for host in self.hosts:
                if host.proc is not None:
                    from sandbox import kill_tree

                    kill_tree(host.proc)
            if self.keep_alive and self.provisioned:  # the instances stay for a matching job
                self.pool = self.platform.keep_pool(self)
            self.done.set()

    def _fail(self, reason: str) -> None:
        self.failure_reason = reason[:1024]
        self.ended = self.ended or time.time()
        self.status = "Failed"
        self._set("Failed", reason[:256])

    def _run_attempts(self) -> None:
        from sandbox import JobNetwork

        request = self.request
        self.session = RoleSession(self.platform, request["RoleArn"], "SageMaker", f"starting {self.name}")
        session = self.session
        self.calls = session.calls
        session.pull_image(request["AlgorithmSpecification"]["TrainingImage"], "pulling the training image")
        resources = request["ResourceConfig"]
        if resources.get("VolumeKmsKeyId"):
            session.check(
                None,
                "kms:CreateGrant",
                self.platform.key_arn(resources["VolumeKmsKeyId"]),
                {"kms:GrantIsForAWSResource": "true"},
                "encrypting the instances' storage volumes",
            )
        count = int(resources["InstanceCount"])
        host_names = [f"algo-{i + 1}" for i in range(count)]
        enis = self.platform.attach_network(session, request.get("VpcConfig"), count, self.name)
        try:
            while True:
                self.attempts += 1
                attempt_dir = self.workdir / f"attempt-{self.attempts}"
                attempt_dir.mkdir(parents=True, exist_ok=True)
                began = time.time()
                outcome = self._attempt(JobNetwork, attempt_dir, host_names)
                self.billable += time.time() - began
                if outcome == "interrupted":
                    self._set("Interrupted", "The job was interrupted (spot capacity reclaimed)")
                    self._set("Restarting", "Restarting the job from its checkpoints")
                    continue
                break
        finally:
            self.platform.detach_network(enis)
        if outcome == "failed":
            return
        self._set("Uploading", "Uploading generated training model")
        output = request["OutputDataConfig"]
        base = f"{output['S3OutputPath'].rstrip('/')}/{self.name}/output"
        master = self.hosts[0].dir  # SageMaker uploads the first host's /opt/ml/model and output/data
        kms = output.get("KmsKeyId")
        session.put(f"{base}/model.tar.gz", _tar(master / "model"), "uploading model.tar.gz", kms)
        session.put(f"{base}/output.tar.gz", _tar(master / "output" / "data"), "uploading output.tar.gz", kms)
        self.model_artifact = f"{base}/model.tar.gz"
        self.ended = time.time()
        if outcome == "stopped":
            self.status = "Stopped"
            self._set("Stopped", "The job was stopped")
        else:
            self.status = "Completed"
            self._set("Completed", "Training job completed")

    def _prepare_host(self, name: str, folder: Path) -> Host:
        from aiops.training import contract

        from aiops.run_folder import ContainerPaths

        request, session = self.request, self.session
        host = Host(name, folder)
        paths = ContainerPaths(folder)
        for path in paths.all_dirs():
            path.mkdir(parents=True, exist_ok=True)
        (paths.output / "failure").unlink(missing_ok=True)
        hps = request.get("HyperParameters", {})
        submit = _decode(hps.get(contract.SUBMIT_DIR_PARAM, '""'))
        bundle = folder / "sourcedir.tar.gz"
        session.get(submit, bundle, f"downloading the code for {name}")
        with tarfile.open(bundle) as tar:
            tar.extractall(paths.code, filter="data")
        bundle.unlink()
        for channel in request.get("InputDataConfig", []):
            source = channel["DataSource"]["S3DataSource"]
            session.download_prefix(
                source["S3Uri"],
                paths.channel(channel["ChannelName"]),
                f"downloading channel {channel['ChannelName']} for {name}",
            )
        checkpoint = request.get("CheckpointConfig")
        if checkpoint:
            local = Path(checkpoint.get("LocalPath") or "/opt/ml/checkpoints")
            target = (
                folder / local.relative_to("/opt/ml")
                if local.is_relative_to("/opt/ml")
                else paths.checkpoints
            )
            session.download_prefix(checkpoint["S3Uri"], target, f"restoring checkpoints for {name}")
            for path in (p for p in target.rglob("*") if p.is_file()):  # restored: already in S3
                stat = path.stat()
                host.synced[path.relative_to(target).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        host_list = [h for h in self._host_names]
        resource = {
            "current_host": name,
            "current_instance_type": request["ResourceConfig"]["InstanceType"],
            "current_group_name": "homogeneousCluster",
            "hosts": host_list,
            "instance_groups": [
                {
                    "instance_group_name": "homogeneousCluster",
                    "hosts": host_list,
                    "instance_type": request["ResourceConfig"]["InstanceType"],
                }
            ],
            "network_interface_name": "eth0",
        }
        data_config = {
            c["ChannelName"]: {
                "TrainingInputMode": c.get("InputMode", "File"),
                "S3DistributionType": c["DataSource"]["S3DataSource"].get(
                    "S3DataDistributionType", "FullyReplicated"
                ),
                "RecordWrapperType": "None",
            }
            for c in request.get("InputDataConfig", [])
        }
        (paths.input_config / "hyperparameters.json").write_text(json.dumps(hps))
        (paths.input_config / "resourceconfig.json").write_text(json.dumps(resource))
        (paths.input_config / "inputdataconfig.json").write_text(json.dumps(data_config))
        return host

    def _stream_name(self, host: str) -> str:
        second = int(time.time())
        while f"{self.name}/{host}-{second}" in self.log_names:
            second += 1
        name = f"{self.name}/{host}-{second}"
        self.log_names.add(name)
        return name

    def _checkpoint_dir(self, host: Host) -> Path:
        local = Path((self.request.get("CheckpointConfig") or {}).get("LocalPath") or "/opt/ml/checkpoints")
        return host.dir / local.relative_to("/opt/ml")

    def _checkpoint_files(self, host: Host) -> list[tuple[str, Path]]:
        folder = self._checkpoint_dir(host)
        if not folder.is_dir():
            return []
        return [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file()]

    def _new_checkpoint(self) -> bool:
        """A checkpoint file written in this attempt (not restored, not a temporary file)."""
        for host in self.hosts:
            for rel, path in self._checkpoint_files(host):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                if ".tmp" not in rel and host.synced.get(rel) != (stat.st_size, stat.st_mtime_ns):
                    return True
        return False

    def _sync_checkpoints(self) -> None:
        """Upload new or changed checkpoint files of every host (SageMaker syncs the folder)."""
        checkpoint = self.request.get("CheckpointConfig")
        if not checkpoint:
            return
        prefix = checkpoint["S3Uri"].rstrip("/")
        for host in self.hosts:
            for rel, path in self._checkpoint_files(host):
                try:
                    stat = path.stat()
                    if host.synced.get(rel) == (stat.st_size, stat.st_mtime_ns):
                        continue
                    data = path.read_bytes()
                except FileNotFoundError:  # a temporary file renamed away meanwhile
                    continue
                self.session.put(f"{prefix}/{rel}", data, f"syncing checkpoint {rel} of {host.name}")
                host.synced[rel] = (stat.st_size, stat.st_mtime_ns)

    def _attempt(self, network_cls: Any, attempt_dir: Path, host_names: list[str]) -> str:
        from sandbox import kill_tree, signal_tree

        self._host_names = host_names
        self._set("Downloading", "Downloading input data")
        self.hosts = [self._prepare_host(h, attempt_dir / h) for h in host_names]
        self._set("Training", "Training image download completed. Training in progress.")
        network = network_cls(host_names, attempt_dir)
        reach_aws = not self.request.get("EnableNetworkIsolation")
        if reach_aws:
            network.reach_aws(self.platform.socket_path)
        lines: queue.Queue = queue.Queue()
        metrics: dict[str, list[tuple[str, float]]] = {}
        definitions = [
            (d["Name"], re.compile(d["Regex"]))
            for d in self.request["AlgorithmSpecification"].get("MetricDefinitions", [])
        ]
        interrupted = stopped = False
        failed: str | None = None
        try:
            for host in self.hosts:
                argv, env = host_command(self.request, host_names, host.name)
                if reach_aws:
                    env.update(self._aws_environment())
                host.stream = self.session.log_stream(
                    TRAINING_LOG_GROUP,
                    self._stream_name(host.name),
                    f"creating the log stream of {host.name}",
                )
                if (self.request.get("RemoteDebugConfig") or {}).get("EnableRemoteDebug"):
                    self._start_ssm_agent(host)
                host.proc = network.spawn(host.name, host.dir, argv, env)
                threading.Thread(target=_pump, args=(host, lines), daemon=True).start()
            deadline = time.monotonic() + min(
                JOB_TIME_CAP, self.request["StoppingCondition"]["MaxRuntimeInSeconds"]
            )
            open_hosts = len(self.hosts)
            while open_hosts:
                remaining = deadline - time.monotonic()
                try:
                    host, line = lines.get(timeout=max(0.1, remaining))
                except queue.Empty:
                    failed = "MaxRuntimeExceeded: the job ran past its MaxRuntimeInSeconds"
                    break
                if line is None:  # that host's output ended: it exited
                    open_hosts -= 1
                    code = host.proc.wait()
                    if code != 0 and not (interrupted or stopped) and failed is None:
                        failed = self._failure(host, code)
                        for other in self.hosts:  # one host failed: the platform stops the others
                            signal_tree(other.proc, signal.SIGTERM)
                    continue
                if self.interruptions_left and not interrupted and self._new_checkpoint():
                    # spot capacity reclaimed as soon as the job has a checkpoint of its own: every
                    # instance gets SIGTERM at once (before any upload, so the job is still mid-run)
                    self.interruptions_left -= 1
                    self.interrupted += 1
                    interrupted = True
                    for other in self.hosts:
                        signal_tree(other.proc, signal.SIGTERM)
                self.lines.append((host.name, line))
                host.stream.put([line])
                for metric, regex in definitions:
                    match = regex.search(line)
                    if match:
                        metrics.setdefault(metric, []).append((host.name, float(match.group(1))))
                self._sync_checkpoints()
                if self.stop_requested.is_set() and not stopped:
                    stopped = True
                    self._set("Stopping", "Stopping the training job")
                    for other in self.hosts:
                        signal_tree(other.proc, signal.SIGTERM)
            grace = time.monotonic() + STOP_GRACE
            for host in self.hosts:
                try:
                    host.proc.wait(timeout=max(0.1, grace - time.monotonic()))
                except subprocess.TimeoutExpired:
                    kill_tree(host.proc)
            self._sync_checkpoints()
        finally:
            for host in self.hosts:
                kill_tree(host.proc) if host.proc is not None else None
            network.close()
        self._publish_metrics(metrics)
        if failed:
            self._fail(failed)
            return "failed"
        if interrupted:
            return "interrupted"
        return "stopped" if stopped else "completed"

    def _aws_environment(self) -> dict[str, str]:
        """How a script in the job reaches AWS as the role (see the module docstring)."""
        from sandbox import AWS_PORT

        url = f"http://127.0.0.1:{AWS_PORT}"
        return {
            "AWS_ENDPOINT_URL": url,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{url}{CREDENTIALS_PATH}{self.name}",
        }

    def credentials(self) -> dict[str, str]:
        """The job's role session, in the container credentials endpoint's format."""
        assert self.session is not None
        creds = self.session.creds
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        return {
            "AccessKeyId": creds.access_key,
            "SecretAccessKey": creds.secret_key,
            "Token": creds.token or "",
            "Expiration": expires,
        }

    def _start_ssm_agent(self, host: Host) -> None:
        """What the SSM agent a remote-debug container runs asks of the role: its control and data
        channels. Denied, the agent cannot register (the job itself runs on), as on SageMaker."""
        try:
            for action in SSM_AGENT_ACTIONS:
                self.session.check(
                    None, action, "*", doing=f"the SSM agent of {host.name} (remote debugging)"
                )
        except AccessDenied as err:
            host.stream.put([f"amazon-ssm-agent: {err}"])

    def _failure(self, host: Host, code: int) -> str:
        failure = host.dir / "output" / "failure"
        detail = failure.read_text(errors="replace").strip() if failure.is_file() else ""
        if not detail:
            tail = [line for name, line in self.lines if name == host.name][-3:]
            detail = " | ".join(tail)
        return f"AlgorithmError: ExecuteUserScriptError: ExitCode {code} on {host.name}: {detail}"

    def _publish_metrics(self, metrics: dict[str, list[tuple[str, float]]]) -> None:
        """SageMaker matches MetricDefinitions in the log and publishes them, per host."""
        if not metrics:
            return
        self.session.check(
            None,
            "cloudwatch:PutMetricData",
            "*",
            {"cloudwatch:namespace": TRAINING_LOG_GROUP},
            "publishing the job's metrics",
        )
        data = []
        for metric, values in metrics.items():
            for host, value in values:
                data.append(
                    {
                        "MetricName": metric,
                        "Value": value,
                        "Dimensions": [{"Name": "Host", "Value": f"{self.name}/{host}"}],
                    }
                )
            self.final_metrics[metric] = values[-1][1]
        cloudwatch = self.platform.account.client("cloudwatch")
        for i in range(0, len(data), 500):
            cloudwatch.put_metric_data(Namespace=TRAINING_LOG_GROUP, MetricData=data[i : i + 500])


def _pump(host: Host, lines: queue.Queue) -> None:
    for raw in iter(host.proc.stdout.readline, b""):
        lines.put((host, raw.decode(errors="replace").rstrip("\n")))
    lines.put((host, None))


# --------------------------------------------------------------------------------------------
# Hyperparameter tuning jobs (moto keeps their records only)


class TuningJob:
    """One CreateHyperParameterTuningJob, run as SageMaker runs it: every trial a training job of
    this platform (``TrainingJob``, made from the TrainingJobDefinition with the trial's values
    added to its StaticHyperParameters), at most MaxParallelTrainingJobs at a time, named
    ``<tuning job>-NNN-<8 hex>``; the best trial the completed one with the best final objective.
    Values are drawn at random within the ranges (seeded by the job's name: the same trials again)."""

    def __init__(self, platform: Platform, request: dict[str, Any]) -> None:
        import random

        self.platform = platform
        self.request = request
        self.name = request["HyperParameterTuningJobName"]
        self.config = request["HyperParameterTuningJobConfig"]
        self.status = "InProgress"
        self.trials: list[tuple[dict[str, Any], dict[str, str]]] = []  # (trial request, tuned values)
        self.created = time.time()
        self.rng = random.Random(self.name)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"tuning-{self.name}", daemon=True)
        self.thread.start()

    def _values(self) -> dict[str, str]:
        import math

        ranges = self.config.get("ParameterRanges", {})
        values: dict[str, str] = {}
        for r in ranges.get("CategoricalParameterRanges", []):
            values[r["Name"]] = self.rng.choice(r["Values"])
        for kind in ("ContinuousParameterRanges", "IntegerParameterRanges"):
            for r in ranges.get(kind, []):
                low, high = float(r["MinValue"]), float(r["MaxValue"])
                if r.get("ScalingType") == "Logarithmic":
                    value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
                else:
                    value = self.rng.uniform(low, high)
                values[r["Name"]] = str(round(value)) if kind.startswith("Integer") else repr(value)
        return values

    def _trial_request(self, number: int, values: dict[str, str]) -> dict[str, Any]:
        definition = self.request["TrainingJobDefinition"]
        name = f"{self.name}-{number:03d}-{uuid.uuid4().hex[:8]}"
        trial = {k: v for k, v in definition.items() if k != "StaticHyperParameters"}
        algorithm = dict(definition["AlgorithmSpecification"])
        trial.update(
            TrainingJobName=name,
            AlgorithmSpecification=algorithm,
            HyperParameters={**definition.get("StaticHyperParameters", {}), **values},
        )
        return trial

    def _run(self) -> None:
        limits = self.config["ResourceLimits"]
        total, parallel = int(limits["MaxNumberOfTrainingJobs"]), int(limits["MaxParallelTrainingJobs"])
        sm = self.platform.account.client("sagemaker")
        try:
            for number in range(1, total + 1):
                while (
                    sum(not self.platform.jobs[t["TrainingJobName"]].done.is_set() for t, _ in self.trials)
                    >= parallel
                ):
                    time.sleep(0.1)
                values = self._values()
                trial = self._trial_request(number, values)
                sm.create_training_job(**trial)  # moto's record, which DescribeTrainingJob reads
                self.platform.on_create_training_job(trial)
                self.trials.append((trial, values))
            for trial, _ in self.trials:
                self.platform.jobs[trial["TrainingJobName"]].done.wait(JOB_TIME_CAP)
            self.status = "Completed"
        except Exception as err:  # the emulator's own failure must show, not hang the CLI
            self.status = "Failed"
            self.failure_reason = f"the platform emulator failed: {type(err).__name__}: {err}"
        finally:
            self.done.set()

    def _objective(self, job: TrainingJob) -> float | None:
        return job.final_metrics.get(self.config["HyperParameterTuningJobObjective"]["MetricName"])

    def summaries(self) -> list[dict[str, Any]]:
        out = []
        for trial, values in list(self.trials):
            job = self.platform.jobs[trial["TrainingJobName"]]
            summary: dict[str, Any] = {
                "TrainingJobName": job.name,
                "TrainingJobArn": (
                    f"arn:aws:sagemaker:{self.platform.account.region}:{ACCOUNT}:training-job/{job.name}"
                ),
                "TuningJobName": self.name,
                "CreationTime": job.started,
                "TrainingJobStatus": job.status,
                "TunedHyperParameters": values,
            }
            if job.ended is not None:
                summary.update(TrainingStartTime=job.started, TrainingEndTime=job.ended)
            value = self._objective(job) if job.status == "Completed" else None
            if value is not None:
                summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                    "MetricName": self.config["HyperParameterTuningJobObjective"]["MetricName"],
                    "Value": value,
                }
                summary["ObjectiveStatus"] = "Succeeded"
            elif job.status in ("Failed", "Stopped"):
                summary["ObjectiveStatus"] = "Failed"
            else:
                summary["ObjectiveStatus"] = "Pending"
            if job.failure_reason:
                summary["FailureReason"] = job.failure_reason
            out.append(summary)
        return out

    def describe(self, described: dict[str, Any]) -> dict[str, Any]:
        out = dict(described)
        summaries = self.summaries()
        counts = {
            status: sum(s["TrainingJobStatus"] == status for s in summaries)
            for status in ("Completed", "InProgress", "Stopped")
        }
        failed = sum(s["TrainingJobStatus"] == "Failed" for s in summaries)
        out.update(
            HyperParameterTuningJobStatus=self.status,
            TrainingJobStatusCounters={**counts, "RetryableError": 0, "NonRetryableError": failed},
            ObjectiveStatusCounters={
                status: sum(s["ObjectiveStatus"] == status for s in summaries)
                for status in ("Succeeded", "Pending", "Failed")
            },
        )
        goal = self.config["HyperParameterTuningJobObjective"]["Type"]
        scored = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
        if scored:
            pick = max if goal == "Maximize" else min
            out["BestTrainingJob"] = pick(
                scored, key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
            )
        if self.status == "Failed":
            out["FailureReason"] = getattr(self, "failure_reason", "")
        return out


# --------------------------------------------------------------------------------------------
# Endpoints


# The LLM containers' images (aiops.images: the SDK's huggingface-llm and djl-lmi tables), by repository
LLM_IMAGE_REPOSITORIES = {"huggingface-pytorch-tgi-inference": "tgi", "djl-inference": "lmi"}
MODEL_DIR = "/opt/ml/model"  # where SageMaker puts the model data in the container


def llm_container(image: str) -> str | None:
    """'tgi' or 'lmi' when the image is one of the LLM containers, else None (the handler contract)."""
    repository = image.partition("/")[2].split("@", 1)[0].split(":", 1)[0]
    return LLM_IMAGE_REPOSITORIES.get(repository)


def llm_server_args(container: str, env: dict[str, str], gpus: int | None) -> list[str]:
    """What the LLM container's entry does with its environment, as `aiops serve` arguments.

    TGI's sagemaker-entrypoint.sh: ``HF_MODEL_ID`` must be set (else "HF_MODEL_ID must be set",
    exit 1) and becomes the launcher's ``MODEL_ID``; ``SM_NUM_GPUS`` becomes ``NUM_SHARD``; the
    launcher reads ``MAX_INPUT_TOKENS``, ``MAX_TOTAL_TOKENS``, ``MAX_BATCH_SIZE`` itself, as `aiops
    serve` does. LMI reads ``HF_MODEL_ID``, ``TENSOR_PARALLEL_DEGREE`` and its ``OPTION_*`` variables
    (``OPTION_MAX_MODEL_LEN``, ``OPTION_MAX_ROLLING_BATCH_SIZE``, read by `aiops serve` too). The model
    served is the model data SageMaker put in /opt/ml/model: the emulator serves nothing else.

    ``gpus``: the GPUs the container sees (the instance type's, or an inference component's
    ``NumberOfAcceleratorDevicesRequired``); both containers refuse to shard over more (TGI's launcher,
    LMI's engine), so a degree above them fails the start."""
    model_id = env.get("HF_MODEL_ID")
    if not model_id:
        raise RuntimeError(f"the {container} container exited 1: HF_MODEL_ID must be set")
    if model_id.rstrip("/") != MODEL_DIR:
        raise RuntimeError(
            f"the {container} container's HF_MODEL_ID={model_id}: the emulator serves the model data "
            f"in {MODEL_DIR} only (no hub downloads)"
        )
    degree = "SM_NUM_GPUS" if container == "tgi" else "TENSOR_PARALLEL_DEGREE"
    shards = env.get(degree)
    if shards is not None and (not shards.isdigit() or int(shards) < 1):
        raise RuntimeError(f"the {container} container refuses {degree}={shards!r}")
    if shards is not None and gpus is not None and int(shards) > gpus:
        raise RuntimeError(
            f"the {container} container exited 1: {degree}={shards} shards over more GPUs than the "
            f"{gpus} it sees"
        )
    return ["--container", container]


def download_model(session: RoleSession, container: dict[str, Any], folder: Path, label: str) -> Path:
    """The model data as SageMaker puts it in /opt/ml/model, read as the role: a ModelDataUrl
    (model.tar.gz, unpacked by the server), or a ModelDataSource S3Prefix with CompressionType None
    (every object under the prefix, copied as it is)."""
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    doing = f"downloading the model of {label}"
    if source is None:
        archive = folder / "model.tar.gz"
        session.get(container["ModelDataUrl"], archive, doing)
        return archive
    if (source.get("S3DataType"), source.get("CompressionType")) != ("S3Prefix", "None"):
        raise RuntimeError(f"the emulator serves an S3Prefix with CompressionType None, not {source}")
    model_dir = folder / "model"
    if session.download_prefix(source["S3Uri"], model_dir, doing) == 0:
        raise RuntimeError(f"ModelDataSource {source['S3Uri']} holds no object")
    return model_dir


def start_model(
    platform: Platform,
    *,
    endpoint: str,
    model: dict[str, Any],
    role_arn: str,
    variant: str,
    kms_key_id: str | None,
    gpus: int | None,
    folder: Path,
    label: str,
) -> tuple[Any, list[str], RoleSession]:
    """One model on the endpoint's instances, as the role: pull the image, attach the VPC, grant
    the volume key, download the model, open the log stream, start `aiops serve` (`--container tgi|lmi`
    for the LLM containers' images, which see ``gpus`` GPUs); wait for /ping."""
    from helpers import launch_server, wait_ready

    container = model["PrimaryContainer"]
    session = RoleSession(platform, role_arn, "SageMaker", f"starting {label}")
    session.pull_image(container["Image"], "pulling the serving image")
    enis = platform.attach_network(session, model.get("VpcConfig"), 1, label)
    if kms_key_id:
        session.check(
            None,
            "kms:CreateGrant",
            platform.key_arn(kms_key_id),
            {"kms:GrantIsForAWSResource": "true"},
            "encrypting the endpoint's storage volume",
        )
    model_data = download_model(session, container, folder, label)
    stream = session.log_stream(
        ENDPOINT_LOG_GROUP + "/" + endpoint,
        f"{variant}/i-{os.urandom(8).hex()}",
        f"creating the log stream of {endpoint}",
    )
    # one model-server worker: the emulated instance is a CPU share, not a GPU machine
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", **(container.get("Environment") or {})}
    llm = llm_container(container["Image"])
    args = llm_server_args(llm, env, gpus) if llm else []
    server = launch_server(model_data, *args, home=folder / "home", cwd=folder, env=env)
    try:
        wait_ready(server, timeout=120)
    except AssertionError as err:
        stream.put(server.log().splitlines()[-50:])
        platform.detach_network(enis)
        raise RuntimeError(f"the model server did not start: {str(err)[-400:]}") from None
    stream.put(server.log().splitlines()[-50:] or ["started"])
    return server, enis, session


def _put_in_service(host: Any, server: Any, enis: list) -> None:
    """An endpoint's or inference component's new model server takes over: the old one (and its
    network interfaces) goes, as the platform replaces instances on an update."""
    old, host.server = host.server, server
    old_enis, host.enis = host.enis, enis
    host.platform.detach_network(old_enis)
    host.status, host.failure_reason = "InService", None
    if old is not None:
        old.stop()


def _failure_reason(err: BaseException) -> str:
    """The FailureReason a failed start shows (an IAM refusal reads as the service's ClientError)."""
    return f"ClientError: {err}" if isinstance(err, AccessDenied) else f"{type(err).__name__}: {err}"


class EndpointHost:
    """An endpoint: its variant's model served by `aiops serve` from the model.tar.gz its role can
    read; or, when its configuration names no model, the instances its inference components run on.

    With an ``AsyncInferenceConfig``, requests are queued (``invoke_async``) and a worker thread
    does what the service does for each: reads the input from S3 as the role, runs it through the
    served model, writes the output (or the failure) under the configuration's S3 paths with its
    KMS key, and publishes to the success (or error) topic.
    """

    def __init__(self, platform: Platform, name: str) -> None:
        self.platform = platform
        self.name = name
        self.status = "Creating"
        self.failure_reason: str | None = None
        self.server: Any = None
        self.variant = ""
        self.config_name = ""
        self.config: dict[str, Any] = {}
        self.model: dict[str, Any] = {}
        self.session: RoleSession | None = None
        self.calls: list[Call] = []
        self.enis: list[str] = []
        self.ready = threading.Event()
        self.async_jobs: queue.Queue = queue.Queue()
        self.async_done: list[dict[str, Any]] = []  # each request's outcome, in order
        self._async_worker: threading.Thread | None = None

    @property
    def hosts_components(self) -> bool:
        return bool(self.config) and not self.config["ProductionVariants"][0].get("ModelName")

    @property
    def async_config(self) -> dict[str, Any]:
        return self.config.get("AsyncInferenceConfig") or {}

    def deploy(self, config_name: str) -> None:
        """Start the config's model; switch to it once it answers /ping (blue/green)."""
        self.status = "Creating" if self.server is None and not self.config else "Updating"
        self.ready.clear()
        threading.Thread(target=self._deploy, args=(config_name,), daemon=True).start()

    def _deploy(self, config_name: str) -> None:
        try:
            sm = self.platform.account.client("sagemaker")
            config = {
                **sm.describe_endpoint_config(EndpointConfigName=config_name),
                **self.platform.endpoint_configs.get(config_name, {}),
            }
            variant = config["ProductionVariants"][0]
            server, enis, model = None, [], {}
            if variant.get("ModelName"):
                model = {
                    **sm.describe_model(ModelName=variant["ModelName"]),
                    **self.platform.models.get(variant["ModelName"], {}),
                }
                folder = self.platform.workdir / "endpoints" / self.name / config_name
                server, enis, self.session = start_model(
                    self.platform,
                    endpoint=self.name,
                    model=model,
                    role_arn=model["ExecutionRoleArn"],
                    variant=variant["VariantName"],
                    kms_key_id=config.get("KmsKeyId"),
                    gpus=gpu_count(variant.get("InstanceType", "")),
                    folder=folder,
                    label=f"endpoint {self.name}",
                )
                self.calls = self.session.calls
            # else: inference components; the instances are managed (ManagedInstanceScaling) and each
            # component brings its model (ComponentHost)
            self.variant, self.config_name, self.config, self.model = (
                variant["VariantName"],
                config_name,
                config,
                model,
            )
            _put_in_service(self, server, enis)
        except Exception as err:
            self.status, self.failure_reason = "Failed", _failure_reason(err)
        finally:
            self.ready.set()

    # -- asynchronous inference (the platform's queue and its worker)

    def invoke_async(
        self, input_location: str, headers: dict[str, str], inference_id: str | None
    ) -> dict[str, str]:
        """Queue one request; the locations InvokeEndpointAsync answers with."""
        output = self.async_config["OutputConfig"]
        inference_id = inference_id or str(uuid.uuid4())
        job = {
            "InferenceId": inference_id,
            "InputLocation": input_location,
            "headers": headers,
            "OutputLocation": f"{output['S3OutputPath'].rstrip('/')}/{inference_id}.out",
            "FailureLocation": f"{output.get('S3FailurePath', output['S3OutputPath']).rstrip('/')}/"
            f"{inference_id}-error.out",
        }
        self.async_jobs.put(job)
        if self._async_worker is None:
            self._async_worker = threading.Thread(target=self._run_async, daemon=True)
            self._async_worker.start()
        return {k: job[k] for k in ("InferenceId", "OutputLocation", "FailureLocation")}

    def _run_async(self) -> None:
        while True:
            job = self.async_jobs.get()
            if job is None:
                return
            try:
                job["status"] = self._serve_async(job)
            except Exception as err:  # the platform keeps serving; the outcome says why
                job["status"], job["error"] = "PlatformError", f"{type(err).__name__}: {err}"
            self.async_done.append(job)

    def _serve_async(self, job: dict[str, Any]) -> str:
        """What SageMaker does for one queued request, acting as the endpoint's role."""
        session, doing = self.session, f"async inference {job['InferenceId']} of {self.name}"
        output = self.async_config["OutputConfig"]
        folder = self.platform.workdir / "endpoints" / self.name / "async"
        session.get(job["InputLocation"], folder / job["InferenceId"], f"reading the request of {doing}")
        body = (folder / job["InferenceId"]).read_bytes()
        response = self.server.request("POST", "/invocations", body, job["headers"], timeout=60)
        notify = output.get("NotificationConfig") or {}
        event = {
            "awsRegion": self.platform.account.region,
            "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "inferenceId": job["InferenceId"],
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
            "requestParameters": {
                "endpointName": self.name,
                "inputLocation": job["InputLocation"],
                "contentType": job["headers"].get("Content-Type"),
            },
        }
        if response.status == 200:
            session.put(
                job["OutputLocation"],
                response.body,
                f"writing the result of {doing}",
                kms_key=output.get("KmsKeyId"),
                content_type=response.headers.get("content-type"),
            )
            event.update(
                invocationStatus="Completed",
                responseParameters={
                    "outputLocation": job["OutputLocation"],
                    "contentType": response.headers.get("content-type"),
                },
            )
            topic, status = notify.get("SuccessTopic"), "Completed"
        else:  # the container's own answer, as the service writes it to the failure path
            message = (
                f"Received client error ({response.status}) from primary with message "
                f"{response.body.decode(errors='replace')}"
            )
            session.put(
                job["FailureLocation"],
                message.encode(),
                f"writing the failure of {doing}",
                kms_key=output.get("KmsKeyId"),
                content_type="text/plain",
            )
            event.update(
                invocationStatus="Failed",
                failureReason=message[:1000],
                responseParameters={"failureLocation": job["FailureLocation"]},
            )
            topic, status = notify.get("ErrorTopic"), "Failed"
        if topic:
            session.publish(topic, json.dumps(event), f"notifying {topic.rsplit(':', 1)[-1]} of {doing}")
        return status

    def describe(self, described: dict[str, Any]) -> dict[str, Any]:
        out = dict(described)
        out["EndpointStatus"] = self.status
        if self.config_name:
            out["EndpointConfigName"] = self.config_name
        if self.failure_reason:
            out["FailureReason"] = self.failure_reason
        return out

    def stop(self) -> None:
        self.async_jobs.put(None)
        if self.server is not None:
            self.server.stop()


class ComponentHost:
    """An inference component (moto has none): its model served on its endpoint's instances, as
    the role of the endpoint's configuration (the one an endpoint of components names)."""

    def __init__(self, platform: Platform, request: dict[str, Any]) -> None:
        self.platform = platform
        self.request = dict(request)
        self.name = request["InferenceComponentName"]
        self.arn = f"arn:aws:sagemaker:{platform.account.region}:{ACCOUNT}:inference-component/{self.name}"
        self.status = "Creating"
        self.failure_reason: str | None = None
        self.server: Any = None
        self.model: dict[str, Any] = {}
        self.enis: list[str] = []
        self.generation = 0
        self.created = time.time()

    @property
    def endpoint(self) -> str:
        return self.request["EndpointName"]

    def deploy(self) -> None:
        self.status = "Creating" if self.server is None else "Updating"
        self.generation += 1
        threading.Thread(target=self._deploy, args=(self.generation,), daemon=True).start()

    def _deploy(self, generation: int) -> None:
        try:
            host = self.platform.endpoints.get(self.endpoint)
            if (
                host is None
                or not host.ready.wait(180)
                or host.status != "InService"
                or not host.hosts_components
            ):
                raise RuntimeError(
                    f"endpoint {self.endpoint} is not an InService endpoint of inference components"
                )
            spec = self.request["Specification"]
            sm = self.platform.account.client("sagemaker")
            model = {
                **sm.describe_model(ModelName=spec["ModelName"]),
                **self.platform.models.get(spec["ModelName"], {}),
            }
            folder = self.platform.workdir / "components" / self.name / str(generation)
            # a copy sees only the accelerators it asked for (the instance's, when it names none)
            requirements = spec.get("ComputeResourceRequirements") or {}
            gpus = requirements.get("NumberOfAcceleratorDevicesRequired") or gpu_count(
                host.config["ProductionVariants"][0].get("InstanceType", "")
            )
            server, enis, _ = start_model(
                self.platform,
                endpoint=self.endpoint,
                model=model,
                role_arn=host.config["ExecutionRoleArn"],
                variant=self.request["VariantName"],
                kms_key_id=host.config.get("KmsKeyId"),
                gpus=int(gpus) if gpus else None,
                folder=folder,
                label=f"inference component {self.name}",
            )
            self.model = model
            _put_in_service(self, server, enis)
        except Exception as err:
            self.status, self.failure_reason = "Failed", _failure_reason(err)

    def describe(self) -> dict[str, Any]:
        copies = int((self.request.get("RuntimeConfig") or {}).get("CopyCount", 1))
        out = {
            "InferenceComponentName": self.name,
            "InferenceComponentArn": self.arn,
            "EndpointName": self.endpoint,
            "EndpointArn": (
                f"arn:aws:sagemaker:{self.platform.account.region}:{ACCOUNT}:endpoint/{self.endpoint}"
            ),
            "VariantName": self.request["VariantName"],
            "Specification": self.request["Specification"],
            "RuntimeConfig": {"DesiredCopyCount": copies, "CurrentCopyCount": copies if self.server else 0},
            "InferenceComponentStatus": self.status,
            "CreationTime": self.created,
            "LastModifiedTime": time.time(),
        }
        if self.failure_reason:
            out["FailureReason"] = self.failure_reason
        return out

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.platform.detach_network(self.enis)
        self.enis = []


# --------------------------------------------------------------------------------------------
# The platform proxy


class Platform:
    def __init__(self, account: MotoAccount, workdir: Path) -> None:
        self.account = account
        self.workdir = workdir
        self.jobs: dict[str, TrainingJob] = {}
        self.tuning_jobs: dict[str, TuningJob] = {}
        self.endpoints: dict[str, EndpointHost] = {}
        self.models: dict[str, dict[str, Any]] = {}  # CreateModel requests, as sent
        self.endpoint_configs: dict[str, dict[str, Any]] = {}  # what moto drops of CreateEndpointConfig
        self.components: dict[str, ComponentHost] = {}  # inference components (moto has none)
        self.spot_interruptions = 0  # the next spot job is interrupted this many times
        self.capacity_faults: list[list[Any]] = []  # [instance type, kind, times left] (inject_capacity)
        self.refused: list[str] = []  # jobs CreateTrainingJob refused for capacity
        self.pools: list[WarmPool] = []
        self.runs: dict[str, int] = {}  # job -> times its instances started
        self.running: set[str] = set()
        self.peak_running = 0  # the most jobs running at once
        self.calls: list[Call] = []  # every call made for an execution role, in order
        self.errors: list[str] = []  # every 4xx/5xx moto answered through the proxy
        self._lock = threading.Lock()
        self._log_groups: set[str] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # the same proxy on a Unix socket, for jobs' scripts in their network namespaces (a short
        # path: a socket's name is at most 107 bytes)
        self._socket_dir = tempfile.mkdtemp(prefix="aiops-e2e-")
        self.socket_path = os.path.join(self._socket_dir, "platform.sock")
        self.unix_server = socketserver.ThreadingUnixStreamServer(self.socket_path, _handler(self))
        self.unix_server.daemon_threads = True
        threading.Thread(target=self.unix_server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for job in self.jobs.values():
            job.stop_requested.set()
        for component in self.components.values():
            component.stop()
        for endpoint in self.endpoints.values():
            endpoint.stop()
        self.server.shutdown()
        self.server.server_close()
        self.unix_server.shutdown()
        self.unix_server.server_close()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    # helpers for RoleSession

    def record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def documents(self, role_arn: str) -> Documents:
        s3 = self.account.client("s3")
        kms = self.account.client("kms")
        buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
        keys = [k["KeyArn"] for k in kms.list_keys().get("Keys", [])]
        return documents_from_moto(self.account.client, role_arn=role_arn, buckets=buckets, keys=keys)

    def bucket_key(self, bucket: str) -> str | None:
        s3 = self.account.client("s3")
        try:
            rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        except s3.exceptions.ClientError:
            return None
        for rule in rules:
            default = rule.get("ApplyServerSideEncryptionByDefault", {})
            if default.get("SSEAlgorithm") == "aws:kms":
                return default.get("KMSMasterKeyID")
        return None

    def key_arn(self, key: str | None) -> str | None:
        if not key:
            return None
        if key.startswith("arn:") and ":key/" in key:
            return key
        return self.account.client("kms").describe_key(KeyId=key)["KeyMetadata"]["Arn"]

    def log_group_exists(self, group: str) -> bool:
        if group in self._log_groups:
            return True
        found = self.account.client("logs").describe_log_groups(logGroupNamePrefix=group).get("logGroups", [])
        if any(g["logGroupName"] == group for g in found):
            self._log_groups.add(group)
            return True
        return False

    def attach_network(
        self, session: RoleSession, vpc: dict[str, Any] | None, count: int, job: str
    ) -> list[str]:
        """A job in a VPC: one ENI per instance in the job's subnets, made with the role's rights."""
        if not vpc:
            return []
        region = self.account.region
        ec2 = self.account.client("ec2")
        ec2.describe_subnets(SubnetIds=vpc["Subnets"])  # each must exist (moto raises otherwise)
        ec2.describe_security_groups(GroupIds=vpc["SecurityGroupIds"])
        doing = f"attaching {job} to its VPC"
        for action in (
            "ec2:DescribeVpcs",
            "ec2:DescribeDhcpOptions",
            "ec2:DescribeSubnets",
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeNetworkInterfaces",
        ):
            session.check(None, action, "*", doing=doing)
        interface_arn = f"arn:aws:ec2:{region}:{ACCOUNT}:network-interface/*"
        for resource in (
            [interface_arn]
            + [f"arn:aws:ec2:{region}:{ACCOUNT}:subnet/{s}" for s in vpc["Subnets"]]
            + [f"arn:aws:ec2:{region}:{ACCOUNT}:security-group/{g}" for g in vpc["SecurityGroupIds"]]
        ):
            session.check(None, "ec2:CreateNetworkInterface", resource, doing=doing)
        session.check(None, "ec2:CreateNetworkInterfacePermission", interface_arn, doing=doing)
        enis = []
        for i in range(count):
            subnet = vpc["Subnets"][i % len(vpc["Subnets"])]
            eni = ec2.create_network_interface(
                SubnetId=subnet, Groups=vpc["SecurityGroupIds"], Description=f"SageMaker {job} algo-{i + 1}"
            )
            enis.append(eni["NetworkInterface"]["NetworkInterfaceId"])
        session.check(None, "ec2:DeleteNetworkInterfacePermission", interface_arn, doing=f"detaching {job}")
        session.check(None, "ec2:DeleteNetworkInterface", interface_arn, doing=f"detaching {job}")
        return enis

    def detach_network(self, enis: list[str]) -> None:
        ec2 = self.account.client("ec2")
        for eni in enis:
            ec2.delete_network_interface(NetworkInterfaceId=eni)

    # what the proxy calls

    def inject_capacity(self, instance_type: str, kind: str, *, times: int = 1) -> None:
        """The next `times` jobs on `instance_type` meet no capacity: "create" (ResourceLimitExceeded
        at CreateTrainingJob) or "start" (created, then failed: CapacityError on-demand,
        InsufficientInstanceCapacity spot)."""
        assert kind in ("create", "start"), kind
        self.capacity_faults.append([instance_type, kind, times])

    def take_capacity_fault(self, request: dict[str, Any], kind: str) -> bool:
        with self._lock:
            for fault in self.capacity_faults:
                if (
                    fault[0] == request["ResourceConfig"]["InstanceType"]
                    and fault[1] == kind
                    and fault[2] > 0
                ):
                    fault[2] -= 1
                    return True
        return False

    def keep_pool(self, job: TrainingJob) -> WarmPool:
        pool = WarmPool(job.name, pool_key(job.request), job.keep_alive, time.time())
        with self._lock:
            self.pools.append(pool)
        return pool

    def take_pool(self, request: dict[str, Any]) -> WarmPool | None:
        """The Available pool a new job matches, moved to it (Reused), or None."""
        now, key = time.time(), pool_key(request)
        with self._lock:
            for pool in self.pools:
                pool.refresh(now)
                if pool.status == "Available" and pool.key == key:
                    pool.status, pool.reused_by, pool.until = "Reused", request["TrainingJobName"], now
                    return pool
        return None

    def job_started(self, name: str) -> None:
        with self._lock:
            self.runs[name] = self.runs.get(name, 0) + 1
            self.running.add(name)
            self.peak_running = max(self.peak_running, len(self.running))

    def job_ended(self, name: str) -> None:
        with self._lock:
            self.running.discard(name)

    def on_create_training_job(self, request: dict[str, Any]) -> None:
        request = {**request, "_region": self.account.region}
        with self._lock:
            interruptions, self.spot_interruptions = (
                (self.spot_interruptions, 0)
                if request.get("EnableManagedSpotTraining")
                else (0, self.spot_interruptions)
            )
        capacity = None
        if self.take_capacity_fault(request, "start"):
            capacity = "spot" if request.get("EnableManagedSpotTraining") else "on-demand"
        pool = None if capacity else self.take_pool(request)
        self.jobs[request["TrainingJobName"]] = TrainingJob(
            self, request, interruptions, pool=pool, capacity=capacity
        )

    def on_create_tuning_job(self, request: dict[str, Any]) -> None:
        self.tuning_jobs[request["HyperParameterTuningJobName"]] = TuningJob(self, request)

    def on_endpoint(self, name: str, config_name: str) -> None:
        host = self.endpoints.get(name) or EndpointHost(self, name)
        self.endpoints[name] = host
        host.deploy(config_name)

    def wait_job(self, name: str, timeout: float = 600) -> TrainingJob:
        job = self.jobs[name]
        if not job.done.wait(timeout):
            raise TimeoutError(f"{name} did not finish in {timeout:.0f}s")
        return job


def _forward(
    platform: Platform, handler: BaseHTTPRequestHandler, body: bytes
) -> tuple[int, bytes, dict[str, str]]:
    host = platform.account.url.split("//", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=120)
    # The Host header is kept as signed (moto checks the SigV4 signature of enforced requests).
    headers = {
        k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "transfer-encoding")
    }
    headers["Content-Length"] = str(len(body))
    conn.request(handler.command, handler.path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    out = dict(response.getheaders())
    conn.close()
    return response.status, data, out


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _handler(platform: Platform) -> type[BaseHTTPRequestHandler]:
    invocations = re.compile(r"^/endpoints/([^/]+)/invocations$")
    stream_invocations = re.compile(r"^/endpoints/([^/]+)/invocations-response-stream$")
    async_invocations = re.compile(r"^/endpoints/([^/]+)/async-invocations$")
    components = {
        "SageMaker.CreateInferenceComponent",
        "SageMaker.DescribeInferenceComponent",
        "SageMaker.UpdateInferenceComponent",
        "SageMaker.DeleteInferenceComponent",
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            head = self.command == "HEAD"
            for key, value in headers.items():
                if key.lower() in ("transfer-encoding", "connection", "server", "date"):
                    continue
                if key.lower() == "content-length" and not head:
                    continue
                self.send_header(key, value)
            if not head:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, payload: dict[str, Any], error: str | None = None) -> None:
            headers = {"Content-Type": "application/x-amz-json-1.1"}
            if error:
                headers["x-amzn-ErrorType"] = error
            self._reply(status, json.dumps(payload, default=str).encode(), headers)

        def _handle(self) -> None:
            body = _read_body(self)
            target = self.headers.get("X-Amz-Target", "")
            if self.path.startswith(CREDENTIALS_PATH) and self.command == "GET":
                job = platform.jobs.get(self.path[len(CREDENTIALS_PATH) :])
                if job is None or job.session is None:
                    return self._json(404, {"message": "no such job"})
                return self._json(200, job.credentials())
            match = invocations.match(self.path.split("?", 1)[0])
            if match and self.command == "POST":
                return self._invoke(urllib.request.unquote(match.group(1)), body)
            match = stream_invocations.match(self.path.split("?", 1)[0])
            if match and self.command == "POST":
                return self._invoke_stream(urllib.request.unquote(match.group(1)), body)
            match = async_invocations.match(self.path.split("?", 1)[0])
            if match and self.command == "POST":  # moto's answers placeholders in a bucket of its own
                return self._invoke_async(urllib.request.unquote(match.group(1)))
            if target in components:  # moto 5.2 has no inference components: the platform keeps them
                return self._component(target.split(".", 1)[1], json.loads(body))
            if target == "SageMaker.StopTrainingJob":
                name = json.loads(body)["TrainingJobName"]
                job = platform.jobs.get(name)
                if job is None:
                    return self._json(
                        400,
                        {"__type": "ValidationException", "message": f"no job {name}"},
                        "ValidationException",
                    )
                job.stop_requested.set()
                return self._json(200, {})
            if target == "SageMaker.UpdateEndpoint":
                return self._update_endpoint(json.loads(body))
            if target == "SageMaker.ListTrainingJobsForHyperParameterTuningJob":  # not in moto
                request = json.loads(body)
                tuning = platform.tuning_jobs.get(request["HyperParameterTuningJobName"])
                if tuning is None:
                    return self._json(
                        400,
                        {"__type": "ResourceNotFound", "message": "no such tuning job"},
                        "ResourceNotFound",
                    )
                summaries = tuning.summaries()
                if request.get("SortOrder") == "Descending":
                    summaries.reverse()
                return self._json(200, {"TrainingJobSummaries": summaries})
            if target == "SageMaker.CreateTrainingJob":
                request = json.loads(body)
                if platform.take_capacity_fault(request, "create"):
                    platform.refused.append(request["TrainingJobName"])
                    resources = request["ResourceConfig"]
                    usage = (
                        "spot training job usage"
                        if request.get("EnableManagedSpotTraining")
                        else "training job usage"
                    )
                    message = (
                        f"The account-level service limit '{resources['InstanceType']} for {usage}' is 0 "
                        "Instances, with current utilization of 0 Instances and a request delta of "
                        f"{resources['InstanceCount']} Instances. Please use AWS Service Quotas to "
                        "request an increase for this quota."
                    )
                    return self._json(
                        400, {"__type": "ResourceLimitExceeded", "message": message}, "ResourceLimitExceeded"
                    )
            status, data, headers = _forward(platform, self, body)
            if status >= 400:  # kept for the test's failure message
                platform.errors.append(
                    f"{self.command} {self.path[:200]} {target} -> {status} {data[:300]!r}"
                )
            if status == 200 and target == "SageMaker.CreateTrainingJob":
                platform.on_create_training_job(json.loads(body))
            elif status == 200 and target == "SageMaker.CreateHyperParameterTuningJob":
                platform.on_create_tuning_job(json.loads(body))
            elif status == 200 and target == "SageMaker.DescribeHyperParameterTuningJob":
                described = json.loads(data)
                tuning = platform.tuning_jobs.get(described.get("HyperParameterTuningJobName", ""))
                if tuning is not None:
                    data = json.dumps(tuning.describe(described), default=str).encode()
            elif status == 200 and target == "SageMaker.CreateModel":
                request = json.loads(body)  # moto drops EnableNetworkIsolation and VpcConfig
                platform.models[request["ModelName"]] = request
            elif status == 200 and target == "SageMaker.CreateEndpointConfig":
                request = json.loads(body)  # moto drops ExecutionRoleArn (inference components run as it)
                platform.endpoint_configs[request["EndpointConfigName"]] = {
                    k: request[k] for k in ("ExecutionRoleArn",) if k in request
                }
            elif status == 200 and target == "SageMaker.CreateEndpoint":
                request = json.loads(body)
                platform.on_endpoint(request["EndpointName"], request["EndpointConfigName"])
            elif status == 200 and target == "SageMaker.DescribeTrainingJob":
                described = json.loads(data)
                job = platform.jobs.get(described.get("TrainingJobName", ""))
                if job is not None:
                    data = json.dumps(job.describe(described), default=str).encode()
            elif status == 200 and target == "SageMaker.DescribeEndpoint":
                described = json.loads(data)
                endpoint = platform.endpoints.get(described.get("EndpointName", ""))
                if endpoint is not None:
                    data = json.dumps(endpoint.describe(described), default=str).encode()
            self._reply(status, data, headers)

        def _update_endpoint(self, request: dict[str, Any]) -> None:
            """moto answers UpdateEndpoint with 500: re-create its record, then switch the model."""
            sm = platform.account.client("sagemaker")
            name, config = request["EndpointName"], request["EndpointConfigName"]
            try:
                sm.describe_endpoint_config(EndpointConfigName=config)
                sm.delete_endpoint(EndpointName=name)
                arn = sm.create_endpoint(EndpointName=name, EndpointConfigName=config)["EndpointArn"]
            except Exception as err:
                return self._json(
                    400, {"__type": "ValidationException", "message": str(err)}, "ValidationException"
                )
            platform.on_endpoint(name, config)
            self._json(200, {"EndpointArn": arn})

        def _component(self, action: str, request: dict[str, Any]) -> None:
            name = request["InferenceComponentName"]
            component = platform.components.get(name)
            if action == "CreateInferenceComponent":
                if component is not None:
                    return self._json(
                        400,
                        {
                            "__type": "ValidationException",
                            "message": f"Cannot create already existing inference component {name}.",
                        },
                        "ValidationException",
                    )
                if request["EndpointName"] not in platform.endpoints:
                    return self._json(
                        400,
                        {
                            "__type": "ValidationException",
                            "message": f"Could not find endpoint {request['EndpointName']}.",
                        },
                        "ValidationException",
                    )
                component = platform.components[name] = ComponentHost(platform, request)
                component.deploy()
                return self._json(200, {"InferenceComponentArn": component.arn})
            if component is None:
                return self._json(
                    400,
                    {
                        "__type": "ValidationException",
                        "message": f"Could not find inference component {name}.",
                    },
                    "ValidationException",
                )
            if action == "DescribeInferenceComponent":
                return self._json(200, component.describe())
            if action == "UpdateInferenceComponent":
                changed = (
                    request.get("Specification", component.request["Specification"])
                    != component.request["Specification"]
                )
                component.request.update(
                    {k: v for k, v in request.items() if k in ("Specification", "RuntimeConfig")}
                )
                if changed:
                    component.deploy()
                return self._json(200, {"InferenceComponentArn": component.arn})
            component.stop()  # DeleteInferenceComponent
            del platform.components[name]
            return self._json(200, {})

        def _invoke_async(self, name: str) -> None:
            endpoint = platform.endpoints.get(name)
            if (
                endpoint is None
                or endpoint.status not in ("InService", "Updating")
                or endpoint.server is None
            ):
                state = endpoint.status if endpoint else "not found"
                return self._json(
                    400,
                    {
                        "message": f"Endpoint {name} of account {ACCOUNT} not found or not "
                        f"InService ({state})."
                    },
                    "ValidationError",
                )
            if not endpoint.async_config:
                return self._json(
                    400,
                    {
                        "message": f"Endpoint {name} of account {ACCOUNT} is not an asynchronous "
                        "inference endpoint (its configuration has no AsyncInferenceConfig)."
                    },
                    "ValidationError",
                )
            location = self.headers.get("X-Amzn-SageMaker-InputLocation", "")
            if not location.startswith("s3://"):
                return self._json(400, {"message": "InputLocation must be an s3:// URI"}, "ValidationError")
            headers = {
                "Content-Type": self.headers.get("X-Amzn-SageMaker-Content-Type", "application/octet-stream")
            }
            if self.headers.get("X-Amzn-SageMaker-Accept"):
                headers["Accept"] = self.headers["X-Amzn-SageMaker-Accept"]
            if self.headers.get("X-Amzn-SageMaker-Custom-Attributes"):
                headers["X-Amzn-SageMaker-Custom-Attributes"] = self.headers[
                    "X-Amzn-SageMaker-Custom-Attributes"
                ]
            queued = endpoint.invoke_async(
                location, headers, self.headers.get("X-Amzn-SageMaker-Inference-Id")
            )
            self._reply(
                202,
                json.dumps({"InferenceId": queued["InferenceId"]}).encode(),
                {
                    "Content-Type": "application/json",
                    "X-Amzn-SageMaker-OutputLocation": queued["OutputLocation"],
                    "X-Amzn-SageMaker-FailureLocation": queued["FailureLocation"],
                },
            )

        def _serving(self, name: str) -> tuple[EndpointHost, Any] | None:
            """The endpoint and the model server a runtime call reaches (the component it names on
            an endpoint of inference components); None once the refusal is answered."""
            endpoint = platform.endpoints.get(name)
            ready = endpoint is not None and endpoint.status in ("InService", "Updating")
            if not ready or (endpoint.server is None and not endpoint.hosts_components):
                state = endpoint.status if endpoint else "not found"
                self._json(
                    400,
                    {
                        "message": f"Endpoint {name} of account {ACCOUNT} not found or not "
                        f"InService ({state})."
                    },
                    "ValidationError",
                )
                return None
            server = endpoint.server
            wanted = self.headers.get("X-Amzn-SageMaker-Inference-Component")
            if endpoint.hosts_components:  # routed to the named component's model
                component = platform.components.get(wanted or "")
                if not wanted:
                    self._json(
                        400,
                        {
                            "message": "Inference Component Name header is required for endpoints "
                            "to which you plan to deploy inference components."
                        },
                        "ValidationError",
                    )
                    return None
                if component is None or component.endpoint != name or component.server is None:
                    state = component.status if component and component.endpoint == name else "not found"
                    self._json(
                        400,
                        {
                            "message": f"Inference component {wanted} of endpoint {name} not found "
                            f"or not InService ({state})."
                        },
                        "ValidationError",
                    )
                    return None
                server = component.server
            elif wanted:
                self._json(
                    400,
                    {
                        "message": f"Endpoint {name} hosts no inference components; invoke it "
                        "without InferenceComponentName."
                    },
                    "ValidationError",
                )
                return None
            return endpoint, server

        def _container_headers(self) -> dict[str, str]:
            return {
                k: v
                for k, v in self.headers.items()
                if k.lower() in ("content-type", "accept", "x-amzn-sagemaker-custom-attributes")
            }

        def _model_error(self, status: int, body: bytes) -> None:
            """What the runtime answers when the container does not say 200."""
            self._json(
                424,
                {
                    "Message": f"Received client error ({status}) from primary "
                    "with message " + json.dumps(body.decode(errors="replace")),
                    "OriginalStatusCode": status,
                    "OriginalMessage": body.decode(errors="replace"),
                },
                "ModelError",
            )

        def _invoke(self, name: str, body: bytes) -> None:
            serving = self._serving(name)
            if serving is None:
                return
            endpoint, server = serving
            response = server.request("POST", "/invocations", body, self._container_headers(), timeout=60)
            out = {
                "Content-Type": response.headers.get("content-type", "application/json"),
                "x-Amzn-Invoked-Production-Variant": endpoint.variant,
            }
            if "x-amzn-sagemaker-custom-attributes" in response.headers:
                out["X-Amzn-SageMaker-Custom-Attributes"] = response.headers[
                    "x-amzn-sagemaker-custom-attributes"
                ]
            if response.status != 200:
                return self._model_error(response.status, response.body)
            self._reply(200, response.body, out)

        def _invoke_stream(self, name: str, body: bytes) -> None:
            """InvokeEndpointWithResponseStream: the container's /invocations answer, relayed as
            it arrives, each piece read from the container one PayloadPart event-stream frame
            (chunked); a container answer that is not 200 is the runtime's ModelError."""
            from aiops.inference.serving.http import eventstream

            serving = self._serving(name)
            if serving is None:
                return
            endpoint, server = serving
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            try:
                conn.request("POST", "/invocations", body, self._container_headers())
                response = conn.getresponse()
                if response.status != 200:
                    return self._model_error(response.status, response.read())
                self.send_response(200)
                self.send_header("Content-Type", eventstream.CONTENT_TYPE)
                self.send_header(
                    "X-Amzn-SageMaker-Content-Type",
                    response.getheader("Content-Type", "application/octet-stream"),
                )
                self.send_header("x-Amzn-Invoked-Production-Variant", endpoint.variant)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while piece := response.read1(65536):
                    frame = eventstream.payload_part(piece)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler
