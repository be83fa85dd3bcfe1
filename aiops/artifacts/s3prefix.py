"""A model that is an S3 prefix of files (`aiops deploy --model s3://bucket/prefix/`, or the prefix a
folder was uploaded to): what it holds, and its tensor sizes without downloading it.

A prefix must hold weights (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``); its size sets the
start-up timeouts and the volume (``endpoint.modelSizeGb``), and its tensor sizes, read with ranged GETs
(safetensors headers; a ``torch.save`` archive's directory and pickle), feed the GPU-fit check.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Any

from aiops import aws
from aiops.errors import UsageError
from aiops.names import split_s3_uri
from aiops.tensorstats import (
    MAX_HEADER,
    WEIGHT_SUFFIXES,
    TensorStats,
    _is_weights,
    safetensors_stats,
    state_dict_stats,
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
