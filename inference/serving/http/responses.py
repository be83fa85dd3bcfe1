"""The bytes of a worker's answers: status lines, heads, JSON error bodies, whole answers in one
buffer, and the chunked body of a streamed answer (:class:`TransportSink`)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import traceback

from aiops.inference.errors import Timeout, typed_status
from aiops.inference.serving.http import eventstream
from aiops.inference.serving.stream_sender import EVENTS

log = logging.getLogger("aiops.serve")

RETRY_AFTER_SECONDS = 1
RETRY_AFTER = (b"retry-after", str(RETRY_AFTER_SECONDS).encode())
SMALL_ANSWER = 65536  # bytes: below this an answer is joined to its head and sent in one write
EVENTSTREAM_TYPE = eventstream.CONTENT_TYPE.encode()

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Entity",
    424: b"Failed Dependency",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))


OK = status_line(200)


def error_response(
    status: int, message: str, etype: str, rid: str, *, extra: list | None = None, close: bool = False
) -> bytes:
    """A whole JSON error answer: ``{"error", "code", "status", "request_id"}``, ``x-amzn-errortype``."""
    body = json.dumps({"error": message, "code": etype, "status": status, "request_id": rid}).encode() + b"\n"
    head = [
        status_line(status),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"x-amzn-requestid: %s\r\n" % rid.encode(),
        b"x-amzn-errortype: %s\r\n" % etype.encode(),
    ]
    for name, value in extra or ():
        head.append(name + b": " + value + b"\r\n")
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


def describe_error(err: BaseException, rid: str) -> tuple[int, str, str]:
    """Status, client message and error type; a handler's own failure is logged with its traceback."""
    typed = typed_status(err)
    if typed is not None:
        if typed[0] >= 500:
            log.error("request %s: %s", rid, typed[1])
        return typed
    log.error(
        "request %s: handler error\n%s",
        rid,
        "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip(),
    )
    return (
        500,
        f"the inference handler raised {type(err).__name__}; see the server log for request {rid}",
        "ModelError",
    )


def model_timeout(timeout: float) -> Timeout:
    """The 504 of a request past the server's timeout (running or still queued)."""
    return Timeout(f"the model did not answer within {timeout:g} s (SAGEMAKER_MODEL_SERVER_TIMEOUT)")


def request_error(req, err: BaseException) -> bytes:
    """The error answer to ``req`` (custom attributes echoed, Retry-After on a 503)."""
    status, message, etype = describe_error(err, req.rid)
    extra = [(b"x-amzn-sagemaker-custom-attributes", req.attrs)] if req.attrs is not None else []
    if status == 503:
        extra.append(RETRY_AFTER)
    return error_response(status, message, etype, req.rid, extra=extra, close=not req.keep_alive)


def answer_head(req, variant: bytes, status: int = 200) -> list:
    """The head lines every answer to ``req`` carries (the caller adds its content lines)."""
    head = [
        status_line(status),
        b"x-amzn-requestid: ",
        req.rid.encode(),
        b"\r\nx-amzn-invoked-production-variant: ",
        variant,
        b"\r\n",
    ]
    if req.attrs is not None:
        head += [b"x-amzn-sagemaker-custom-attributes: ", req.attrs, b"\r\n"]
    if not req.keep_alive:
        head.append(b"connection: close\r\n")
    return head


def small_answer(req, variant: bytes, out: bytes, out_type: str) -> bytes:
    """A small plain answer in one buffer (one send)."""
    head = b"%sx-amzn-requestid: %s\r\nx-amzn-invoked-production-variant: %s\r\ncontent-type: %s\r\n" % (
        OK,
        req.rid.encode(),
        variant,
        out_type.encode("latin-1"),
    )
    if req.attrs is not None:
        head += b"x-amzn-sagemaker-custom-attributes: " + req.attrs + b"\r\n"
    if not req.keep_alive:
        head += b"connection: close\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(out) + out


def whole_answer(
    req, variant: bytes, out: bytes, out_type: str, *, status: int = 200, extra: tuple = ()
) -> tuple[bytes, bytes]:
    """Head and body of a whole answer of any size on any route (on the response-stream route, a 200's
    body is one PayloadPart event; any other status is a plain body there too). ``extra``: more
    ``(name, value)`` header pairs. Join them below ``SMALL_ANSWER``; else write the body as is."""
    head = answer_head(req, variant, status)
    if req.mode == EVENTS and status == 200:
        head += [
            b"content-type: ",
            EVENTSTREAM_TYPE,
            b"\r\nx-amzn-sagemaker-content-type: ",
            out_type.encode("latin-1"),
            b"\r\n",
        ]
        out = eventstream.payload_part(out)
    else:
        head += [b"content-type: ", out_type.encode("latin-1"), b"\r\n"]
    for name, value in extra:
        head.append(f"{name}: {value}\r\n".encode("latin-1"))
    head.append(b"content-length: %d\r\n\r\n" % len(out))
    return b"".join(head), out


def stream_head_lines(mode: str, content_type: str) -> bytes:
    """The head lines of a streamed answer that depend on its mode: the content type(s) and
    ``transfer-encoding: chunked``; the head ends with a blank line after."""
    if mode == EVENTS:
        return (
            b"content-type: "
            + EVENTSTREAM_TYPE
            + b"\r\nx-amzn-sagemaker-content-type: "
            + content_type.encode("latin-1")
            + b"\r\ntransfer-encoding: chunked\r\n"
        )
    return b"content-type: " + content_type.encode("latin-1") + b"\r\ntransfer-encoding: chunked\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a ``transfer-encoding: chunked`` body (written by the loop's sinks and by
    a thread writing a stream's tokens itself: both must frame alike)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


_LINGER_OFF = struct.pack("ii", 1, 0)


def reset(transport: asyncio.WriteTransport) -> None:
    """Close ``transport`` with a reset: what it and the kernel still buffer for a client that reads
    nothing is dropped at once (a plain close would keep the kernel sending it for minutes)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        except OSError:
            pass
    transport.abort()


class TransportSink:
    """A streamed body over an ``asyncio.Transport``, HTTP/1.1 chunked framing written here (a
    :class:`aiops.inference.serving.stream_sender.Sink`).

    While a stream is active the connection forwards ``pause_writing``, ``resume_writing`` and
    ``connection_lost`` to the sink. A client that disconnects is seen at once when the transport
    is reading, else at the first write that fails (within two chunks). :meth:`send` waits for room
    with no deadline of its own: a client that reads nothing is reset by the app's sweep
    (``write_timeout_seconds``) or by :func:`~aiops.inference.serving.stream_sender.stream_to`'s
    timeout, and the wait ends with the connection.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._gone = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def start(self, head: bytes) -> None:
        """Write the status line and headers (ending with the blank line)."""
        self.transport.write(head)

    # the protocol's callbacks, forwarded
    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: BaseException | None = None) -> None:
        self._gone.set()
        self._writable.set()

    async def send(self, data: bytes) -> None:
        if self.is_disconnected():
            return
        self.transport.write(chunk(data))
        if not self._writable.is_set():  # the client reads slower than we produce: wait for it
            await self._writable.wait()

    async def finish(self) -> None:
        if not self.is_disconnected():
            self.transport.write(LAST_CHUNK)

    def abort(self) -> None:
        if self._writable.is_set():
            self.transport.close()  # buffered data goes out, then FIN without the terminating chunk
        else:  # the client reads nothing: what is buffered would never go out, so drop it
            reset(self.transport)

    def is_disconnected(self) -> bool:
        return self._gone.is_set() or self.transport.is_closing()

    async def wait_disconnected(self) -> None:
        await self._gone.wait()
