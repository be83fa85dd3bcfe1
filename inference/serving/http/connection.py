"""One client connection of a worker: httptools parsing on an ``asyncio.Protocol``, with every
bound checked as bytes arrive (request line and headers 431, URL 414, body 413 before it is read,
header/body/keep-alive deadlines swept by the app), and the connection's states.

States: IDLE (between requests) -> HEADERS -> BODY -> READY (a complete request waits for its
answer; bytes that arrive meanwhile are held and reading pauses) -> IDLE again once answered, or
CLOSED. LINGER: answered early (413/401/...) and closing, reading away what the client still sends.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING

from aiops.inference.serving.http.responses import error_response
from aiops.inference.serving.work import Request, request_id

if TYPE_CHECKING:
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


class Connection(asyncio.Protocol):
    """One client connection: httptools parsing with every bound checked as bytes arrive."""

    transport: asyncio.Transport  # set by connection_made, asyncio's first callback

    __slots__ = (
        "app",
        "transport",
        "parser",
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
        "paused",
        "backlog",
        "last_active",
        "sink",
        "current",
        "wfd",
        "answered",
    )

    def __init__(self, app: App) -> None:
        self.app = app
        self.state = IDLE
        self.paused = False
        self.backlog: list[bytes] = []
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
        if self.sink is not None:
            self.sink.connection_lost(exc)
        if self.current is not None:  # the client left before its answer: nobody waits for it
            self.app.abandon(self.current)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.pause_writing()

    def resume_writing(self) -> None:
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
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(400, "protocol upgrades are not supported", close=True)
            return
        except httptools.HttpParserCallbackError:
            return  # a callback already answered (and closed)
        except httptools.HttpParserError as err:
            if self.state != CLOSED:
                self.fail(400, f"malformed HTTP request ({' '.join(str(err).split())[:100]})", close=True)
            return
        if self.state == HEADERS and self.header_bytes > self.app.max_header_bytes:
            self.fail(
                431,
                f"the request line and headers are larger than {self.app.max_header_bytes} bytes "
                "(max_header_kb)",
                close=True,
            )
            return
        if self.complete and self.state != CLOSED:
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
        err = self.app.check_head(self)
        if err is not None:
            status, message, extra = err
            self.fail(status, message, extra=extra, close=True, linger=True)  # before the body is read
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
        """Close now (what was written still goes out); nothing more is answered on it."""
        self.state = CLOSED
        self.current = None
        self.transport.close()
