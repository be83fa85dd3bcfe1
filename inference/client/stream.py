"""`aiops invoke --stream`: read a streamed response as it arrives and measure it.

Two sources, one result (:class:`StreamResult`): a local server's chunked ``/invocations``
(:func:`stream_url`, http.client, one callback per HTTP chunk) and a deployed endpoint through
boto3 ``sagemaker-runtime`` ``invoke_endpoint_with_response_stream`` (:func:`stream_endpoint`,
one callback per ``PayloadPart``). Time to first byte counts from sending the request to the
first chunk; chunks/s counts from the first chunk to the last.
"""

from __future__ import annotations

import builtins
import http.client
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiops.inference.client.synchronous import READ_SIZE, connect, endpoint_request, read_error_body

from aiops.errors import AiopsError

OnChunk = Callable[[bytes], None]


@dataclass
class StreamResult:
    status: int
    content_type: str | None
    chunks: int = 0
    bytes: int = 0
    ttfb_ms: float | None = None
    total_ms: float = 0.0
    body: builtins.bytes = b""  # only the start of a non-200 answer's body (`bytes` is a field)
    headers: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def chunks_per_s(self) -> float | None:
        if self.chunks < 2 or self.ttfb_ms is None or self.total_ms <= self.ttfb_ms:
            return None
        return (self.chunks - 1) / ((self.total_ms - self.ttfb_ms) / 1000)

    def summary(self) -> str:
        line = f"HTTP {self.status} {self.content_type}: {self.chunks} chunks, {self.bytes} bytes"
        if self.ttfb_ms is not None:
            line += f"; first byte in {self.ttfb_ms:.1f} ms"
        if self.chunks_per_s is not None:
            line += f", {self.chunks_per_s:.1f} chunks/s"
        return line + f"; total {self.total_ms:.1f} ms"


def stream_url(
    url: str,
    body: bytes,
    *,
    content_type: str,
    accept: str | None = None,
    api_key: str | None = None,
    custom_attributes: str | None = None,
    timeout: float = 70.0,
    on_chunk: OnChunk | None = None,
) -> StreamResult:
    """POST ``body`` to a local server's /invocations and hand each chunk to ``on_chunk``."""
    conn, path, headers = connect(
        url,
        content_type=content_type,
        accept=accept,
        api_key=api_key,
        custom_attributes=custom_attributes,
        timeout=timeout,
    )
    start = time.perf_counter()
    result = None
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        result = StreamResult(
            resp.status, resp.getheader("Content-Type"), headers={k.lower(): v for k, v in resp.getheaders()}
        )
        if resp.status != 200:
            result.body = read_error_body(resp.read)
        else:
            while True:
                # returns as soon as a chunk (or part of one) is in; never asks for more than READ_SIZE,
                # whatever size a chunk or Content-Length announces
                chunk = resp.read1(READ_SIZE)
                if not chunk:
                    break
                _count(result, chunk, start, on_chunk)
    except http.client.IncompleteRead:
        raise AiopsError(
            f"the stream from {url} broke after {result.chunks if result else 0} chunks "
            f"({result.bytes if result else 0} bytes); "
            "the handler failed mid-stream, see the server log"
        ) from None
    except (OSError, http.client.HTTPException) as err:
        raise AiopsError(f"cannot reach {url}: {err}") from None
    finally:
        conn.close()
    result.total_ms = (time.perf_counter() - start) * 1000
    return result


def _count(result: StreamResult, chunk: bytes, start: float, on_chunk: OnChunk | None) -> None:
    if result.ttfb_ms is None:
        result.ttfb_ms = (time.perf_counter() - start) * 1000
    result.chunks += 1
    result.bytes += len(chunk)
    if on_chunk is not None:
        on_chunk(chunk)


def stream_endpoint(
    name: str,
    body: bytes,
    *,
    content_type: str,
    accept: str | None = None,
    custom_attributes: str | None = None,
    region: str | None = None,
    on_chunk: OnChunk | None = None,
) -> StreamResult:
    """InvokeEndpointWithResponseStream through boto3 ``sagemaker-runtime`` (standard retries)."""
    from aiops import aws

    client = aws.client("sagemaker-runtime", region)
    kwargs = endpoint_request(
        name, body, content_type=content_type, accept=accept, custom_attributes=custom_attributes
    )
    start = time.perf_counter()
    result = StreamResult(200, None)

    def action() -> str:
        return f"streaming from endpoint {name}" + (f" after {result.chunks} chunks" if result.chunks else "")

    with aws.translate_errors(action):  # botocore errors (the stream's error events too) become one line
        resp = client.invoke_endpoint_with_response_stream(**kwargs)
        result.content_type = resp.get("ContentType")
        for event in resp["Body"]:
            part = event.get("PayloadPart")
            if part is not None and part.get("Bytes"):
                _count(result, part["Bytes"], start, on_chunk)
    result.total_ms = (time.perf_counter() - start) * 1000
    return result
