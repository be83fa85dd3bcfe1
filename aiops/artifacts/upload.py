"""A model's content-addressed uploads to the stack's bucket (`aiops deploy --model`), SSE-KMS with
the stack's key, through the one uploader (`aiops.s3objects`):

- a ``model.tar.gz`` under ``models/sha256/<sha256>/model.tar.gz`` (``aiops.stack.S3Layout.model_key``:
  same content, same key, so uploads are idempotent);
- a folder of model files, deployed uncompressed: a large model is deployed as its files, not a
  ``model.tar.gz`` (taring and untaring 10-100 GB is what makes the download outlast the container's
  health check). The endpoint's model then uses ``ModelDataSource.S3DataSource`` with
  ``S3DataType=S3Prefix`` and ``CompressionType=None``. The folder goes under a content-addressed
  prefix, ``models/sha256/<tree digest>/`` (``aiops.stack.S3Layout.model_prefix``; the digest of every
  file's path and sha256), so a prefix never changes under a running endpoint. Files already there are
  skipped (same tree: nothing moves); files unchanged since the previous model prefix (same path, same
  sha256 in the object's ``sha256`` metadata) are copied inside S3 instead of uploaded again.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiops import aws
from aiops.archive import file_sha256
from aiops.errors import UsageError
from aiops.names import split_s3_uri
from aiops.s3objects import DEFAULT_CONCURRENCY, NOT_FOUND, UploadBatch, upload_once
from aiops.stack import LAYOUT
from aiops.tensorstats import WEIGHT_SUFFIXES, _is_weights


def upload(path: Path, *, bucket: str, kms_key_arn: str | None, s3: Any) -> str:
    """Upload a model.tar.gz under its content hash (skipped when that key exists); SSE-KMS with the
    stack's key. The s3:// URI."""
    key = LAYOUT.model_key(file_sha256(path))
    with aws.translate_errors(f"uploading s3://{bucket}/{key}"):  # 403, 5xx: one line naming the object
        return upload_once(s3, bucket, key, Path(path), kms_key=kms_key_arn, label="model").uri


def folder_files(path: Path) -> list[tuple[str, Path]]:
    """The files of a model folder that are uploaded: `aiops.files.select_model_folder` (the policy
    `model package` uses: a link out of the folder is refused with one line, secrets left out)."""
    from aiops.files import select_model_folder

    selection = select_model_folder(Path(path), what="--model folder")
    return sorted(selection.entries.items())


def is_weights_folder(path: Path) -> bool:
    return Path(path).is_dir() and any(_is_weights(rel) for rel, _ in folder_files(path))


def tree_digest(entries: list[tuple[str, str]]) -> str:
    """sha256 over ``path<TAB>sha256`` lines, sorted: the same files give the same prefix."""
    text = "".join(f"{rel}\t{digest}\n" for rel, digest in sorted(entries))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class FolderUpload:
    uri: str
    uploaded: int
    copied: int
    present: int
    bytes_uploaded: int
    total_bytes: int


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's HEAD, or None when it is not there."""
    with aws.translate_errors(f"checking s3://{bucket}/{key}"):
        try:
            return s3.head_object(Bucket=bucket, Key=key)
        except Exception as err:
            if aws.error_code(err) in NOT_FOUND:
                return None
            raise


def upload_folder(
    path: Path,
    *,
    bucket: str,
    kms_key_arn: str | None,
    s3: Any,
    previous_uri: str | None = None,
    max_concurrency: int = DEFAULT_CONCURRENCY,
) -> FolderUpload:
    """Upload the folder's files under their tree digest: each file is read once for its hash and
    once to upload it. The HEADs (is it there? unchanged since the previous prefix?) and then the
    uploads and copies run ``max_concurrency`` requests at a time (one `UploadBatch`); the first
    failure stops the rest and is raised as one line naming the object."""
    files = folder_files(path)
    if not any(_is_weights(rel) for rel, _ in files):
        raise UsageError(
            f"--model {path}: no weights in that folder (looked "
            f"for {', '.join('*' + s for s in WEIGHT_SUFFIXES)})"
        )
    digests = {rel: file_sha256(p) for rel, p in files}
    prefix = LAYOUT.model_prefix(tree_digest(list(digests.items())))
    prev_bucket, prev_prefix = (
        split_s3_uri(previous_uri) if previous_uri and previous_uri.endswith("/") else (None, None)
    )
    previous = prev_prefix if prev_bucket == bucket else None

    def plan(rel: str) -> tuple[str, dict[str, Any] | None]:
        """What a file needs: present, copy (with the previous object's HEAD) or upload."""
        if _head(s3, bucket, prefix + rel) is not None:
            return "present", None
        if previous:
            head = _head(s3, bucket, previous + rel)
            if head is not None and (head.get("Metadata") or {}).get("sha256") == digests[rel]:
                return "copy", head
        return "upload", None

    with ThreadPoolExecutor(max_workers=max_concurrency) as pool:
        try:
            plans = list(pool.map(plan, [rel for rel, _ in files]))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the first failed check stops the ones not started
            raise
    counts = dict.fromkeys(("present", "copy", "upload"), 0)
    sent = 0
    with UploadBatch(s3, bucket, kms_key=kms_key_arn, max_concurrency=max_concurrency) as batch:
        for (rel, p), (what, head) in zip(files, plans, strict=True):
            counts[what] += 1
            if what == "copy" and head is not None and previous:
                # unchanged since the previous model: copied inside S3 (multipart for large files)
                batch.copy(
                    prefix + rel,
                    previous + rel,
                    size=int(head["ContentLength"]),
                    etag=head.get("ETag"),
                    metadata={"sha256": digests[rel]},
                )
            elif what == "upload":
                sent += batch.upload(prefix + rel, p, metadata={"sha256": digests[rel]}, sha256=digests[rel])
    return FolderUpload(
        f"s3://{bucket}/{prefix}",
        counts["upload"],
        counts["copy"],
        counts["present"],
        sent,
        sum(p.stat().st_size for _, p in files),
    )
