"""Content-addressed uploads of a job's code bundle and local channels (keys from aiops.stack.S3Layout)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from aiops.archive import file_sha256
from aiops.s3objects import Progress, UploadResult, encryption_args, object_exists, upload_once
from aiops.stack import LAYOUT, S3Layout

__all__ = ["UploadResult", "upload_bundle", "upload_channel", "channel_manifest"]


def upload_bundle(s3: Any, bucket: str, data: bytes, sha256: str, *, kms_key: str | None = None,
                  progress: Progress | None = None, layout: S3Layout = LAYOUT) -> UploadResult:
    return upload_once(s3, bucket, layout.bundle_key(sha256), data, kms_key=kms_key, progress=progress, label="code")


def channel_manifest(source: Path) -> dict[str, Any]:
    """Relative path -> (size, sha256) of every file of a local channel, and the hash of it all."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    root = source.parent if source.is_file() else source
    entries = {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "files": entries}


def upload_channel(s3: Any, bucket: str, name: str, source: Path, *, kms_key: str | None = None,
                   progress: Progress | None = None, layout: S3Layout = LAYOUT) -> UploadResult:
    """Upload a local file or folder under its content hash; skip when present.

    The manifest object is written last, beside the data prefix (not inside it, where the container
    would download it into the channel): its presence means the upload finished.
    """
    manifest = channel_manifest(source)
    prefix = layout.channel_prefix(manifest["sha256"])
    uri = layout.uri(bucket, prefix)
    manifest_key = layout.channel_manifest_key(manifest["sha256"])
    if object_exists(s3, bucket, manifest_key):
        return UploadResult(uri, 0)
    root = source.parent if source.is_file() else source
    total = sum(f["size"] for f in manifest["files"].values())
    done_before = 0

    def overall(label: str, done: int, _size: int) -> None:
        if progress:
            progress(name, done_before + done, total)

    for rel, entry in manifest["files"].items():
        upload_once(s3, bucket, f"{prefix}{rel}", root / rel, kms_key=kms_key, progress=overall, check=False)
        done_before += entry["size"]
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode(), **encryption_args(kms_key))
    return UploadResult(uri, total)
