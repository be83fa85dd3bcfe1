"""Uncompressed model data for `aiops deploy --model`: an ``s3://bucket/prefix/`` or a local folder.

A large model is deployed as its files, not a ``model.tar.gz`` (taring and untaring 10-100 GB is
what makes the download outlast the container's health check). The endpoint's model then uses
``ModelDataSource.S3DataSource`` with ``S3DataType=S3Prefix`` and ``CompressionType=None``.

A local folder is uploaded to the stack's bucket under a content-addressed prefix,
``models/sha256/<tree digest>/`` (``aiops.stack.S3Layout.model_prefix``; the digest of every file's path
and sha256), so a prefix never changes under a running endpoint. Files already there are skipped (same
tree: nothing moves); files unchanged since the previous model prefix (same path, same sha256 in the
object's ``sha256`` metadata) are copied inside S3 instead of uploaded again. Every object is SSE-KMS
with the stack's key.

A prefix (given or uploaded) must hold weights (``*.safetensors``, ``*.bin``, ``*.pt``,
``*.pth``); its size sets the start-up timeouts and the volume (``endpoint.modelSizeGb``), and its
tensor sizes, read with ranged GETs (safetensors headers; a ``torch.save`` archive's directory and
pickle), feed the GPU-fit check.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiops import aws
from aiops.archive import file_sha256  # noqa: F401 - re-exported for the tests
from aiops.errors import UsageError
from aiops.names import split_s3_uri
from aiops.s3objects import DEFAULT_CONCURRENCY, NOT_FOUND, UploadBatch
from aiops.stack import LAYOUT
from aiops.tensorstats import (
    MAX_HEADER,
    WEIGHT_SUFFIXES,
    TensorStats,
    _is_weights,
    safetensors_stats,
    state_dict_stats,
)


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
                sent += batch.upload(prefix + rel, p, metadata={"sha256": digests[rel]})
    return FolderUpload(
        f"s3://{bucket}/{prefix}",
        counts["upload"],
        counts["copy"],
        counts["present"],
        sent,
        sum(p.stat().st_size for _, p in files),
    )


@dataclass(frozen=True)
class PrefixListing:
    uri: str
    objects: list[tuple[str, int]]  # (key, size)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.objects)

    @property
    def weights(self) -> list[tuple[str, int]]:
        return [(k, s) for k, s in self.objects if _is_weights(k)]


def list_prefix(s3: Any, uri: str) -> PrefixListing:
    """Every object under the prefix; UsageError when it is empty or holds no weights."""
    bucket, prefix = split_s3_uri(uri)
    objects: list[tuple[str, int]] = []
    with aws.translate_errors(f"--model {uri}: listing that prefix"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects += [
                (o["Key"], int(o["Size"])) for o in page.get("Contents", []) if not o["Key"].endswith("/")
            ]
    listing = PrefixListing(uri, objects)
    if not objects:
        raise UsageError(
            f"--model {uri}: the prefix is empty; upload the model's files there (or pass a local folder)"
        )
    if not listing.weights:
        raise UsageError(
            f"--model {uri}: no weights under that prefix (looked for "
            f"{', '.join('*' + s for s in WEIGHT_SUFFIXES)}); found {len(objects)} other file(s)"
        )
    return listing


class S3RangeFile(io.RawIOBase):
    """A seekable, read-only view of one S3 object through ranged GETs: ``zipfile`` reads a
    ``torch.save`` archive's directory and its ``data.pkl`` from it, never the tensor data."""

    def __init__(self, s3: Any, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self.s3, self.bucket, self.key, self.size, self.pos = s3, bucket, key, size, 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size or not len(buffer):
            return 0
        end = min(self.size, self.pos + len(buffer)) - 1
        data = self.s3.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-{end}")[
            "Body"
        ].read()
        self.requests += 1
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def prefix_stats(s3: Any, listing: PrefixListing) -> TensorStats:
    """Tensor sizes from the prefix's weights (see ``_prefix_stats``); AWS errors as one line."""
    with aws.translate_errors(f"reading the weights' headers under {listing.uri}"):
        return _prefix_stats(s3, listing)


def _prefix_stats(s3: Any, listing: PrefixListing) -> TensorStats:
    """Tensor sizes from the prefix's weights without downloading them: a safetensors header with
    two ranged GETs; a ``torch.save`` archive's directory and pickle through ``S3RangeFile``.
    safetensors files win when both formats are there."""
    bucket, _ = split_s3_uri(listing.uri)
    total: TensorStats | None = None
    files = [(k, s) for k, s in listing.weights if k.endswith(".safetensors")]
    if not files:
        for key, size in listing.weights:
            reader = io.BufferedReader(S3RangeFile(s3, bucket, key, size), buffer_size=256 << 10)
            stats = state_dict_stats(reader, key)
            total = stats if total is None else total + stats
        if total is None:  # list_prefix refuses a prefix without weights first
            raise UsageError(f"--model {listing.uri}: no weights under that prefix")
        return total
    for key, size in files:
        head = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-7")["Body"].read()
        if len(head) < 8:
            raise UsageError(
                f"s3://{bucket}/{key}: not a safetensors file (shorter than its 8-byte header length)"
            )
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            raise UsageError(
                f"s3://{bucket}/{key}: not a safetensors file (header length {length} is impossible)"
            )
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=8-{8 + length - 1}")["Body"].read()
        stats = safetensors_stats(io.BytesIO(head + body), key, size)
        total = stats if total is None else total + stats
    assert total is not None  # files is not empty
    return total


def prefix_config_json(s3: Any, listing: PrefixListing) -> dict | None:
    """The model's ``config.json`` at the prefix's root (its shape sets the KV-cache budget)."""
    bucket, prefix = split_s3_uri(listing.uri)
    for key, size in listing.objects:
        if key == prefix + "config.json" and size < (1 << 20):
            with aws.translate_errors(f"reading s3://{bucket}/{key}"):
                data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            try:
                return json.loads(data)
            except ValueError:
                return None
    return None


def size_gb(n_bytes: int) -> float:
    """Decimal GB, rounded up to 0.1 (what endpoint.modelSizeGb holds)."""
    return max(0.1, -(-n_bytes // 100_000_000) / 10)
