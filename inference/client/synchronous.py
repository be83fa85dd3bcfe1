"""Send one request to a local server (stdlib HTTP) or a deployed endpoint (boto3 sagemaker-runtime).

A response body is read in blocks of ``READ_SIZE`` into a sink, never whole: ``MemoryBody`` holds
it up to a cap (what is printed), ``FileBody`` writes it to a private temporary file beside
``--output`` (created ``O_EXCL|O_NOFOLLOW``, renamed over the target once the body is complete).
An error answer's body is read up to ``ERROR_BODY_BYTES`` only (it becomes one line).
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiops.errors import AiopsError, UsageError

_BY_SUFFIX = {
    ".json": "application/json",
    ".csv": "text/csv",
    ".npy": "application/x-npy",
    ".npz": "application/x-npz",
}

MIB = 1 << 20
DEFAULT_MAX_RESPONSE_MB = 64  # a body held in memory (printed); --output streams to disk instead
READ_SIZE = 64 << 10  # one read from the socket; bounds what a lying Content-Length or chunk size can ask
ERROR_BODY_BYTES = 64 << 10  # of an error answer, enough for its one line


class BodySink:
    """Where a response body goes as it arrives. ``limit``: the most bytes accepted (None: any)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise UsageError(
                f"the response body is larger than {_mb(self.limit)} (--max-response-mb); "
                f"nothing was kept. {self.too_large_hint}"
            )
        self._write(data)

    too_large_hint = "Save it with --output FILE, or raise --max-response-mb."

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    @property
    def body(self) -> bytes:
        """What is held in memory (b"" for a file)."""
        return b""

    def __enter__(self) -> BodySink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass


class MemoryBody(BodySink):
    """The body in memory, up to ``limit`` bytes."""

    def __init__(self, limit: int | None = DEFAULT_MAX_RESPONSE_MB * MIB) -> None:
        super().__init__(limit)
        self._parts: list[bytes] = []

    def _write(self, data: bytes) -> None:
        self._parts.append(data)

    @property
    def body(self) -> bytes:
        if len(self._parts) > 1:
            self._parts = [b"".join(self._parts)]
        return self._parts[0] if self._parts else b""


class PassBody(BodySink):
    """The body handed on as it arrives (a stream printed chunk by chunk): counted, never held."""

    def __init__(
        self,
        write: Callable[[bytes], object],
        limit: int | None = None,
        flush: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(limit)
        self._pass, self._flush = write, flush

    def _write(self, data: bytes) -> None:
        self._pass(data)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush()


class FileBody(BodySink):
    """The body written to ``path``: first to a new private file beside it (``O_CREAT|O_EXCL|
    O_NOFOLLOW`` through ``tempfile.mkstemp``, so no planted file or link is ever written through),
    renamed over ``path`` when the block ends without an error (the rename replaces a link at
    ``path`` itself, never its target), removed otherwise: a failed request leaves ``path`` as it was."""

    too_large_hint = "Raise --max-response-mb to keep more."

    def __init__(self, path: Path, limit: int | None = None) -> None:
        super().__init__(limit)
        self.path = Path(path)
        folder = self.path.parent
        if not folder.is_dir():
            raise UsageError(f"--output {path}: no folder {folder} to write it in")
        if self.path.is_dir():
            raise UsageError(f"--output {path}: is a folder; name the file to write")
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{self.path.name[:200]}.", suffix=".part", dir=folder)
        except OSError as err:
            raise UsageError(f"--output {path}: cannot write in {folder} ({err.strerror})") from None
        self.temp = Path(temp)
        self._file = os.fdopen(fd, "wb")

    def _write(self, data: bytes) -> None:
        self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is not None:
            self.temp.unlink(missing_ok=True)
            return
        umask = os.umask(0)  # mkstemp made it 0600; the file gets what the user's umask gives a new file
        os.umask(umask)
        os.chmod(self.temp, 0o666 & ~umask)
        os.replace(self.temp, self.path)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / MIB:g} MB"


def copy_body(read: Callable[[int], bytes], sink: BodySink) -> None:
    """Read blocks of at most READ_SIZE until the end, each into ``sink``."""
    while True:
        block = read(READ_SIZE)
        if not block:
            return
        sink.write(block)


def read_error_body(read: Callable[[int], bytes]) -> bytes:
    """The start of an error answer's body (at most ERROR_BODY_BYTES); the rest is not read."""
    parts, size = [], 0
    while size < ERROR_BODY_BYTES:
        block = read(min(READ_SIZE, ERROR_BODY_BYTES - size))
        if not block:
            break
        parts.append(block)
        size += len(block)
    return b"".join(parts)


@dataclass
class InvokeResult:
    status: int
    content_type: str | None
    body: bytes  # what is held in memory: the whole body, the start of an error's, or b"" for a file
    latency_ms: float
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0  # bytes of the body received

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _looks_like_a_path(data: str) -> bool:
    """A file name rather than inline data: one word that ends in a payload suffix or starts like a
    path (`missing.json`, `./x`, `~/x`, `/x`), and does not start like JSON."""
    text = data.strip()
    if not text or len(text) > 1024 or any(c.isspace() for c in text) or text[0] in '[{"':
        return False
    suffix = Path(text).suffix.lower()
    return suffix in _BY_SUFFIX or suffix in (".txt", ".bin") or text.startswith(("./", "../", "~/", "/"))


def load_payload(data: str, content_type: str | None) -> tuple[bytes, str]:
    """``data`` is ``@file``, a file path, or inline text (JSON by default)."""
    name = data[1:] if data.startswith("@") else data
    path = Path(name).expanduser()
    is_file = data.startswith("@") or (len(name) < 4096 and "\n" not in name and path.is_file())
    if not is_file and _looks_like_a_path(data) and not path.exists():
        # `--data missing.json`: say the file is missing, not that it is bad JSON
        raise UsageError(f"--data {data}: no such file")
    if is_file:
        if not path.is_file():
            raise UsageError(f"--data {data}: no such file")
        body = path.read_bytes()
        return body, content_type or _BY_SUFFIX.get(path.suffix.lower(), "application/json")
    ctype = content_type or "application/json"
    if ctype == "application/json":
        try:
            json.loads(data)
        except ValueError as err:
            raise UsageError(f"--data is neither a file nor valid JSON ({err})") from None
    return data.encode("utf-8"), ctype


def connect(
    url: str,
    *,
    content_type: str,
    accept: str | None = None,
    api_key: str | None = None,
    custom_attributes: str | None = None,
    timeout: float = 70.0,
) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """The connection, the /invocations path and the headers of one request to a local server
    (plain and streamed invocations build it the same way)."""
    from aiops.settings import check_api_key

    api_key = check_api_key(api_key, source="--api-key")
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parsed.port
    except ValueError:  # not a number, or past 65535
        port = -1
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port == -1:
        raise UsageError(f"--url {url}: expected http://HOST:PORT")
    path = parsed.path.rstrip("/")
    if not path.endswith("/invocations"):
        path = path + "/invocations"
    conn_cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parsed.hostname, port or (443 if parsed.scheme == "https" else 80), timeout=timeout)
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    if api_key:
        headers["X-Api-Key"] = api_key
    if custom_attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = custom_attributes
    return conn, path, headers


def invoke_url(
    url: str,
    body: bytes,
    *,
    content_type: str,
    accept: str | None = None,
    api_key: str | None = None,
    custom_attributes: str | None = None,
    timeout: float = 70.0,
    sink: BodySink | None = None,
) -> InvokeResult:
    """POST ``body``; a 2xx answer's body goes into ``sink`` (default: memory, capped), an error's
    start is kept for its one line."""
    sink = MemoryBody() if sink is None else sink
    conn, path, headers = connect(
        url,
        content_type=content_type,
        accept=accept,
        api_key=api_key,
        custom_attributes=custom_attributes,
        timeout=timeout,
    )
    try:
        start = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        if 200 <= resp.status < 300:
            copy_body(resp.read, sink)
            data, size = sink.body, sink.size
        else:
            data = read_error_body(resp.read)
            size = len(data)
        latency = (time.perf_counter() - start) * 1000
    except (OSError, http.client.HTTPException) as err:
        raise AiopsError(f"cannot reach {url}: {err}") from None
    finally:
        conn.close()
    return InvokeResult(
        resp.status,
        resp.getheader("Content-Type"),
        data,
        latency,
        {k.lower(): v for k, v in resp.getheaders()},
        size,
    )


def endpoint_request(
    name: str,
    body: bytes,
    *,
    content_type: str,
    accept: str | None = None,
    custom_attributes: str | None = None,
    inference_component: str | None = None,
) -> dict:
    """The sagemaker-runtime request of InvokeEndpoint and InvokeEndpointWithResponseStream: the
    optional fields only when given."""
    kwargs = {"EndpointName": name, "Body": body, "ContentType": content_type}
    if accept:
        kwargs["Accept"] = accept
    if custom_attributes:
        kwargs["CustomAttributes"] = custom_attributes
    if inference_component:
        kwargs["InferenceComponentName"] = inference_component
    return kwargs


def invoke_endpoint(
    name: str,
    body: bytes,
    *,
    content_type: str,
    accept: str | None = None,
    custom_attributes: str | None = None,
    region: str | None = None,
    inference_component: str | None = None,
    sink: BodySink | None = None,
) -> InvokeResult:
    """One InvokeEndpoint call through boto3 `sagemaker-runtime` (standard retries);
    ``inference_component``: the ``InferenceComponentName`` an endpoint of inference components
    routes the request by. The body is read into ``sink`` (default: memory, capped)."""
    from aiops import aws

    sink = MemoryBody() if sink is None else sink
    client = aws.client("sagemaker-runtime", region)
    kwargs = endpoint_request(
        name,
        body,
        content_type=content_type,
        accept=accept,
        custom_attributes=custom_attributes,
        inference_component=inference_component,
    )
    with aws.translate_errors(f"invoking endpoint {name}"):  # one line that says what to do
        start = time.perf_counter()
        resp = client.invoke_endpoint(**kwargs)
        try:
            copy_body(resp["Body"].read, sink)
        finally:
            resp["Body"].close()
        latency = (time.perf_counter() - start) * 1000
    return InvokeResult(200, resp.get("ContentType"), sink.body, latency, size=sink.size)


class Answered(Protocol):
    """What ``error_message`` reads of a result: the status and the (start of the) body of a non-200
    answer."""

    status: int
    body: bytes


def error_message(result: Answered) -> str:
    try:
        doc = json.loads(result.body)
        message = doc.get("error") or doc
        rid = doc.get("request_id")
    except (ValueError, AttributeError):
        message, rid = result.body[:300].decode("utf-8", "replace"), None
    # the server's message may already name the request ("see the server log for request X"): once only
    named = rid and str(rid) in str(message)
    return f"HTTP {result.status}: {message}" + (f" (request {rid})" if rid and not named else "")
