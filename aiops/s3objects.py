"""Content-addressed S3 objects: look before uploading, encrypt with the stack's key when known.

Takes a boto3 S3 client; imports nothing of boto3 itself.
"""

from __future__ import annotations

from typing import Any

NOT_FOUND = ("404", "NoSuchKey", "NotFound")


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    """True when the object is there; False on 404; any other error (403, 5xx) is raised."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as err:  # botocore's ClientError, without importing botocore here
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
        if code in NOT_FOUND:
            return False
        raise


def encryption_args(kms_key_arn: str | None) -> dict[str, str]:
    """SSE-KMS with the stack's key when we know it; otherwise the bucket's default encryption applies."""
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_arn} if kms_key_arn else {}
