"""Content-addressed uploads of a job's code bundle and local channels (keys from aiops.stack.S3Layout)."""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from aiops import files
from aiops.archive import file_sha256
from aiops.s3objects import Progress, UploadBatch, UploadResult, object_exists, upload_once
from aiops.stack import LAYOUT, S3Layout

__all__ = ["UploadResult", "upload_bundle", "upload_channel", "channel_manifest", "channel_selection"]


def upload_bundle(
    s3: Any,
    bucket: str,
    data: bytes,
    sha256: str,
    *,
    kms_key: str | None = None,
    progress: Progress | None = None,
    layout: S3Layout = LAYOUT,
    batch: UploadBatch | None = None,
) -> UploadResult:
    """The code bundle under its hash, unless it is there already. With ``batch`` (a submission's,
    see `upload_channel`) it is queued there and lands when the batch finishes."""
    key = layout.bundle_key(sha256)
    if batch is None:
        return upload_once(s3, bucket, key, data, kms_key=kms_key, progress=progress, label="code")
    if batch.bucket != bucket:
        raise ValueError(f"the code bundle: the batch uploads to {batch.bucket}, not {bucket}")
    uri = f"s3://{bucket}/{key}"
    if object_exists(s3, bucket, key):
        return UploadResult(uri, 0)
    return UploadResult(uri, batch.upload(key, data, sha256=sha256))


def channel_selection(source: Path, *, name: str = "", follow_symlinks: bool = False) -> files.Selection:
    """A channel's files by the one policy (`aiops.files`), as a local run stages them: nothing is
    ignored (data, not code), and a symlink leaving the channel is refused unless followed."""
    return files.select(
        source,
        follow_symlinks=follow_symlinks,
        ignore_files=False,
        exclude_secrets=False,
        what=f"channel {name!r}" if name else "channel",
    )


def channel_manifest(
    source: Path, *, selection: files.Selection | None = None, follow_symlinks: bool = False
) -> dict[str, Any]:
    """Relative path -> (size, sha256) of every file of a local channel, and the hash of it all."""
    selection = selection or channel_selection(source, follow_symlinks=follow_symlinks)
    entries = {
        rel: {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for rel, path in sorted(selection.entries.items())
    }
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "files": entries}


def upload_channel(
    s3: Any,
    bucket: str,
    name: str,
    source: Path,
    *,
    kms_key: str | None = None,
    progress: Progress | None = None,
    layout: S3Layout = LAYOUT,
    selection: files.Selection | None = None,
    follow_symlinks: bool = False,
    batch: UploadBatch | None = None,
) -> UploadResult:
    """Upload a local file or folder under its content hash; skip when present.

    Which files: ``selection`` (the job's, from `local.prepare`), else `channel_selection` — the
    same policy as a local run's channel, so a link out of the channel is refused both ways.

    Every file is read once to hash it (the manifest, whose hash names the prefix, so no file can
    be sent before all are hashed), then once to upload it, its sha256 sent along for S3 to check.
    The manifest object is written last, beside the data prefix (not inside it, where the container
    would download it into the channel), and only once every file has landed: its presence means
    the upload finished.

    ``batch``: a submission's shared `UploadBatch` (its client, key, progress and request bound):
    the files are queued there, and the batch writes the manifest after all its objects; without
    one the channel gets a batch of its own and is uploaded before this returns.
    """
    if batch is not None and batch.bucket != bucket:
        raise ValueError(f"channel {name!r}: the batch uploads to {batch.bucket}, not {bucket}")
    selection = selection or channel_selection(source, name=name, follow_symlinks=follow_symlinks)
    manifest = channel_manifest(source, selection=selection)
    prefix = layout.channel_prefix(manifest["sha256"])
    uri = layout.uri(bucket, prefix)
    manifest_key = layout.channel_manifest_key(manifest["sha256"])
    if object_exists(s3, bucket, manifest_key):
        return UploadResult(uri, 0)
    total = sum(f["size"] for f in manifest["files"].values())
    into = batch if batch is not None else UploadBatch(s3, bucket, kms_key=kms_key, progress=progress)
    with into if batch is None else nullcontext():  # a batch of its own finishes here, a shared one later
        for rel, entry in manifest["files"].items():
            into.upload(f"{prefix}{rel}", selection.entries[rel], size=entry["size"], sha256=entry["sha256"])
        into.put_last(manifest_key, json.dumps(manifest).encode())
    return UploadResult(uri, total)
