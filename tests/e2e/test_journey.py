"""THE JOURNEY: plan -> stack -> `aiops train --remote` (2 hosts, spot, interrupted once) ->
`aiops jobs logs` -> `aiops deploy --model` -> invoke by endpoint name, on an emulated AWS with
IAM enforced (see emulator.py for what stands in for what; docs/journey.md for the commands).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from emulator import MotoAccount, Platform
from iam_judge import Documents, denials
from journey import DIGITS, REGION, Journey, stack_config

pytestmark = pytest.mark.slow

EPOCHS = 5
HPS = ("--hp", f"epochs={EPOCHS}", "--hp", "threads=1", "--hp", "batch-size=64")
SAMPLE_ROWS = 24
# what SageMaker reads from the log and publishes to CloudWatch (MetricDefinitions)
METRIC = "test_accuracy=test_accuracy=([0-9.]+);"


# The SDK runs a multi-instance job once per host unless a distribution is given; the digits
# script trains data-parallel under torchrun.
DISTRIBUTION = ("--distribution", "torch_distributed")


def _test_rows(data: Path) -> tuple[list[list[float]], list[int]]:
    import numpy as np

    files = sorted((data / "test").glob("*.npz"))
    part = np.load(files[0])
    return part["x"][:SAMPLE_ROWS].astype("float32").tolist(), part["y"][:SAMPLE_ROWS].tolist()


def _state_dict(archive: bytes) -> dict[str, Any]:
    import torch

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return torch.load(
            io.BytesIO(tar.extractfile("model.pth").read()), map_location="cpu", weights_only=True
        )


def _predict(model_pt: Path, rows: list[list[float]]) -> list[list[float]]:
    import torch

    torch.set_num_threads(1)
    model = torch.jit.load(str(model_pt), map_location="cpu").eval()
    with torch.no_grad():
        return model(torch.tensor(rows, dtype=torch.float32)).tolist()


@dataclass
class LocalReference:
    run_dir: Path
    model_dir: Path
    state: dict[str, Any]
    predictions: list[list[float]]
    rows: list[list[float]]
    labels: list[int]


@pytest.fixture(scope="session")
def local_reference(digits_data: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalReference:
    """The same job run locally: `aiops train ... --nproc 2` (torchrun, 2 processes on one machine),
    once for both journeys, which may run on two workers (the channels are the same on each: the
    digits data is made from a seed)."""
    import torch
    from helpers import built_once, run_aiops

    def train(root: Path) -> dict:
        result = run_aiops(
            root / "home",
            root,
            "train",
            "train.py",
            "--source-dir",
            str(DIGITS),
            "--channel",
            f"train={digits_data}/train",
            "--channel",
            f"test={digits_data}/test",
            *HPS,
            "--nproc",
            "2",
            "--job-name",
            "local-reference",
            "--json",
            env={"OMP_NUM_THREADS": "1"},
            timeout=600,
        )
        assert result.returncode == 0, result.output[-4000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    run_dir = Path(built_once(tmp_path_factory, "journey-local-reference", train)["run_dir"])
    model_dir = next(p for p in run_dir.rglob("model.pt")).parent
    rows, labels = _test_rows(digits_data)
    return LocalReference(
        run_dir,
        model_dir,
        torch.load(model_dir / "model.pth", weights_only=True),
        _predict(model_dir / "model.pt", rows),
        rows,
        labels,
    )


@dataclass
class JourneyResult:
    journey: Journey
    job_name: str = ""
    error: BaseException | None = None
    where: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    deploy_plan: dict[str, Any] = field(default_factory=dict)
    train_output: str = ""
    logs_output: str = ""
    metrics_output: str = ""
    model_archive: bytes = b""
    model_uri: str = ""
    endpoint_answer: list[Any] = field(default_factory=list)
    cli_answer: list[Any] = field(default_factory=list)
    documents: Documents | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    # scale to zero: asynchronous inference (main journey), inference components (VPC journey)
    async_cli: str = ""
    async_answer: Any = None
    async_failure: Any = None  # the CliResult of a request the handler refuses
    notifications: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # topic -> SNS messages
    component_refusals: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(
                f"the journey failed at {self.where}: {self.error}\n\n--- transcript ---\n"
                f"{self.journey.log()[-12000:]}"
            ) from self.error


def user_network(account: MotoAccount) -> tuple[list[str], list[str]]:
    """The user's own VPC (existing before the stack, as the stack's network option expects)."""
    ec2 = account.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"{REGION}{z}")["Subnet"][
            "SubnetId"
        ]
        for i, z in ((1, "a"), (2, "b"))
    ]
    group = ec2.create_security_group(GroupName="aiops-training", Description="training jobs", VpcId=vpc)[
        "GroupId"
    ]
    ec2.authorize_security_group_ingress(
        GroupId=group, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}]
    )
    return subnets, [group]


def run_journey(
    journey: Journey,
    data: Path,
    *,
    vpc: bool,
    interruptions: int,
    local_model: bool,
    scale_to_zero: str | None = None,
) -> JourneyResult:
    result = JourneyResult(journey)
    step = "start"
    clock = time.monotonic()

    def mark(name: str) -> None:
        nonlocal step, clock
        now = time.monotonic()
        result.seconds[step] = round(now - clock, 1)
        step, clock, result.where = name, now, name

    try:
        mark("the plan")
        config = stack_config()
        if vpc:
            subnets, groups = user_network(journey.account)
            config["config"]["aiops:network"] = {"subnetIds": subnets, "securityGroupIds": groups}
            config["config"]["aiops:endpoint"]["networkIsolation"] = True
        else:  # the main journey's job can be entered (aiops jobs connect): the role's SSM statement
            config["config"]["aiops:access"] = {"remoteDebug": True}
        journey.write_stack(config)
        result.plan = journey.preview()

        mark("the stack (stand-in engine)")
        outputs = journey.apply(result.plan)
        assert (journey.home / "stacks" / "e2e.outputs.json").is_file()
        assert outputs.get("bucket") and outputs.get("roleArn"), outputs

        mark("aiops train --remote")
        journey.platform.spot_interruptions = interruptions
        result.job_name = "digits-vpc" if vpc else "digits-e2e"
        args = [
            "train",
            "train.py",
            "--source-dir",
            str(DIGITS),
            "--channel",
            f"train={data}/train",
            "--channel",
            f"test={data}/test",
            *HPS,
            "--remote",
            "--instance-count",
            "2",
            "--spot",
            "--instance-type",
            "ml.g5.xlarge",
            "--job-name",
            result.job_name,
            *DISTRIBUTION,
            "--metric",
            METRIC,
        ]
        args.append("--network-isolation" if vpc else "--remote-debug")
        train = journey.aiops(*args)
        result.train_output = train.output
        assert train.returncode == 0, f"aiops train --remote exited {train.returncode}"
        job = journey.platform.jobs[result.job_name]
        assert job.status == "Completed" and job.interrupted == interruptions, (job.status, job.interrupted)
        assert bool(job.request.get("RemoteDebugConfig")) is not vpc

        mark("aiops jobs logs")
        logs = journey.aiops("jobs", "logs", result.job_name)
        result.logs_output = logs.output
        assert logs.returncode == 0
        metrics = journey.aiops("jobs", "metrics", result.job_name)
        result.metrics_output = metrics.output
        assert metrics.returncode == 0

        mark("the job's model.tar.gz")
        bucket, _, key = job.model_artifact[len("s3://") :].partition("/")
        result.model_archive = journey.account.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()

        mark("aiops deploy --model")
        journey.set_config("aiops:endpoint.enabled", True)
        if local_model:
            archive = journey.root / "downloaded" / "model.tar.gz"
            archive.parent.mkdir(parents=True, exist_ok=True)
            archive.write_bytes(result.model_archive)
            result.model_uri = journey.resolve_model(str(archive))
        else:
            result.model_uri = journey.resolve_model(f"job:{result.job_name}")
        journey.set_config("aiops:endpoint.modelDataUrl", result.model_uri)
        if scale_to_zero == "components":  # scale to zero: the model as an inference component
            journey.set_config("aiops:endpoint.inferenceComponents", {"enabled": True})
        result.deploy_plan = journey.preview()
        journey.apply(result.deploy_plan)

        mark("invoke")
        rows_file = journey.root / "rows.json"
        rows_file.write_text(json.dumps(_test_rows(data)[0]))
        runtime = journey.account.client("sagemaker-runtime", endpoint=journey.platform.url)
        routing = (
            {"InferenceComponentName": journey.outputs["inferenceComponentName"]}
            if scale_to_zero == "components"
            else {}
        )
        answer = runtime.invoke_endpoint(
            EndpointName=journey.outputs["endpointName"],
            ContentType="application/json",
            Accept="application/json",
            Body=rows_file.read_bytes(),
            **routing,
        )
        result.endpoint_answer = json.loads(answer["Body"].read())
        out = journey.root / "answer.json"
        cli = journey.aiops(
            "invoke",
            "--endpoint",
            journey.outputs["endpointName"],
            "--data",
            f"@{rows_file}",
            "--output",
            str(out),
        )
        assert cli.returncode == 0, cli.output
        result.cli_answer = json.loads(out.read_text())
        if scale_to_zero == "async":
            mark("aiops invoke --async")
            _async_inference(journey, result, rows_file)
        elif scale_to_zero == "components":
            mark("inference components")
            _component_refusals(journey, result, rows_file)
        mark("done")
    except BaseException as err:  # the test reports where and why, with the transcript
        result.error = err
        journey.transcript.append(traceback.format_exc())
    finally:
        try:
            role = journey.outputs.get("roleArn")
            if role:
                result.documents = journey.platform.documents(role)
        except Exception:
            pass
    return result


def _subscribe(journey: Journey, topic_suffix: str) -> tuple[str, str]:
    """An SQS queue subscribed to the stack's topic named ...<topic_suffix> (what a user listens on)."""
    sns, sqs = journey.account.client("sns"), journey.account.client("sqs")
    topic = next(t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(topic_suffix))
    url = sqs.create_queue(QueueName=f"listen{topic_suffix}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return topic, url


def _received(journey: Journey, url: str) -> list[dict[str, Any]]:
    messages = (
        journey.account.client("sqs")
        .receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        .get("Messages", [])
    )
    return [json.loads(json.loads(m["Body"])["Message"]) for m in messages]


def _async_inference(journey: Journey, result: JourneyResult, rows_file: Path) -> None:
    """Scale to zero with asynchronous inference: the same model behind an AsyncInferenceConfig,
    `aiops invoke --async` (input uploaded to the stack's bucket, result read from the
    OutputLocation), and a request the handler refuses (the failure object, the error topic)."""
    journey.set_config("aiops:endpoint.asyncInference", {"enabled": True, "maxCapacity": 2})
    journey.apply(journey.preview())
    name = journey.outputs["endpointName"]
    listeners = {suffix: _subscribe(journey, suffix) for suffix in ("-async-success", "-async-error")}
    out = journey.root / "async-answer.json"
    cli = journey.aiops(
        "invoke",
        "--async",
        "--endpoint",
        name,
        "--data",
        f"@{rows_file}",
        "--output",
        str(out),
        "--timeout",
        "120",
    )
    result.async_cli = cli.output
    assert cli.returncode == 0, cli.output
    result.async_answer = json.loads(out.read_text())
    result.async_failure = journey.aiops(
        "invoke", "--async", "--endpoint", name, "--data", "[[1, 2, 3]]", "--timeout", "120"
    )
    from helpers import wait_until

    host = journey.platform.endpoints[name]  # each outcome is recorded after its notification is sent
    wait_until(lambda: len(host.async_done) == 2, "the platform finished both async requests", timeout=60)
    for suffix, (_topic, url) in listeners.items():
        result.notifications[suffix] = _received(journey, url)


def _component_refusals(journey: Journey, result: JourneyResult, rows_file: Path) -> None:
    """An endpoint of inference components refuses a request that names no component, or another."""
    from botocore.exceptions import ClientError

    runtime = journey.account.client("sagemaker-runtime", endpoint=journey.platform.url)
    for extra in ({}, {"InferenceComponentName": "no-such-component"}):
        try:
            runtime.invoke_endpoint(
                EndpointName=journey.outputs["endpointName"],
                ContentType="application/json",
                Body=rows_file.read_bytes(),
                **extra,
            )
            result.component_refusals.append("answered")
        except ClientError as err:
            result.component_refusals.append(err.response["Error"].get("Message", ""))


def _journey_fixture(
    tmp_path_factory: pytest.TempPathFactory, digits_data: Path, name: str, **options: Any
) -> Any:
    from sandbox import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"the platform emulator runs each job's hosts in network namespaces: {reason}")
    root = tmp_path_factory.mktemp(name)
    account = MotoAccount(REGION)
    platform = Platform(account, root / "platform")
    journey = Journey(account, platform, root / "user", stack="e2e")
    try:
        yield run_journey(journey, digits_data, **options)
    finally:
        platform.close()
        account.close()


@pytest.fixture(scope="session")
def main_journey(tmp_path_factory: pytest.TempPathFactory, digits_data: Path) -> Any:
    yield from _journey_fixture(
        tmp_path_factory,
        digits_data,
        "journey",
        vpc=False,
        interruptions=1,
        local_model=False,
        scale_to_zero="async",
    )


@pytest.fixture(scope="session")
def vpc_journey(tmp_path_factory: pytest.TempPathFactory, digits_data: Path) -> Any:
    yield from _journey_fixture(
        tmp_path_factory,
        digits_data,
        "journey-vpc",
        vpc=True,
        interruptions=0,
        local_model=True,
        scale_to_zero="components",
    )


def _phases(job: Any) -> list[tuple[str, float]]:
    return [
        (t["Status"], round(t.get("EndTime", t["StartTime"]) - t["StartTime"], 1)) for t in job.transitions
    ]


def _archive_names(journey: Journey, uri: str) -> set[str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    body = journey.account.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name.removeprefix("./") for m in tar if m.isfile()}


def _assert_same_model(result: JourneyResult, reference: LocalReference) -> None:
    import torch

    remote = _state_dict(result.model_archive)
    assert sorted(remote) == sorted(reference.state)
    different = [k for k in remote if not torch.equal(remote[k], reference.state[k])]
    assert not different, f"weights differ from the local run's (2 processes, uninterrupted): {different[:5]}"


def _assert_predictions(answer: Any, reference: LocalReference) -> None:
    """The endpoint's answer against the local model's logits: the raw logits (the container's default
    handlers, for a model.tar.gz without code/), or the example's inference.py answer (a job's model
    repacked with its code: {"predictions": [{"label", "probabilities" (softmax, 6 decimals)}]})."""
    import math

    expected = reference.predictions
    if isinstance(answer, dict):
        rows = answer["predictions"]
        assert [r["label"] for r in rows] == [max(range(10), key=ref.__getitem__) for ref in expected]

        def softmax(row: list[float]) -> list[float]:
            top = max(row)
            exps = [math.exp(v - top) for v in row]
            return [e / sum(exps) for e in exps]

        answer, expected = [r["probabilities"] for r in rows], [softmax(r) for r in expected]
    assert len(answer) == len(expected)
    worst = max(
        abs(a - b) for row, ref in zip(answer, expected, strict=True) for a, b in zip(row, ref, strict=True)
    )
    assert worst <= 1e-5, f"endpoint and local predictions differ by up to {worst}"
    labels = [max(range(10), key=row.__getitem__) for row in answer]
    assert labels == [max(range(10), key=row.__getitem__) for row in reference.predictions]
    accuracy = sum(a == b for a, b in zip(labels, reference.labels, strict=True)) / len(labels)
    assert accuracy >= 0.75, f"a trained model: {accuracy:.2f} of {len(labels)} test digits right"


def test_journey(main_journey: JourneyResult, local_reference: LocalReference) -> None:
    """The whole journey, with the stack's outputs only (no --role, no --bucket)."""
    result = main_journey
    result.check()
    journey = result.journey
    job = journey.platform.jobs[result.job_name]
    outputs = journey.outputs
    print(f"journey steps (s): {result.seconds}; job phases (s): {_phases(job)}")
    # the job ran as the stack's role, in its bucket, under the container contract, 2 hosts, spot
    request = job.request
    assert request["RoleArn"] == outputs["roleArn"]
    assert request["OutputDataConfig"]["S3OutputPath"].startswith(f"s3://{outputs['bucket']}/")
    assert request["ResourceConfig"]["InstanceCount"] == 2 and request["EnableManagedSpotTraining"] is True
    assert job.attempts == 2 and [t["Status"] for t in job.transitions].count("Interrupted") == 1
    resumed = re.search(
        r"resuming from /opt/ml/checkpoints/checkpoint.pt: (\d+) of (\d+) epochs done", result.train_output
    )
    assert resumed and 1 <= int(resumed.group(1)) < EPOCHS, result.train_output[-3000:]
    stopped = re.search(r"SIGTERM received: stopped after epoch (\d+);", result.logs_output)
    assert stopped and stopped.group(1) == resumed.group(1)
    # every host's log, both attempts, through CloudWatch
    for host in ("algo-1", "algo-2"):
        assert sum(1 for n in job.log_names if f"/{host}-" in n) == 2, job.log_names
        assert f"[{host}] " in result.train_output  # followed live by `aiops train --remote`
        assert f"[{host}-" in result.logs_output, result.logs_output[-2000:]
    assert "training on cpu x 2 process(es)" in result.logs_output
    assert f"epoch={EPOCHS};" in result.logs_output
    assert "test_accuracy" in result.metrics_output, result.metrics_output
    assert job.final_metrics["test_accuracy"] > 0.5
    # the interrupted, resumed 2-host job ends with the weights of the uninterrupted local run
    _assert_same_model(result, local_reference)
    # aiops deploy --model job:NAME: the job's artifact repacked with its code/ (as estimator.deploy()),
    # uploaded under its content hash; the plan's model points at it
    model = next(r for r in result.deploy_plan["resources"] if r["type"] == "aws:sagemaker/model:Model")
    assert model["inputs"]["primaryContainer"]["modelDataUrl"] == result.model_uri != job.model_artifact
    assert result.model_uri.startswith(f"s3://{outputs['bucket']}/models/sha256/")
    repacked = _archive_names(journey, result.model_uri)
    assert {"code/inference.py", "code/train.py"} <= repacked and _archive_names(
        journey, job.model_artifact
    ) < repacked
    endpoint = journey.platform.endpoints[outputs["endpointName"]]
    assert (
        endpoint.status == "InService"
        and endpoint.model["PrimaryContainer"]["ModelDataUrl"] == result.model_uri
    )
    assert isinstance(result.endpoint_answer, dict)  # answered by the repacked code/inference.py
    _assert_predictions(result.endpoint_answer, local_reference)
    assert result.cli_answer == result.endpoint_answer
    _assert_async_inference(result)
    # and nothing the role did would be denied by the deployed documents
    assert result.documents is not None and not denials(result.documents, journey.platform.calls)


def _assert_async_inference(result: JourneyResult) -> None:
    """`aiops invoke --async` after the endpoint was switched to asynchronous inference: the input in
    the stack's async-inference/input/, read by the endpoint's role; the result the synchronous
    call gave, written by the role under the S3OutputPath; a refused request's failure object and
    one error line; one notification on each topic."""
    journey, outputs = result.journey, result.journey.outputs
    bucket = outputs["bucket"]
    host = journey.platform.endpoints[outputs["endpointName"]]
    assert host.async_config["OutputConfig"]["S3OutputPath"] == f"s3://{bucket}/async-inference/output"
    assert result.async_answer == result.endpoint_answer
    done, failed = host.async_done
    assert done["status"] == "Completed" and failed["status"] == "Failed", (done, failed)
    assert done["InputLocation"].startswith(f"s3://{bucket}/async-inference/input/")
    assert done["OutputLocation"].startswith(f"s3://{bucket}/async-inference/output/")
    assert f"async {done['InferenceId']}: {done['OutputLocation']}" in result.async_cli
    failure = result.async_failure
    assert failure.returncode == 1, failure.output
    (line,) = failure.stderr.strip().splitlines()
    assert line.startswith("error: the asynchronous request failed: Received client error (400)"), line
    assert "expected rows of 64 pixel values" in line and failed["FailureLocation"] in line
    assert failed["FailureLocation"].startswith(f"s3://{bucket}/async-inference/failures/")
    (success,) = result.notifications["-async-success"]
    assert (success["inferenceId"], success["invocationStatus"]) == (done["InferenceId"], "Completed")
    assert success["responseParameters"]["outputLocation"] == done["OutputLocation"]
    (error,) = result.notifications["-async-error"]
    assert (error["inferenceId"], error["invocationStatus"]) == (failed["InferenceId"], "Failed")
    # what the role did for them, recorded (and judged against the deployed documents by the caller)
    made = {(c.action, c.resource) for c in journey.platform.calls}
    for action, uri in (
        ("s3:GetObject", done["InputLocation"]),
        ("s3:PutObject", done["OutputLocation"]),
        ("s3:PutObject", failed["FailureLocation"]),
    ):
        assert (action, "arn:aws:s3:::" + uri[len("s3://") :]) in made, (action, uri)
    assert {a for a, r in made if r.endswith("-async-success") or r.endswith("-async-error")} == {
        "sns:Publish"
    }


def test_journey_in_a_vpc_with_network_isolation(
    vpc_journey: JourneyResult, local_reference: LocalReference
) -> None:
    """The same journey with the stack's VPC option and network isolation on; the model deployed
    from a local model.tar.gz (uploaded under its content hash)."""
    import hashlib

    result = vpc_journey
    result.check()
    journey = result.journey
    job = journey.platform.jobs[result.job_name]
    outputs = journey.outputs
    assert job.request["VpcConfig"] == {
        "Subnets": outputs["subnetIds"],
        "SecurityGroupIds": outputs["securityGroupIds"],
    }
    assert job.request.get("EnableNetworkIsolation") is True
    actions = {c.action for c in job.calls}
    assert {"ec2:CreateNetworkInterface", "ec2:DescribeSubnets"} <= actions
    digest = hashlib.sha256(result.model_archive).hexdigest()
    assert result.model_uri == f"s3://{outputs['bucket']}/models/sha256/{digest}/model.tar.gz"
    model = next(r for r in result.deploy_plan["resources"] if r["type"] == "aws:sagemaker/model:Model")
    assert model["inputs"].get("enableNetworkIsolation") is True
    assert model["inputs"].get("vpcConfig"), model["inputs"]
    # deployed with inference components (scale to zero): the endpoint's configuration names no
    # model, the component serves it (isolated, in the VPC); `aiops invoke` routes to it by the
    # stack's inferenceComponentName output
    endpoint = journey.platform.endpoints[outputs["endpointName"]]
    assert endpoint.hosts_components and endpoint.server is None
    assert endpoint.config["ExecutionRoleArn"] == outputs["roleArn"]
    assert endpoint.config["ProductionVariants"][0]["ManagedInstanceScaling"]["MinInstanceCount"] == 0
    component = journey.platform.components[outputs["inferenceComponentName"]]
    assert component.status == "InService" and component.endpoint == outputs["endpointName"]
    assert component.model.get("EnableNetworkIsolation") is True and component.model.get("VpcConfig")
    _assert_same_model(result, local_reference)
    _assert_predictions(result.endpoint_answer, local_reference)
    assert result.cli_answer == result.endpoint_answer
    assert component.model["PrimaryContainer"]["ModelDataUrl"] == result.model_uri
    no_name, unknown = result.component_refusals
    assert "Inference Component Name header is required" in no_name
    assert "no-such-component" in unknown and "not found" in unknown
    assert result.documents is not None and not denials(result.documents, journey.platform.calls)


def test_each_statement_of_the_role_is_needed(main_journey: JourneyResult, statement_id: str) -> None:
    """Without any one statement of the role's policy, the journey's calls meet a denial that names
    the action and the resource (re-evaluated from the journey's recorded calls)."""
    main_journey.check()
    docs = main_journey.documents
    calls = main_journey.journey.platform.calls
    denied = denials(docs.without_statement(statement_id), calls)
    assert denied, (
        f"nothing in the journey needs statement {statement_id}: remove it from the role (least privilege)"
    )
    message = str(denied[0])
    call = denied[0].call
    assert call.action in message and call.resource in message


def test_each_statement_of_the_vpc_role_is_needed(vpc_journey: JourneyResult, vpc_statement_id: str) -> None:
    """The same for the role of a stack with the VPC option (its ec2 statements included)."""
    vpc_journey.check()
    denied = denials(
        vpc_journey.documents.without_statement(vpc_statement_id), vpc_journey.journey.platform.calls
    )
    assert denied, f"nothing in the VPC journey needs statement {vpc_statement_id}"
    assert denied[0].call.action in str(denied[0]) and denied[0].call.resource in str(denied[0])


def test_a_removed_statement_fails_the_real_job(journey: Journey, digits_data: Path) -> None:
    """One real run with moto enforcing: the statement that lets the role read the code bundle is
    removed from the deployed policy; the job fails naming s3:GetObject and the bundle's key, and
    moto itself refuses the role that object."""
    from botocore.exceptions import ClientError

    journey.write_stack(stack_config())
    journey.apply(journey.preview())
    iam = journey.account.client("iam")
    role = journey.outputs["roleArn"].rsplit("/", 1)[1]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    removed = [s for s in document["Statement"] if "s3:GetObject" in json.dumps(s.get("Action"))]
    assert len(removed) == 1
    document["Statement"] = [s for s in document["Statement"] if s is not removed[0]]
    iam.put_role_policy(RoleName=role, PolicyName=policy_name, PolicyDocument=json.dumps(document))

    train = journey.aiops(
        "train",
        "train.py",
        "--source-dir",
        str(DIGITS),
        "--channel",
        f"train={digits_data}/train",
        *HPS,
        "--remote",
        "--instance-type",
        "ml.c5.xlarge",
        "--job-name",
        "digits-denied",
    )
    assert train.returncode == 1, journey.log()
    job = journey.platform.jobs["digits-denied"]
    bundle = job.request["HyperParameters"]["sagemaker_submit_directory"].strip('"')
    bucket, _, key = bundle[len("s3://") :].partition("/")
    assert "s3:GetObject" in train.output and f"arn:aws:s3:::{bucket}/{key}" in train.output, train.output[
        -3000:
    ]
    assert job.status == "Failed" and "AccessDenied" in job.failure_reason
    # moto's own enforcement agrees: the role cannot read the bundle
    from emulator import Credentials

    answer = journey.account.client("sts", journey.account.service).assume_role(
        RoleArn=journey.outputs["roleArn"], RoleSessionName="check"
    )["Credentials"]
    s3 = journey.account.client(
        "s3", Credentials(answer["AccessKeyId"], answer["SecretAccessKey"], answer["SessionToken"])
    )
    with pytest.raises(ClientError) as denied:
        s3.get_object(Bucket=bucket, Key=key)
    assert denied.value.response["Error"]["Code"] == "AccessDenied"


# A script written the way the public SageMaker PyTorch examples are: hosts from SM_HOSTS, one
# process per host joined with env:// (MASTER_ADDR/MASTER_PORT from the container), the job read
# through sagemaker_training's Environment(), the model class in a sibling module.
UPSTREAM_NET = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1, bias=False)

    def forward(self, x):
        return self.linear(x)
"""

UPSTREAM_TRAIN = """
import argparse, json, os
import torch
import torch.distributed as dist
from sagemaker_training import environment
from net import Net

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--hosts", type=list, default=json.loads(os.environ["SM_HOSTS"]))
    parser.add_argument("--current-host", type=str, default=os.environ["SM_CURRENT_HOST"])
    parser.add_argument("--model-dir", type=str, default=os.environ["SM_MODEL_DIR"])
    parser.add_argument("--data-dir", type=str, default=os.environ["SM_CHANNEL_TRAINING"])
    args = parser.parse_args()
    env = environment.Environment()
    rank, world = args.hosts.index(args.current_host), len(args.hosts)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    master = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    print(f"host {env.current_host} rank {rank} of {world} via {master}", flush=True)
    lines = open(os.path.join(args.data_dir, "rows.csv"))
    rows = torch.tensor([[float(v) for v in line.split(",")] for line in lines])
    x, y = rows[rank::world, :3], rows[rank::world, 3:]
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(args.epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
    total = torch.tensor([float(len(x))])
    dist.all_reduce(total)
    print(f"rows seen by all hosts: {int(total.item())}", flush=True)
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(args.model_dir, "model.pth"))
    dist.barrier()
    dist.destroy_process_group()
"""


def test_upstream_style_script_runs_remotely_on_two_hosts(journey: Journey, tmp_path: Path) -> None:
    """The SM_HOSTS rendezvous pattern, unchanged, as a 2-instance job of the emulated platform:
    each host runs the script once (no distribution), they meet through MASTER_ADDR=algo-1."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "net.py").write_text(UPSTREAM_NET)
    (code / "train.py").write_text(UPSTREAM_TRAIN)
    data = tmp_path / "training"
    data.mkdir()
    (data / "rows.csv").write_text(
        "".join(f"{i % 3},{i % 5},{i % 7},{(i % 3) + 2 * (i % 5)}\n" for i in range(40))
    )
    journey.write_stack(stack_config())
    journey.apply(journey.preview())
    train = journey.aiops(
        "train",
        "train.py",
        "--source-dir",
        str(code),
        "--channel",
        f"training={data}",
        "--hp",
        "epochs=3",
        "--remote",
        "--instance-count",
        "2",
        "--on-demand",
        "--instance-type",
        "ml.c5.xlarge",
        "--job-name",
        "upstream-style",
    )
    assert train.returncode == 0, journey.log()[-6000:]
    job = journey.platform.jobs["upstream-style"]
    logged = "\n".join(line for _, line in job.lines)
    assert (
        "host algo-1 rank 0 of 2 via algo-1:7777" in logged
        and "host algo-2 rank 1 of 2 via algo-1:7777" in logged
    )
    assert logged.count("rows seen by all hosts: 40") == 2
    bucket, _, key = job.model_artifact[len("s3://") :].partition("/")
    archive = journey.account.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert "model.pth" in tar.getnames()
