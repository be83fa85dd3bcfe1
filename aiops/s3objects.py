"""The one content-addressed S3 uploader: look before uploading, encrypt with the stack's key.

Code bundles, channels (training/uploads.py) and model packages (infra/artifacts.py) all upload
through ``upload_once`` under keys built by ``aiops.stack.S3Layout``: the same content gets the
same key, so a second upload of it is a HEAD and nothing more.

Takes a boto3 S3 client; imports boto3 only inside ``transfer_config``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

NOT_FOUND = ("404", "NoSuchKey", "NotFound")
CHUNK = 8 * 1024 * 1024

Progress = Callable[[str, int, int], None]  # (label, bytes done, bytes total)


@dataclass(frozen=True)
class UploadResult:
    uri: str
    uploaded_bytes: int  # 0 when the content was already there


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    """True when the object is there; False on 404; any other error (403, 5xx) is raised."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as err:  # botocore's ClientError, without importing botocore here
        from aiops.aws import error_code

        if error_code(err) in NOT_FOUND:
            return False
        raise


def encryption_args(kms_key_arn: str | None) -> dict[str, str]:
    """SSE-KMS with the stack's key when we know it; otherwise the bucket's default encryption applies."""
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_arn} if kms_key_arn else {}


def transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=8)


def upload_once(s3: Any, bucket: str, key: str, source: bytes | Path, *, kms_key: str | None = None,
                progress: Progress | None = None, label: str = "", check: bool = True,
                metadata: dict[str, str] | None = None) -> UploadResult:
    """Upload ``source`` (bytes or a file) to ``key`` unless it is already there (multipart, parallel).

    ``check=False`` skips the HEAD (the caller has looked already, e.g. at a channel's manifest).
    ``metadata``: user metadata on the object (``x-amz-meta-*``), e.g. its sha256.
    """
    uri = f"s3://{bucket}/{key}"
    if check and object_exists(s3, bucket, key):
        return UploadResult(uri, 0)
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    done = 0

    def callback(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(label or key, done, size)

    extra: dict[str, Any] = encryption_args(kms_key)
    if metadata:
        extra["Metadata"] = dict(metadata)
    if isinstance(source, bytes):
        s3.upload_fileobj(io.BytesIO(source), bucket, key, ExtraArgs=extra, Callback=callback,
                          Config=transfer_config())
    else:
        s3.upload_file(os.fspath(source), bucket, key, ExtraArgs=extra, Callback=callback, Config=transfer_config())
    return UploadResult(uri, size)
