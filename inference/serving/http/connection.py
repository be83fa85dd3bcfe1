"""One client connection of a worker: httptools parsing on an ``asyncio.Protocol``, with every
bound checked as bytes arrive (request line and headers 431, URL 414, body 413 before it is read,
header/body/keep-alive deadlines swept by the app), and the connection's states.

States: IDLE (between requests) -> HEADERS -> BODY -> READY (a complete request waits for its
answer; bytes that arrive meanwhile are held and reading pauses) -> IDLE again once answered, or
CLOSED. LINGER: answered early (413/401/...) and closing, reading away what the client still sends.

Pipelining: one read may hold several requests. httptools parses them all in one ``feed_data``, so
each request that completes before the next one begins is set aside (:meth:`Connection._hold`) and
they are answered one after the other, in order; a refusal of a later one waits for the answers
before it. Writing: ``write_stalled`` is when the transport's buffer last went over its high-water
mark without draining since (the client reads nothing); the app's sweep aborts a connection stalled
past ``write_timeout_seconds``, and one closed with data still buffered past the same time.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING

from aiops.inference.serving.http.responses import error_response, reset
from aiops.inference.serving.work import Request, request_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiops.inference.serving.app import App

IDLE, HEADERS, BODY, READY, CLOSED, LINGER = range(6)
LINGER_SECONDS = 2.0
MAX_URL_BYTES = 8192

if TYPE_CHECKING:
    import httptools
else:
    httptools = None  # the module, imported by the first connection

# the request headers a connection keeps: lower-case name -> (attribute, kept as text, characters
# kept: None for all)
_KEPT_HEADERS = {
    b"content-type": ("ctype", True, None),
    b"accept": ("accept", True, None),
    b"x-amzn-sagemaker-custom-attributes": ("attrs", False, None),
    # how boto3 sends Accept on the response-stream route
    b"x-amzn-sagemaker-accept": ("sm_accept", True, None),
    b"x-amzn-sagemaker-inference-id": ("inference_id", True, 64),
    b"x-api-key": ("api_key", False, None),
    b"authorization": ("auth", False, None),
    b"content-length": ("length", False, None),
}


class Abort(Exception):
    """Stops httptools from parsing further once a callback has answered (and closed)."""


# what one request is while it is read: saved and restored when requests are pipelined
_MESSAGE_FIELDS = (
    "state",
    "deadline",
    "header_bytes",
    "url",
    "headers_size",
    "ctype",
    "accept",
    "sm_accept",
    "attrs",
    "inference_id",
    "api_key",
    "auth",
    "length",
    "body",
    "body_size",
    "complete",
    "method",
    "keep_alive",
    "http_version",
)


class _Refusal:
    """An error answer to a pipelined request, written once the requests before it are answered."""

    __slots__ = ("status", "message", "extra", "etype")

    def __init__(self, status: int, message: str, extra: list | None, etype: str) -> None:
        self.status, self.message, self.extra, self.etype = status, message, extra, etype


class Connection(asyncio.Protocol):
    """One client connection: httptools parsing with every bound checked as bytes arrive."""

    transport: asyncio.Transport  # set by connection_made, asyncio's first callback

    __slots__ = (
        "app",
        "transport",
        "parser",
        *_MESSAGE_FIELDS,
        "pipelined",
        "parsing",
        "write_stalled",
        "ping_only",
        "paused",
        "backlog",
        "last_active",
        "sink",
        "current",
        "wfd",
        "answered",
        "release",
    )

    def __init__(self, app: App, release: Callable[[], None] | None = None) -> None:
        self.app = app
        self.release = release  # called once the socket is closed (the listener's count of open ones)
        self.state = IDLE
        self.paused = False
        self.backlog: list[bytes] = []
        # requests read in the same read as the one being answered (tuples of _MESSAGE_FIELDS), or
        # a _Refusal: taken in order once the answer before them is written
        self.pipelined: list = []
        self.parsing = False  # inside feed_data: ``pipelined`` then holds earlier requests
        self.write_stalled = 0.0  # monotonic time the write buffer went over high water; 0: draining
        self.ping_only = False  # accepted past max_connections: it may only ask for /ping
        self.method = b""
        self.keep_alive = True
        self.http_version = "1.1"
        self.sink = None  # the TransportSink of a response being streamed
        self.current: Request | None = None  # the request being answered
        # A duplicate of the socket's fd that the inference thread writes answers to directly (no
        # loop wake-up per answer); ours, so its number cannot be reused by another connection
        # while we hold it. Closed in connection_lost, under App.lock. -1: none.
        self.wfd = -1
        self.answered = False  # the inference thread wrote the answer itself; the loop resumes reading

    # ---- asyncio callbacks
    def connection_made(self, transport) -> None:
        global httptools
        if httptools is None:  # imported on first use: the supervisor imports the worker's modules too
            import httptools as module

            httptools = module
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self._reset()
        self.deadline = time.monotonic() + self.app.header_timeout  # a fresh connection must start a request
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.wfd = os.dup(sock.fileno())
            except OSError:
                pass
        self.app.accept(self)

    def connection_lost(self, exc) -> None:
        self.state = CLOSED
        self.app.conns.discard(self)
        if self.wfd >= 0:
            with self.app.lock:  # not while the inference thread writes to it
                os.close(self.wfd)
                self.wfd = -1
        if self.release is not None:
            self.release()
        if self.sink is not None:
            self.sink.connection_lost(exc)
        if self.current is not None:  # the client left before its answer: nobody waits for it
            self.app.abandon(self.current)

    def pause_writing(self) -> None:
        self.write_stalled = time.monotonic()
        if self.sink is not None:
            self.sink.pause_writing()

    def resume_writing(self) -> None:
        self.write_stalled = 0.0
        if self.sink is not None:
            self.sink.resume_writing()

    def _reset(self) -> None:
        self.header_bytes = 0
        self.url = b""
        self.headers_size = 0
        self.ctype = self.accept = self.sm_accept = self.attrs = self.inference_id = self.api_key = None
        self.auth = self.length = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False

    def data_received(self, data: bytes) -> None:
        if self.answered:  # the inference thread answered the last request: this starts the next one
            self.app.resumed(self)
        if self.state == LINGER:  # a client still sending the body we refused: read it away, then close
            return
        if self.state == READY:  # pipelined bytes while a request waits: hold them, stop reading
            self.backlog.append(data)
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self.state == IDLE:
            self.state = HEADERS
            self.deadline = time.monotonic() + self.app.header_timeout
        if self.state == HEADERS:
            self.header_bytes += len(data)
        self.parsing = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.complete = False  # the upgrade request itself: refused, not answered
            self.fail(400, "protocol upgrades are not supported", close=True)
        except httptools.HttpParserCallbackError:
            pass  # a callback already answered (and closed), or set its refusal aside
        except httptools.HttpParserError as err:
            if self.state != CLOSED:
                self.fail(400, f"malformed HTTP request ({' '.join(str(err).split())[:100]})", close=True)
        else:
            if self.state == HEADERS and self.header_bytes > self.app.max_header_bytes:
                self.fail(
                    431,
                    f"the request line and headers are larger than {self.app.max_header_bytes} bytes "
                    "(max_header_kb)",
                    close=True,
                )
        self.parsing = False
        if self.pipelined and self.state != CLOSED:
            # several requests in this read: the last one (complete or not) joins the line, unless a
            # refusal ended the parse; the first one is answered now, the rest after it
            if not isinstance(self.pipelined[-1], _Refusal):
                self.pipelined.append(self._snapshot())
            self._restore(self.pipelined.pop(0))
        if self.complete and self.state != CLOSED:
            self.complete = False
            self.app.admit(self)

    def _snapshot(self) -> tuple:
        return tuple([getattr(self, name) for name in _MESSAGE_FIELDS])

    def _restore(self, message: tuple) -> None:
        for name, value in zip(_MESSAGE_FIELDS, message, strict=True):
            setattr(self, name, value)

    def _hold(self) -> None:
        """A request completed earlier in this read and the next one begins: set it aside."""
        self.pipelined.append(self._snapshot())
        self._reset()
        self.state = HEADERS
        self.deadline = time.monotonic() + self.app.header_timeout

    def _next_pipelined(self) -> None:
        """The answer before is written: take the next request of the line."""
        item = self.pipelined.pop(0)
        if isinstance(item, _Refusal):
            self.pipelined.clear()
            self.fail(item.status, item.message, extra=item.extra, close=True, etype=item.etype)
            return
        self._restore(item)
        if self.complete:  # a whole request: answered from a callback, so a long line is no recursion
            asyncio.get_running_loop().call_soon(self._admit_pipelined)
        elif not self.pipelined:  # the last one, partly read: read on
            self._read_on()

    def _admit_pipelined(self) -> None:
        if self.state != CLOSED and self.complete:
            self.complete = False
            self.app.admit(self)

    def resume(self) -> None:
        """The answer is written: read the next request (and any bytes held meanwhile)."""
        self.current = None
        if self.state == CLOSED:
            return
        self.state = IDLE
        self.deadline = time.monotonic() + self.app.keep_alive
        self._reset()
        if self.pipelined:
            self._next_pipelined()
        else:
            self._read_on()

    def _read_on(self) -> None:
        """Resume reading: the bytes held while a request was answered first."""
        held, self.backlog = self.backlog, []
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        for data in held:
            if self.state in (READY, CLOSED):
                self.backlog.append(data)
            else:
                self._feed(data)

    # ---- httptools callbacks
    def on_url(self, url: bytes) -> None:
        if self.complete:  # the next request in the same read (pipelining)
            self._hold()
        self.url += url
        if len(self.url) > MAX_URL_BYTES:
            self.fail(414, f"the URL is longer than {MAX_URL_BYTES} bytes", close=True)
            raise Abort

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers_size += len(name) + len(value) + 4
        if self.headers_size > self.app.max_header_bytes:
            self.fail(
                431,
                f"the request headers are larger than {self.app.max_header_bytes} bytes (max_header_kb)",
                close=True,
            )
            raise Abort
        kept = _KEPT_HEADERS.get(name.lower())
        if kept is not None:
            field, as_text, cap = kept
            setattr(self, field, value.decode("latin-1")[:cap] if as_text else value)

    def on_headers_complete(self) -> None:
        self.state = BODY
        self.deadline = time.monotonic() + self.app.body_timeout
        parser = self.parser
        # read now: once the message is complete httptools has cleared what Connection: close set
        self.method = parser.get_method()
        self.keep_alive = parser.should_keep_alive()
        self.http_version = parser.get_http_version()
        err = self.app.check_head(self)
        if err is not None:
            status, message, extra = err
            etype = "ServiceUnavailable" if status == 503 else "ValidationError"
            # before the body is read
            self.fail(status, message, extra=extra, close=True, etype=etype, linger=True)
            raise Abort

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > self.app.max_payload:
            self.fail(413, self.app.too_large_message(), close=True, linger=True)
            raise Abort
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.complete = True
        self.state = READY

    # ---- writing
    def fail(
        self,
        status: int,
        message: str,
        *,
        extra: list | None = None,
        close: bool = False,
        etype: str = "ValidationError",
        linger: bool = False,
    ) -> None:
        if self.parsing and (self.pipelined or self.complete):
            # a request earlier in this read waits for its answer: this refusal follows it
            if self.complete:
                self.pipelined.append(self._snapshot())
                self.complete = False
            self.pipelined.append(_Refusal(status, message, extra, etype))
            return
        data = error_response(status, message, etype, request_id(), extra=extra, close=close)
        if linger and self.state != CLOSED:
            # a client that sends its whole body before reading would get EPIPE instead of this
            # answer if we closed now: drop its bytes for a moment (nothing is kept), then close
            self.transport.write(data)
            self.state = LINGER
            self.deadline = time.monotonic() + LINGER_SECONDS
            return
        self.write_and_finish(data, close)

    def write_and_finish(self, data: bytes, close: bool) -> None:
        """Write the rest of an answer from the loop; then close, or read the next request."""
        if self.state == CLOSED:
            return
        self.transport.write(data)
        if close:
            self.close()
        else:
            self.resume()

    def close(self) -> None:
        """Close now (what was written still goes out, within write_timeout_seconds); nothing more
        is answered on it."""
        self.state = CLOSED
        self.current = None
        self.deadline = time.monotonic() + self.app.write_timeout  # the sweep aborts it past this
        self.transport.close()

    def abort(self) -> None:
        """Close now and drop what is still buffered (a client that reads nothing): a reset."""
        self.state = CLOSED
        self.current = None
        reset(self.transport)
