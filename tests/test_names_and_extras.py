"""aiops.names (the one place for name and URI patterns) and aiops.extras (the one missing-extra line)."""

from __future__ import annotations

import pytest

from aiops import extras, names
from aiops.errors import UsageError


@pytest.mark.parametrize(
    "name, ok",
    [
        ("a", True),
        ("digits-cnn-1", True),
        ("a--b", True),
        ("A" * 63, True),
        ("A" * 64, False),
        ("-a", False),
        ("a-", False),
        ("a_b", False),
        ("a.b", False),
        ("", False),
    ],
)
def test_sagemaker_names(name: str, ok: bool) -> None:
    assert names.is_sagemaker_name(name) is ok


@pytest.mark.parametrize(
    "uri, ok",
    [
        ("s3://my-bucket/model.tar.gz", True),
        ("s3://b.example-1/p/q/", True),
        ("s3://Bad_Bucket/k", False),
        ("s3://ab/k", False),
        ("s3://bucket", False),
        ("s3://bucket/", False),
        ("https://bucket/k", False),
    ],
)
def test_s3_uris(uri: str, ok: bool) -> None:
    assert names.is_s3_uri(uri) is ok


def test_the_rooms_use_the_one_pattern():
    from aiops.artifacts import endpoint, s3prefix

    assert endpoint.S3_URI is names.S3_URI
    assert names.split_s3_uri("s3://b/p/q/") == ("b", "p/q/") == s3prefix.split_s3_uri("s3://b/p/q/")
    with pytest.raises(UsageError, match="malformed S3 URI"):
        endpoint.classify("s3://Bad_Bucket/k")
    with pytest.raises(UsageError, match="not a training job name"):
        endpoint.classify("job:bad_name")


def test_one_line_for_a_missing_extra():
    err = extras.require_extra("plot", "plotting", missing="matplotlib")
    assert isinstance(err, UsageError) and err.exit_code == 2
    assert str(err) == "plotting needs matplotlib, which is not installed: pip install 'aiops[plot]'."
    assert str(extras.require_extra("images", "x", instead="pass --image-uri")).endswith(
        "pip install 'aiops[images]', or pass --image-uri."
    )
    with pytest.raises(
        UsageError,
        match=r"^--format onnx needs no_such_module_x, which is not installed: "
        r"pip install 'aiops\[onnx\]'\.$",
    ):
        extras.check_extra("onnx", "--format onnx", "json", "no_such_module_x")
    extras.check_extra("aws", "aws", "json")  # present: nothing raised


def test_a_missing_module_names_its_extra():
    line = extras.for_missing_module(ModuleNotFoundError("No module named 'pulumi_aws'", name="pulumi_aws"))
    assert line == "this needs pulumi_aws, which is not installed: pip install 'aiops[infra]'."
    assert "pip install torch" in extras.for_missing_module(ModuleNotFoundError(name="torch.nn"))
    assert extras.for_missing_module(ModuleNotFoundError(name="some_private_module")) is None
