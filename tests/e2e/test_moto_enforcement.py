"""The emulated account judges S3 requests by the IAM actions AWS documents for them.

A role allowed only ``s3:GetObject`` on a prefix and ``s3:ListBucket`` on its bucket (the shape of the
stack's execution role) must be able to do what it does on AWS: HEAD and download an object (boto3's
``download_file`` HEADs first), list the bucket; and nothing beyond. moto 5.2.6 judged HEAD as
``s3:HeadObject`` and listing as ``s3:ListObjectsV2``, actions that do not exist on AWS, and denied the
journey's reads; this test fails on any moto whose judgment drifts from AWS's again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from emulator import ACCOUNT, Credentials, MotoAccount

BUCKET = "enforced-bucket"


def _role_client(account: MotoAccount, statements: list[dict]) -> object:
    iam = account.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/admin"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    name = f"reader-{len(iam.list_roles()['Roles'])}"
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=name,
        PolicyName="reads",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    c = account.client("sts").assume_role(RoleArn=arn, RoleSessionName="reader")["Credentials"]
    return account.client("s3", Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]))


@pytest.fixture
def seeded(account: MotoAccount) -> MotoAccount:
    s3 = account.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="code/bundle.tar.gz", Body=b"bundle")
    s3.put_object(Bucket=BUCKET, Key="secret/other", Body=b"other")
    return account


def _denied(call: object) -> bool:
    try:
        call()
    except ClientError as err:
        return err.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return False


def test_a_reader_role_heads_downloads_and_lists_as_on_aws(seeded: MotoAccount, tmp_path: Path) -> None:
    s3 = _role_client(
        seeded,
        [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/code/*"},
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"},
        ],
    )
    assert s3.head_object(Bucket=BUCKET, Key="code/bundle.tar.gz")["ContentLength"] == 6
    s3.download_file(BUCKET, "code/bundle.tar.gz", str(tmp_path / "bundle"))
    assert (tmp_path / "bundle").read_bytes() == b"bundle"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="code/")["Contents"]]
    assert keys == ["code/bundle.tar.gz"]
    # ... and nothing outside what the policy names
    assert _denied(lambda: s3.head_object(Bucket=BUCKET, Key="secret/other"))
    assert _denied(lambda: s3.get_object(Bucket=BUCKET, Key="secret/other"))
    assert _denied(lambda: s3.put_object(Bucket=BUCKET, Key="code/new", Body=b"x"))


def test_a_role_without_get_object_cannot_head_or_download(seeded: MotoAccount, tmp_path: Path) -> None:
    s3 = _role_client(
        seeded,
        [
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"},
        ],
    )
    assert _denied(lambda: s3.head_object(Bucket=BUCKET, Key="code/bundle.tar.gz"))
    assert _denied(lambda: s3.download_file(BUCKET, "code/bundle.tar.gz", str(tmp_path / "bundle")))
    assert not (tmp_path / "bundle").exists()


def test_listing_needs_list_bucket(seeded: MotoAccount) -> None:
    s3 = _role_client(
        seeded,
        [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/code/*"},
        ],
    )
    assert _denied(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix="code/"))
