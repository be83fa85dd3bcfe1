"""The stack contract end to end on paper: every S3 key that remote training and `aiops deploy
--model` build (from aiops.stack.S3Layout) is allowed by the execution role's policy as the
offline plan declares it, evaluated with moto's own IAM policy evaluator; keys outside the
layout are denied; and every statement of the policy is needed by some access.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult

from aiops.errors import ConfigError
from aiops.stack import LAYOUT, S3Layout, StackOutputs, read_outputs, resolve_stack, write_outputs

SUBNETS = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
GROUPS = ["sg-0cccccccccccccccc"]


class RecordingS3:
    """Records the keys the uploaders write (head_object answers 404: everything is new). ``meta``
    is what s3transfer's TransferManager (a channel's batch) reads of a client: its event hooks
    and its config."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from botocore.config import Config
        from botocore.hooks import HierarchicalEmitter

        self.keys: list[str] = []
        self.meta = SimpleNamespace(events=HierarchicalEmitter(), config=Config())

    def head_object(self, Bucket: str, Key: str) -> None:  # noqa: N803 - boto3's names
        err = Exception("not found")
        err.response = {"Error": {"Code": "404"}}  # type: ignore[attr-defined]
        raise err

    def upload_fileobj(self, _fh: Any, bucket: str, key: str, **_: Any) -> None:
        self.keys.append(key)

    def upload_file(self, _path: str, bucket: str, key: str, **_: Any) -> None:
        self.keys.append(key)

    def put_object(self, Bucket: str, Key: str, **_: Any) -> None:  # noqa: N803
        self.keys.append(Key)


def _role_documents(plan) -> list[dict[str, Any]]:
    return [json.loads(r.inputs["policy"]) for r in plan.of_type("aws:iam/rolePolicy:RolePolicy")]


def _allowed(documents: list[dict[str, Any]], action: str, resource: str) -> bool:
    results = [IAMPolicy(json.dumps(d)).is_action_permitted(action, resource) for d in documents]
    return PermissionResult.DENIED not in results and PermissionResult.PERMITTED in results


def _what_jobs_and_endpoints_do(plan, tmp_path: Path) -> list[tuple[str, str]]:
    """(action, resource) for everything a job and the endpoint do as the role, with keys built
    by the real code: the uploaders, build_request, artifacts.upload and the planned endpoint."""
    from aiops.training import bundle, uploads
    from aiops.training import remote_request as remote
    from aiops.training.launch import Access, Compute, Networking

    from aiops.artifacts import upload

    bucket = plan.outputs["bucket"]
    arn = f"arn:aws:s3:::{bucket}"
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("print('hi')\n")
    channel = tmp_path / "train"
    channel.mkdir()
    (channel / "part-0.csv").write_text("1,2\n")
    s3 = RecordingS3()
    code = bundle.build(source, "train.py")
    code_uri = uploads.upload_bundle(s3, bucket, code.data, code.sha256).uri
    channel_uri = uploads.upload_channel(s3, bucket, "train", channel).uri
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"\x1f\x8b" + b"0" * 64)
    model_uri = upload.upload(model, bucket=bucket, kms_key_arn=None, s3=s3)
    options = remote.RemoteOptions(
        compute=Compute(instance_type="ml.g5.xlarge"),
        access=Access(region=plan.region, role=plan.outputs["roleArn"], bucket=bucket),
        networking=Networking(subnets=tuple(SUBNETS), security_group_ids=tuple(GROUPS)),
    )
    request = remote.build_request(
        job_name="job-1",
        entry_point="train.py",
        hyperparameters={},
        channel_uris={"train": channel_uri},
        submit_directory=code_uri,
        image_uri="img",
        options=options,
        nproc=None,
        metric_definitions=[],
    )
    output = request["OutputDataConfig"]["S3OutputPath"].removeprefix(f"s3://{bucket}/")
    checkpoint = request["CheckpointConfig"]["S3Uri"].removeprefix(f"s3://{bucket}/")
    channel_key = channel_uri.removeprefix(f"s3://{bucket}/")
    config = plan.one("aws:sagemaker/endpointConfiguration:EndpointConfiguration").inputs
    capture = config["dataCaptureConfig"]["destinationS3Uri"].removeprefix(f"s3://{bucket}/")
    key_arn = plan.outputs["kmsKeyArn"]
    accesses = [
        # the training container: the code bundle, the channel (listed, then read), earlier checkpoints
        ("s3:GetObject", f"{arn}/{code_uri.removeprefix(f's3://{bucket}/')}"),
        ("s3:ListBucket", arn),
        ("s3:GetObject", f"{arn}/{channel_key}part-0.csv"),
        ("s3:GetObject", f"{arn}/{checkpoint}epoch-3.pt"),
        # what it writes: checkpoints, model.tar.gz and output.tar.gz under the job output path
        ("s3:PutObject", f"{arn}/{checkpoint}epoch-3.pt"),
        ("s3:PutObject", f"{arn}/{output}/job-1/output/model.tar.gz"),
        ("s3:PutObject", f"{arn}/{output}/job-1/output/output.tar.gz"),
        ("s3:AbortMultipartUpload", f"{arn}/{output}/job-1/output/model.tar.gz"),
        # the endpoint: a model uploaded by `aiops deploy --model`, or a training job's model
        ("s3:GetObject", f"{arn}/{model_uri.removeprefix(f's3://{bucket}/')}"),
        ("s3:GetObject", f"{arn}/{LAYOUT.job_output_key('job-1')}"),
        ("s3:PutObject", f"{arn}/{capture}/primary/2026/12/01/00/capture.jsonl"),
        # SSE-KMS with the stack's key, and grants for the volumes SageMaker attaches
        ("kms:Decrypt", key_arn),
        ("kms:GenerateDataKey", key_arn),
        ("kms:CreateGrant", key_arn),
        # the images, logs and metrics
        ("ecr:GetAuthorizationToken", "*"),
        ("ecr:BatchGetImage", "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-inference"),
        (
            "logs:PutLogEvents",
            "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/TrainingJobs:log-stream:job-1/algo-1-1",
        ),
        ("cloudwatch:PutMetricData", "*"),
    ]
    assert sorted(s3.keys) == sorted(
        [
            LAYOUT.bundle_key(code.sha256),
            channel_key + "part-0.csv",
            LAYOUT.channel_manifest_key(channel_key.rstrip("/").rsplit("/", 1)[-1]),
            LAYOUT.model_key(hashlib.sha256(model.read_bytes()).hexdigest()),
        ]
    )
    assert request["VpcConfig"] == {"Subnets": SUBNETS, "SecurityGroupIds": GROUPS}
    ec2 = "arn:aws:ec2:us-east-1:123456789012"
    accesses += [
        ("ec2:CreateNetworkInterface", f"{ec2}:network-interface/eni-1"),
        ("ec2:CreateNetworkInterface", f"{ec2}:subnet/{SUBNETS[0]}"),
        ("ec2:CreateNetworkInterface", f"{ec2}:security-group/{GROUPS[0]}"),
        ("ec2:CreateNetworkInterfacePermission", f"{ec2}:network-interface/eni-1"),
        ("ec2:DeleteNetworkInterface", f"{ec2}:network-interface/eni-1"),
        ("ec2:DeleteNetworkInterfacePermission", f"{ec2}:network-interface/eni-1"),
        ("ec2:DescribeNetworkInterfaces", "*"),
        ("ec2:DescribeVpcs", "*"),
        ("ec2:DescribeDhcpOptions", "*"),
        ("ec2:DescribeSubnets", "*"),
        ("ec2:DescribeSecurityGroups", "*"),
    ]
    return accesses


@pytest.fixture(scope="module")
def vpc_plan():
    from aiops.infra.config import parse
    from aiops.infra.offline import plan

    from .conftest import merged

    return plan(parse(merged(network={"subnetIds": SUBNETS, "securityGroupIds": GROUPS}), stack="test"))


def test_every_access_jobs_and_endpoints_make_is_allowed(vpc_plan, tmp_path):
    documents = _role_documents(vpc_plan)
    denied = [
        (a, r) for a, r in _what_jobs_and_endpoints_do(vpc_plan, tmp_path) if not _allowed(documents, a, r)
    ]
    assert denied == []


@pytest.mark.parametrize(
    "action,key",
    [
        ("s3:GetObject", "secrets/db.json"),  # outside the layout
        ("s3:GetObject", "aiops/code/x/sourcedir.tar.gz"),  # the old, unprefixed-by-contract layout
        ("s3:PutObject", LAYOUT.bundle_key("f" * 64)),  # jobs never rewrite a content-addressed bundle
        ("s3:PutObject", LAYOUT.model_key("f" * 64)),  # nor a model package
        ("s3:PutObject", LAYOUT.channel_prefix("f" * 64) + "part-0.csv"),  # nor a channel
        ("s3:DeleteObject", LAYOUT.checkpoint_prefix("job-1") + "epoch-3.pt"),
    ],
)
def test_keys_outside_what_the_role_needs_are_denied(vpc_plan, action, key):
    bucket = vpc_plan.outputs["bucket"]
    assert not _allowed(_role_documents(vpc_plan), action, f"arn:aws:s3:::{bucket}/{key}")


def test_a_stack_without_async_inference_grants_none_of_its_prefixes(vpc_plan):
    """The async-inference prefixes are the role's only in a stack with asyncInference on
    (tests/infra/test_scale_to_zero.py checks that stack's grants)."""
    documents = _role_documents(vpc_plan)
    arn = f"arn:aws:s3:::{vpc_plan.outputs['bucket']}"
    for action, key in (
        ("s3:GetObject", LAYOUT.async_input_key("f" * 64)),
        ("s3:PutObject", f"{LAYOUT.async_output}x"),
        ("s3:PutObject", f"{LAYOUT.async_failures}x"),
    ):
        assert not _allowed(documents, action, f"{arn}/{key}"), (action, key)


def test_every_statement_is_needed(vpc_plan, tmp_path):
    """Least privilege, checked the other way: drop any one statement and some access is denied,
    named by its action and resource."""
    (document,) = _role_documents(vpc_plan)
    accesses = _what_jobs_and_endpoints_do(vpc_plan, tmp_path)
    for i, statement in enumerate(document["Statement"]):
        rest = {**document, "Statement": document["Statement"][:i] + document["Statement"][i + 1 :]}
        denied = [(a, r) for a, r in accesses if not _allowed([rest], a, r)]
        assert denied, f"statement {statement.get('Sid')} is not needed by any access"


def test_without_a_vpc_the_role_has_no_ec2_permissions(full_plan):
    (document,) = _role_documents(full_plan)
    assert not any(str(s["Action"]).count("ec2:") for s in document["Statement"])
    assert (
        "subnetIds" not in full_plan.outputs
        and full_plan.outputs["logGroup"] == "/aws/sagemaker/TrainingJobs"
    )


def test_vpc_outputs_are_exported_and_used_by_the_model(vpc_plan):
    assert vpc_plan.outputs["subnetIds"] == SUBNETS and vpc_plan.outputs["securityGroupIds"] == GROUPS
    model = vpc_plan.one("aws:sagemaker/model:Model").inputs
    assert model["vpcConfig"] == {"subnets": SUBNETS, "securityGroupIds": GROUPS}
    assert "enableNetworkIsolation" not in model
    # every output the program exports is a StackOutputs field (the contract has no unknown names)
    assert set(vpc_plan.outputs) <= {f.alias for f in StackOutputs.model_fields.values()}


def test_the_program_outputs_are_the_stack_outputs_field_by_field():
    from dataclasses import fields

    from aiops.infra.program import ProgramOutputs

    assert [f.name for f in fields(ProgramOutputs)] == list(StackOutputs.model_fields)


def test_network_isolation_on_the_endpoint_model(make_plan):
    model = make_plan(endpoint={"networkIsolation": True}).one("aws:sagemaker/model:Model").inputs
    assert model["enableNetworkIsolation"] is True


def test_data_capture_goes_to_the_layout_prefix(full_plan):
    config = full_plan.one("aws:sagemaker/endpointConfiguration:EndpointConfiguration").inputs
    assert config["dataCaptureConfig"]["destinationS3Uri"] == LAYOUT.data_capture_uri(
        full_plan.outputs["bucket"]
    )


@pytest.mark.parametrize(
    "network,expected",
    [
        ({"subnetIds": SUBNETS}, "set both subnetIds and securityGroupIds"),
        ({"subnetIds": ["vpc-1"], "securityGroupIds": GROUPS}, "allowed: subnet IDs"),
    ],
)
def test_bad_network_config_is_one_line(make_config, network, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        make_config(network=network)
    assert "aiops:network" in str(err.value) and err.value.exit_code == 2


# ------------------------------------------------------------------------- the contract itself


def test_layout_prefixes_are_distinct_and_nested_nowhere():
    prefixes = [v for v in S3Layout().model_dump().values()]
    assert len(set(prefixes)) == len(prefixes) and all(p.endswith("/") for p in prefixes)
    assert set(LAYOUT.all_prefixes) == set(prefixes)


def test_outputs_round_trip_and_require(tmp_path):
    path = write_outputs(tmp_path, "prod", {"bucket": "b", "roleArn": "r", "subnetIds": ["s"], "extra": 1})
    assert path == tmp_path / "stacks" / "prod.outputs.json"
    outputs = read_outputs(tmp_path, "prod")
    assert outputs.bucket == "b" and outputs.role_arn == "r" and outputs.subnet_ids == ["s"]
    assert outputs.require("bucket", "role_arn") is outputs
    with pytest.raises(
        ConfigError, match=r"stack 'prod' has no output 'kmsKeyArn'.*aiops deploy --stack prod"
    ):
        outputs.require("kms_key_arn")
    assert read_outputs(tmp_path, "never").bucket is None


def test_one_stack_rule():
    class Settings:
        stack = "prod"

    assert resolve_stack("qa", Settings()) == "qa"
    assert resolve_stack(None, Settings()) == "prod"
    assert resolve_stack(None, None) == "dev"
