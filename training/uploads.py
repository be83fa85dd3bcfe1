"""Content-addressed uploads to S3: a bundle or a channel is uploaded once, then found by its hash."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiops.archive import file_sha256
from aiops.s3objects import encryption_args, object_exists

CODE_PREFIX = "aiops/code"
DATA_PREFIX = "aiops/data"
CHUNK = 8 * 1024 * 1024

Progress = Callable[[str, int, int], None]  # (label, bytes done, bytes total)


@dataclass(frozen=True)
class UploadResult:
    uri: str
    uploaded_bytes: int  # 0 when the content was already there


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=8)


def upload_bundle(s3: Any, bucket: str, data: bytes, sha256: str, *, kms_key: str | None = None,
                  progress: Progress | None = None) -> UploadResult:
    import io

    key = f"{CODE_PREFIX}/{sha256}/sourcedir.tar.gz"
    uri = f"s3://{bucket}/{key}"
    if object_exists(s3, bucket, key):
        return UploadResult(uri, 0)
    done = 0

    def callback(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("code", done, len(data))

    s3.upload_fileobj(io.BytesIO(data), bucket, key, ExtraArgs=encryption_args(kms_key), Callback=callback,
                      Config=_transfer_config())
    return UploadResult(uri, len(data))


def channel_manifest(source: Path) -> dict[str, Any]:
    """Relative path -> (size, sha256) of every file of a local channel, and the hash of it all."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    root = source.parent if source.is_file() else source
    entries = {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "files": entries}


def upload_channel(s3: Any, bucket: str, name: str, source: Path, *, kms_key: str | None = None,
                   progress: Progress | None = None) -> UploadResult:
    """Upload a local file or folder under its content hash (multipart, parallel); skip when present.

    The manifest object is written last, beside the data prefix (not inside it, where the container
    would download it into the channel): its presence means the upload finished.
    """
    manifest = channel_manifest(source)
    prefix = f"{DATA_PREFIX}/{manifest['sha256']}"
    uri = f"s3://{bucket}/{prefix}/"
    manifest_key = f"{prefix}.manifest.json"
    if object_exists(s3, bucket, manifest_key):
        return UploadResult(uri, 0)
    root = source.parent if source.is_file() else source
    total = sum(f["size"] for f in manifest["files"].values())
    done = 0

    def callback(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(name, done, total)

    config = _transfer_config()
    for rel in manifest["files"]:
        s3.upload_file(os.fspath(root / rel), bucket, f"{prefix}/{rel}", ExtraArgs=encryption_args(kms_key),
                       Callback=callback, Config=config)
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode(), **encryption_args(kms_key))
    return UploadResult(uri, total)
