"""Uploads at the speed of the wire (`aiops.s3objects.UploadBatch`): many objects at once under one
request bound shared by a whole submission, the manifest last and never after a failure, one
progress line for bytes and objects. Real moto server; requests counted and failed with botocore
hooks on the client (before-send / response-received), never timed."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
from aiops.training import bundle, uploads

from aiops.errors import AiopsError
from aiops.s3objects import DEFAULT_CONCURRENCY, UploadBatch
from aiops.stack import LAYOUT

from .conftest import BUCKET

TRANSFER_OPERATIONS = ("PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload")


class Wire:
    """What one client sends: every transfer request in order (sent / answered, with its key) and
    the most in flight at once. ``hold`` makes the first N transfer requests wait until N are in
    flight together, so a pool smaller than N fails the test instead of passing by luck."""

    def __init__(self, s3: Any, *, hold: int = 0) -> None:
        self.events: list[tuple[str, str, str]] = []  # (sent|answered, operation, key)
        self.in_flight = self.most = self.sent = 0
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(hold, timeout=30) if hold else None
        s3.meta.events.register("before-send.s3", self._sent)
        s3.meta.events.register("response-received.s3", self._answered)

    @staticmethod
    def _parse(event_name: str, url: str) -> tuple[str, str]:
        operation = event_name.rsplit(".", 1)[-1]
        return operation, url.split("?", 1)[0].split(f"/{BUCKET}/", 1)[-1]

    def _sent(self, request: Any, event_name: str, **_: Any) -> None:
        operation, key = self._parse(event_name, request.url)
        if operation not in TRANSFER_OPERATIONS:
            return
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.events.append(("sent", operation, key))
            self.sent += 1
            waiting = self._barrier is not None and self.sent <= self._barrier.parties
        if waiting:
            self._barrier.wait()  # a BrokenBarrierError here fails the upload: fewer ran at once

    def _answered(self, event_name: str, context: Any, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if operation not in TRANSFER_OPERATIONS:
            return
        with self._lock:
            self.in_flight -= 1
            self.events.append(("answered", operation, ""))

    def index(self, kind: str, key_suffix: str) -> int:
        return next(i for i, (k, _, key) in enumerate(self.events) if k == kind and key.endswith(key_suffix))


def _channel(root: Path, files: int, *, big: int = 0) -> Path:
    root.mkdir(parents=True)
    for i in range(files):
        sub = root / f"shard-{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"f-{i:03d}.bin").write_bytes(hashlib.sha256(str(i).encode()).digest() * (1 + i % 5))
    if big:
        (root / "big.bin").write_bytes(bytes(range(256)) * (big // 256))
    return root


def _manifest_key(channel: Path) -> str:
    return LAYOUT.channel_manifest_key(uploads.channel_manifest(channel)["sha256"])


def test_many_files_land_at_once_with_their_keys_content_and_the_stack_key(platform, tmp_path: Path) -> None:
    s3 = platform.boto("s3")
    key_arn = platform.boto("kms").create_key()["KeyMetadata"]["Arn"]
    channel = _channel(tmp_path / "train", DEFAULT_CONCURRENCY + 8)
    wire = Wire(s3, hold=DEFAULT_CONCURRENCY)  # the default bound reached together, never passed
    calls: list[tuple[str, int, int]] = []
    result = uploads.upload_channel(
        s3, BUCKET, "train", channel, kms_key=key_arn, progress=lambda *call: calls.append(call)
    )

    prefix = result.uri.removeprefix(f"s3://{BUCKET}/")
    files = {p.relative_to(channel).as_posix(): p for p in channel.rglob("*") if p.is_file()}
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert listed == {prefix + rel for rel in files} | {_manifest_key(channel)}
    for rel, path in files.items():
        assert s3.get_object(Bucket=BUCKET, Key=prefix + rel)["Body"].read() == path.read_bytes(), rel
    for key in listed:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn), key
    assert wire.most == DEFAULT_CONCURRENCY
    total = sum(p.stat().st_size for p in files.values())
    assert result.uploaded_bytes == total
    # one callback for the whole channel: the objects in the label, the bytes (the manifest's too) as numbers
    manifest_size = s3.head_object(Bucket=BUCKET, Key=_manifest_key(channel))["ContentLength"]
    objects, all_bytes = len(files) + 1, total + manifest_size
    assert calls[-1] == (f"{objects}/{objects} objects", all_bytes, all_bytes)
    assert all(0 <= done <= all_bytes for _, done, _ in calls)


def test_a_submission_shares_one_bound_and_writes_each_manifest_after_every_object(
    platform, tmp_path: Path
) -> None:
    s3 = platform.boto("s3")
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("print('hi')\n")
    code = bundle.build(source, "train.py")
    first = _channel(tmp_path / "a", 3)
    second = _channel(tmp_path / "b", 5, big=9 * 1024 * 1024)  # one file over 8 MiB: two parts
    wire = Wire(s3, hold=4)  # reached by the bundle and the first channel's files together
    with UploadBatch(s3, BUCKET, max_concurrency=4) as batch:
        code_up = uploads.upload_bundle(s3, BUCKET, code.data, code.sha256, batch=batch)
        ups = [
            uploads.upload_channel(s3, BUCKET, name, path, batch=batch)
            for name, path in (("a", first), ("b", second))
        ]
    assert wire.most == 4
    data_sent = [
        i for i, (kind, _, key) in enumerate(wire.events) if kind == "sent" and "manifest" not in key
    ]
    assert len(data_sent) == 1 + 3 + 5 + 4  # the big file: create, two parts, complete
    assert [op for _, op, key in wire.events if key.endswith("big.bin")].count("UploadPart") == 2
    answers = [i for i, (kind, _, _) in enumerate(wire.events) if kind == "answered"]
    for channel in (first, second):
        manifest_sent = wire.index("sent", _manifest_key(channel))
        # after every object was sent and answered
        answered_before = [i for i in answers if i < manifest_sent]
        assert manifest_sent > max(data_sent) and len(answered_before) == len(data_sent)
    assert s3.get_object(Bucket=BUCKET, Key=code_up.uri.split(f"{BUCKET}/", 1)[1])["Body"].read() == code.data
    big = s3.get_object(Bucket=BUCKET, Key=ups[1].uri.split(f"{BUCKET}/", 1)[1] + "big.bin")["Body"].read()
    assert big == (second / "big.bin").read_bytes()


def test_each_file_goes_once_with_its_manifest_hash_for_s3_to_check(platform, tmp_path: Path) -> None:
    """A small file is one PutObject carrying the sha256 the manifest records (S3 refuses bytes that
    differ from it), so botocore computes no checksum of its own; no HEAD per object."""
    import base64
    import json

    s3 = platform.boto("s3")
    channel = _channel(tmp_path / "train", 12)
    sent: list[tuple[str, str, dict[str, str]]] = []

    def record(request: Any, event_name: str, **_: Any) -> None:
        key = request.url.split("?", 1)[0].split(f"/{BUCKET}/", 1)[-1]
        sent.append((event_name.rsplit(".", 1)[-1], key, {k.lower(): v for k, v in request.headers.items()}))

    s3.meta.events.register("before-send.s3", record)
    result = uploads.upload_channel(s3, BUCKET, "train", channel)

    prefix = result.uri.removeprefix(f"s3://{BUCKET}/")
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=_manifest_key(channel))["Body"].read())
    puts = {key: headers for op, key, headers in sent if op == "PutObject" and key.startswith(prefix)}
    assert sorted(puts) == sorted(prefix + rel for rel in manifest["files"])
    for rel, entry in manifest["files"].items():
        headers = puts[prefix + rel]
        assert base64.b64decode(headers["x-amz-checksum-sha256"]).hex() == entry["sha256"], rel
        assert entry["sha256"] == hashlib.sha256((channel / rel).read_bytes()).hexdigest(), rel
        assert "x-amz-checksum-crc32" not in headers, rel
    operations = [op for op, _, _ in sent]
    assert operations.count("HeadObject") == 1  # the manifest's, before anything is sent
    assert operations.count("PutObject") == len(manifest["files"]) + 1  # each file once, the manifest


def test_a_put_answered_500_is_sent_again_whole_and_lands(platform, tmp_path: Path) -> None:
    """botocore's retry rewinds the open file: the object that failed once lands with its bytes."""
    from botocore.awsrequest import AWSResponse

    s3 = platform.boto("s3")
    channel = _channel(tmp_path / "train", 6)
    wire = Wire(s3)
    failed: list[str] = []

    class Raw:
        def stream(self, **_: Any) -> Any:
            yield b"<Error><Code>InternalError</Code><Message>try again</Message></Error>"

    def fail_once(request: Any, **_: Any) -> Any:
        if request.url.split("?", 1)[0].endswith("/f-004.bin") and not failed:
            failed.append(request.url)
            return AWSResponse(request.url, 500, {"Content-Type": "application/xml"}, Raw())
        return None

    s3.meta.events.register_first("before-send.s3.PutObject", fail_once)
    result = uploads.upload_channel(s3, BUCKET, "train", channel)

    assert len(failed) == 1
    assert [key for kind, _, key in wire.events if kind == "sent"].count(
        failed[0].split(f"/{BUCKET}/")[1]
    ) == 2
    key = result.uri.removeprefix(f"s3://{BUCKET}/") + "shard-1/f-004.bin"
    assert (
        s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == (channel / "shard-1/f-004.bin").read_bytes()
    )
    assert s3.head_object(Bucket=BUCKET, Key=_manifest_key(channel))["ContentLength"] > 0


def _deny_put_of(s3: Any, suffix: str) -> None:
    """Answer one object's PutObject with S3's 403, as a bucket policy or a missing KMS grant would."""
    from botocore.awsrequest import AWSResponse

    class Raw:
        def stream(self, **_: Any) -> Any:
            yield b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"

    def deny(request: Any, **_: Any) -> Any:
        if request.method == "PUT" and request.url.split("?", 1)[0].endswith(suffix):
            return AWSResponse(request.url, 403, {"Content-Type": "application/xml"}, Raw())
        return None

    s3.meta.events.register_first("before-send.s3.PutObject", deny)


def test_the_first_failure_stops_the_rest_and_no_manifest_is_written(platform, tmp_path: Path) -> None:
    s3 = platform.boto("s3")
    channel = _channel(tmp_path / "train", 40)
    wire = Wire(s3)
    _deny_put_of(s3, "/f-010.bin")
    # one request at a time: nothing can be in flight beside the failing one
    with pytest.raises(AiopsError) as failed, UploadBatch(s3, BUCKET, max_concurrency=1) as batch:
        uploads.upload_channel(s3, BUCKET, "train", channel, batch=batch)
    line = str(failed.value)
    assert "\n" not in line and line.startswith(f"uploading s3://{BUCKET}/data/")
    assert "f-010.bin: access denied" in line
    puts = [key for kind, op, key in wire.events if kind == "sent" and op == "PutObject"]
    assert puts[-1].endswith("/f-010.bin") and len(puts) < 40  # nothing was sent after the failure
    assert "manifest" not in " ".join(puts)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=_manifest_key(channel))
    # the same channel again, nothing denied (a new client): everything lands, and the manifest with it
    fresh = platform.boto("s3")
    assert uploads.upload_channel(fresh, BUCKET, "train", channel).uploaded_bytes > 0
    assert fresh.head_object(Bucket=BUCKET, Key=_manifest_key(channel))["ContentLength"] > 0


def test_a_failed_upload_ends_the_submission_with_one_line(
    run_cli, project: Path, tmp_path: Path, platform
) -> None:
    channel = _channel(tmp_path / "data", 12)
    platform.inject("s3:PUT", "access-denied", times=1000)
    result = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--instance-type",
        "ml.g5.xlarge",
        "--no-wait",
        "--channel",
        f"train={channel}",
    )
    assert result.returncode == 1, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: uploading s3://{BUCKET}/") and "access denied" in line, line
    assert platform.count("SageMaker.CreateTrainingJob") == 0
    assert "Contents" not in platform.boto("s3").list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.data)


def test_the_cli_shows_one_upload_line_for_bytes_and_objects() -> None:
    import io

    from aiops.cli.train import _Console
    from rich.console import Console

    events = _Console(to_stderr=False)
    out = io.StringIO()
    events.console, events.live = Console(file=out, force_terminal=True, width=120), True
    events.upload("1/3 objects", 1000, 3000)
    events.upload("3/3 objects", 3000, 3000)
    events._progress.refresh()
    assert len(events._progress.tasks) == 1
    assert "upload 3/3 objects" in out.getvalue() and "3.0/3.0 kB" in out.getvalue()
    events.close()
