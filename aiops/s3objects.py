"""The one content-addressed S3 uploader: look before uploading, encrypt with the stack's key.

Code bundles, channels (training/uploads.py), model folders and model packages
(aiops/artifacts/upload.py) upload under keys built by ``aiops.stack.S3Layout``: the same content
gets the same key, so a second upload of it is a HEAD and nothing more. One object goes through
``upload_once``; many (a submission's bundle and channels, a model folder) through one
``UploadBatch``, whose requests run concurrently, bounded across all its objects.

Takes a boto3 S3 client; imports boto3 and s3transfer only when called.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

NOT_FOUND = ("404", "NoSuchKey", "NotFound")
CHUNK = 8 * 1024 * 1024

# (label, bytes done, bytes total); an UploadBatch's label counts the objects ("12/2,001 objects")
Progress = Callable[[str, int, int], None]


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


def upload_once(
    s3: Any,
    bucket: str,
    key: str,
    source: bytes | Path,
    *,
    kms_key: str | None = None,
    progress: Progress | None = None,
    label: str = "",
    check: bool = True,
    metadata: dict[str, str] | None = None,
) -> UploadResult:
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
        s3.upload_fileobj(
            io.BytesIO(source), bucket, key, ExtraArgs=extra, Callback=callback, Config=transfer_config()
        )
    else:
        s3.upload_file(
            os.fspath(source), bucket, key, ExtraArgs=extra, Callback=callback, Config=transfer_config()
        )
    return UploadResult(uri, size)


# ---------------------------------------------------------------------------------------------
# Many objects at once

#: requests in flight for one batch. At a region's round trip (tens of ms) a small object's PUT is
#: mostly waiting, so more requests in flight than the AWS CLI's 10 keep the wire busy
#: (bench/results/upload.md); botocore's pool (``aiops.aws.MAX_POOL_CONNECTIONS``) holds as many
DEFAULT_CONCURRENCY = 32
#: requests in flight for the parts of large files and for copies (s3transfer's threads), within
#: the batch's bound: boto3's ``upload_file`` default
TRANSFER_CONCURRENCY = 10
#: how often progress is reported at most (the batch's end is always reported)
PROGRESS_INTERVAL = 0.1


class UploadBatch:
    """Many objects to one bucket, at most ``max_concurrency`` requests in flight across every
    object of the batch and every part of a large one, as ``aws s3 sync`` bounds its requests.

    An object under ``CHUNK`` is one PutObject, what boto3's ``put_object`` sends, on the batch's
    threads; a larger one and every copy go through s3transfer's ``TransferManager`` (multipart
    above ``CHUNK``, as boto3's ``upload_file``), whose requests take the same slots. Given the
    object's ``sha256`` (a channel's manifest has it), a PutObject carries it as
    ``ChecksumSHA256``: S3 checks the bytes against the hash the manifest records, and botocore
    computes no checksum of its own.

    ``upload`` and ``copy`` queue an object and return at once (the upload starts while the caller
    hashes the next channel); ``put_last`` keeps an object (a channel's manifest) until every other
    object has landed. ``finish`` waits: the first failure cancels what has not been sent, writes
    none of the ``put_last`` objects, and is raised as one line naming the object
    (``aiops.aws.translate_errors``). As a context manager the batch finishes on a clean exit and
    cancels on an exception.

    ``progress(label, bytes done, bytes total)`` is one callback for the whole batch: the label
    says the objects (``"12/2,001 objects"``), the numbers the bytes uploaded (copies inside S3
    count as objects, not bytes); it runs on the transfer threads, one call at a time, at most
    every ``PROGRESS_INTERVAL`` seconds and once at the end.
    """

    def __init__(
        self,
        s3: Any,
        bucket: str,
        *,
        kms_key: str | None = None,
        progress: Progress | None = None,
        max_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from s3transfer.manager import TransferConfig, TransferManager

        self.bucket, self._encryption, self._progress = bucket, encryption_args(kms_key), progress
        self._s3 = s3
        self._slots = threading.BoundedSemaphore(max_concurrency)
        config = TransferConfig(
            multipart_threshold=CHUNK,
            multipart_chunksize=CHUNK,
            max_request_concurrency=min(max_concurrency, TRANSFER_CONCURRENCY),
        )
        self._manager = TransferManager(_SlotClient(s3, self._slots), config)
        self._puts = ThreadPoolExecutor(max_concurrency, thread_name_prefix="aiops-upload")
        self._lock = threading.Condition()
        self._futures: list[Any] = []
        self._last: list[tuple[str, bytes]] = []
        self._failure: tuple[str, Exception] | None = None
        self._pending = 0
        self._finished = False
        self.objects_total = self.objects_done = 0
        self.bytes_total = self.bytes_done = 0
        self._reported_at = 0.0

    # -- queueing

    def upload(
        self,
        key: str,
        source: bytes | Path,
        *,
        metadata: dict[str, str] | None = None,
        size: int | None = None,
        sha256: str | None = None,
    ) -> int:
        """Queue ``source`` (bytes or a file, read when its turn comes) for ``key``; its size.
        ``size`` and ``sha256`` (hex) when the caller knows them: no stat, and S3 checks the hash."""
        if size is None:
            size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        extra: dict[str, Any] = dict(self._encryption)
        if metadata:
            extra["Metadata"] = dict(metadata)
        action = f"uploading s3://{self.bucket}/{key}"
        if size < CHUNK:
            if sha256:
                extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
            self._queue(action, size)
            future = self._puts.submit(self._put, key, source, size, extra)
            self._futures.append(future)
            future.add_done_callback(lambda done: self._done(action, done))
            return size
        body = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
        self._queue(action, size)
        subscriber = _subscriber_type()(self, action, None)
        self._futures.append(
            self._manager.upload(body, self.bucket, key, extra_args=extra, subscribers=[subscriber])
        )
        return size

    def copy(
        self,
        key: str,
        source_key: str,
        *,
        size: int,
        etag: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Queue a copy inside the bucket (multipart above ``CHUNK``) with this batch's encryption;
        ``size`` and ``etag`` from the caller's HEAD of the source spare s3transfer another one."""
        extra: dict[str, Any] = {
            **self._encryption,
            "MetadataDirective": "REPLACE",
            "Metadata": dict(metadata or {}),
        }
        source = {"Bucket": self.bucket, "Key": source_key}
        action = f"copying s3://{self.bucket}/{source_key} to {key}"
        self._queue(action, 0)
        subscriber = _subscriber_type()(self, action, (size, etag))
        self._futures.append(
            self._manager.copy(source, self.bucket, key, extra_args=extra, subscribers=[subscriber])
        )

    def put_last(self, key: str, body: bytes) -> None:
        """Write ``key`` only once every other object of the batch has landed (a manifest)."""
        self._last.append((key, body))

    def _queue(self, action: str, size: int) -> None:
        if self._failure is not None:  # stop queueing after a failure; `finish` raises it
            self._stop_and_raise()
        with self._lock:
            self._pending += 1
            self.objects_total += 1
            self.bytes_total += size

    def _put(self, key: str, source: bytes | Path, size: int, extra: dict[str, Any]) -> None:
        """One PutObject on a batch thread, holding one of the batch's request slots; a file is
        opened when its turn comes and streamed, as boto3's ``put_object(Body=file)``."""
        from concurrent.futures import CancelledError

        if self._failure is not None:  # queued before the failure: never sent
            raise CancelledError
        with self._slots:
            if isinstance(source, bytes):
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=source, **extra)
            else:
                with open(source, "rb") as handle:
                    self._s3.put_object(Bucket=self.bucket, Key=key, Body=handle, **extra)
        self._progressed(size)

    # -- what the transfer threads report

    def _progressed(self, amount: int) -> None:
        if self._progress is None:  # called per block sent: no lock taken when nobody listens
            return
        with self._lock:
            self.bytes_done += amount  # negative when botocore rewinds a body to retry it
            self._report_now()

    def _done(self, action: str, future: Any) -> None:
        try:
            future.result()
            failed: Exception | None = None
        except Exception as err:  # the transfer's own error, or its cancellation
            failed = err
        first_failure = False
        with self._lock:
            self._pending -= 1
            if failed is None:
                self.objects_done += 1
                self._report_now()
            elif self._failure is None and not _is_cancelled(failed):
                self._failure, first_failure = (action, failed), True
            if not self._pending or first_failure:  # `_wait` wakes once, not once per object
                self._lock.notify_all()
        if first_failure:  # stop the rest now: what is queued is never sent (outside the lock: a
            for other in list(self._futures):  # transfer not started yet reports its cancellation at once)
                other.cancel()

    def _report_now(self, *, final: bool = False) -> None:
        """Report under the lock, at most every PROGRESS_INTERVAL (2,000 small objects land in
        seconds: a redraw for each would cost more than their requests)."""
        now = time.monotonic()
        if self._progress is not None and (final or now - self._reported_at >= PROGRESS_INTERVAL):
            self._reported_at = now
            label = f"{self.objects_done:,}/{self.objects_total:,} objects"
            self._progress(label, self.bytes_done, self.bytes_total)

    # -- waiting

    def finish(self) -> None:
        """Wait for every object, then write the ``put_last`` ones; raise the first failure."""
        if self._finished:
            return
        try:
            self._wait()
            last, self._last = self._last, []
            for key, body in last:
                self.upload(key, body)
            self._wait()
        except BaseException:
            self._cancel()
            raise
        self._finished = True
        with self._lock:
            self._report_now(final=True)
        self._shutdown()

    def _wait(self) -> None:
        with self._lock:
            while self._pending and self._failure is None:
                self._lock.wait()
        if self._failure is not None:
            self._stop_and_raise()

    def _stop_and_raise(self) -> None:
        self._cancel()
        assert self._failure is not None
        action, error = self._failure
        from aiops import aws

        with aws.translate_errors(action):
            raise error

    def _cancel(self) -> None:
        """Cancel every transfer not yet done and wait for the requests already sent (s3transfer
        aborts an unfinished multipart upload); nothing of ``put_last`` is written."""
        if self._finished:
            return
        self._finished = True
        self._last = []
        for future in self._futures:
            future.cancel()
        self._shutdown()

    def _shutdown(self) -> None:
        self._puts.shutdown(wait=True, cancel_futures=True)
        self._manager.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self._cancel()


class _SlotClient:
    """The batch's client as its TransferManager sees it: every request takes one of the batch's
    slots, so multipart parts and copies count against the same bound as the single PUTs."""

    def __init__(self, s3: Any, slots: threading.BoundedSemaphore) -> None:
        self._s3, self._slots = s3, slots

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._s3, name)
        if name == "meta" or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._slots:
                return attribute(*args, **kwargs)

        return call


@cache
def _subscriber_type() -> type:
    """s3transfer's subscriber for a batch's transfers (a class made once: s3transfer is imported lazily)."""
    from s3transfer.subscribers import BaseSubscriber

    class BatchSubscriber(BaseSubscriber):
        def __init__(self, batch: UploadBatch, action: str, known: tuple[int, str | None] | None) -> None:
            self.batch, self.action, self.known = batch, action, known

        def on_queued(self, future: Any, **kwargs: Any) -> None:
            if self.known is not None:
                size, etag = self.known
                future.meta.provide_transfer_size(size)
                if etag:
                    future.meta.provide_object_etag(etag)

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            if self.known is None:  # an upload; a copy moves no bytes of ours
                self.batch._progressed(bytes_transferred)

        def on_done(self, future: Any, **kwargs: Any) -> None:
            self.batch._done(self.action, future)

    return BatchSubscriber


def _is_cancelled(err: Exception) -> bool:
    """A transfer cancelled after another failed: s3transfer's, or a batch thread's never started."""
    from concurrent.futures import CancelledError as NotStarted

    from s3transfer.exceptions import CancelledError

    return isinstance(err, (CancelledError, NotStarted))
