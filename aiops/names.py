"""The one place for the name and URI patterns the rooms share (SageMaker names, S3 URIs, secret ARNs)."""

from __future__ import annotations

import re

#: CreateTrainingJob's TrainingJobName pattern and length (CreateEndpoint's EndpointName, CreateModel's
#: ModelName... use the same): 1-63 letters, digits and '-', starting and ending with a letter or digit
SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
#: ``s3://bucket/key``: a DNS-style bucket name (3-63 lowercase letters, digits, '.', '-') and a key
S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(\S+)$")
#: a Secrets Manager secret's full ARN: partition, region, account, ``secret:``, the name (letters, digits,
#: ``/_+=.@-``) and the 6 characters Secrets Manager appends; an IAM policy names exactly this
SECRET_ARN = re.compile(
    r"^arn:aws(-cn|-us-gov|-iso|-iso-[a-z])?:secretsmanager:[a-z]{2}(-[a-z]+)+-\d:\d{12}:secret:[A-Za-z0-9/_+=.@-]+"
    r"-[A-Za-z0-9]{6}$"
)


def is_secret_arn(arn: str) -> bool:
    return SECRET_ARN.match(arn) is not None


def is_sagemaker_name(name: str) -> bool:
    return SAGEMAKER_NAME.match(name) is not None


def is_s3_uri(uri: str) -> bool:
    return S3_URI.match(uri) is not None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key`` (the key may be empty or a prefix); no validation."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key
