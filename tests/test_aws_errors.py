"""aiops.aws.translate_errors: the one way every AWS caller turns botocore/boto3/s3transfer errors
into one line; errors come from real botocore clients (Stubber) and the real exception classes."""

from __future__ import annotations

import pytest

pytest.importorskip("boto3")

import boto3  # noqa: E402
from botocore.stub import Stubber  # noqa: E402

from aiops import aws  # noqa: E402
from aiops.errors import AiopsError, UsageError  # noqa: E402


def _s3():
    return boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="y").client(
        "s3", region_name="us-east-1"
    )


def test_a_client_error_becomes_one_line_naming_the_action():
    s3 = _s3()
    with Stubber(s3) as stub:
        stub.add_client_error(
            "head_object",
            service_error_code="AccessDenied",
            http_status_code=403,
            service_message="User: x is not authorized to perform: s3:GetObject",
        )
        with pytest.raises(AiopsError) as err:
            with aws.translate_errors("checking s3://b/k"):
                s3.head_object(Bucket="b", Key="k")
    assert str(err.value).startswith("checking s3://b/k: access denied") and "s3:GetObject" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_validation_is_a_usage_error_and_the_hint_and_a_late_action_are_kept():
    s3 = _s3()
    done = []
    with Stubber(s3) as stub:
        stub.add_client_error(
            "get_object", service_error_code="ValidationException", service_message="bad key"
        )
        with pytest.raises(UsageError) as err:
            with aws.translate_errors(
                lambda: f"reading after {len(done)} parts", hint="Or pass another key."
            ):
                done.append(1)
                s3.get_object(Bucket="b", Key="k")
    assert str(err.value) == "reading after 1 parts: AWS rejected the request: bad key Or pass another key."


def test_credentials_and_transfer_errors_are_aws_errors_too():
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import NoCredentialsError
    from s3transfer.exceptions import RetriesExceededError

    with pytest.raises(UsageError, match="^uploading: no AWS credentials found"):
        with aws.translate_errors("uploading"):
            raise NoCredentialsError()
    for err in (S3UploadFailedError("failed"), RetriesExceededError(OSError("reset"))):
        assert aws.is_aws_error(err)
        with pytest.raises(AiopsError, match="^copying: "):
            with aws.translate_errors("copying"):
                raise err


def test_anything_else_passes_through_unchanged():
    with pytest.raises(KeyError):
        with aws.translate_errors("x"):
            raise KeyError("k")
    original = UsageError("already one line")
    with pytest.raises(UsageError) as err:
        with aws.translate_errors("x"):
            raise original
    assert err.value is original
    assert not aws.is_aws_error(ValueError()) and aws.error_code(ValueError()) == ""


def test_error_code_reads_a_client_error():
    s3 = _s3()
    with Stubber(s3) as stub:
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        try:
            s3.head_object(Bucket="b", Key="k")
        except Exception as err:  # noqa: BLE001
            assert aws.error_code(err) == "404"
        else:
            raise AssertionError("the stubbed error was not raised")


def test_sessions_share_one_model_loader_but_read_their_own_credentials(monkeypatch, tmp_path):
    """Every client reads botocore's service models through one loader (each new loader would parse
    the same JSON again); credentials and region are still each session's own, read when it is made."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    first = aws.client("sagemaker", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second")
    second = aws.client("s3", "us-east-1")
    assert first.meta.region_name == "eu-west-1" and second.meta.region_name == "us-east-1"
    assert first._request_signer._credentials.access_key == "first"
    assert second._request_signer._credentials.access_key == "second"
    loaders = {id(aws.session()._session.get_component("data_loader")) for _ in range(3)}
    assert len(loaders) == 1
    paths = aws.session()._session.get_component("data_loader").search_paths
    assert len(paths) == len(set(paths))  # boto3's resource folder once, however many sessions
    assert any(p.endswith("boto3/data") for p in paths)
    # AWS_DATA_PATH is honoured as botocore honours it: its folders are searched first
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    assert aws.session()._session.get_component("data_loader").search_paths[0] == str(tmp_path)
