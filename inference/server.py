"""One serving worker: a lean HTTP/1.1 server on asyncio (uvloop when installed) and httptools.

Process model (see docs/architecture.md): the supervisor binds the port; each worker process loads
the model, then opens its own listening socket on that port with ``SO_REUSEPORT`` (the kernel
spreads new connections over the workers that are listening) and serves it on one thread:

- the event loop parses requests (httptools, one parser per connection) and enforces every bound
  before anything large is buffered: header size (431), header/body read and keep-alive timeouts,
  connections per worker, body size (413, before the body is read), the API key (401);
- a complete request goes into the worker's ready list (bounded: past ``max_queue`` it is answered
  503 with Retry-After at once); one drain callback per loop iteration runs everything ready
  through the handler *on the loop thread* - no thread hand-off, no lock per request. With
  batching on, the ready requests form the batch (what arrived in one poll, topped up for at most
  ``max_batch_delay_ms`` while more keep arriving): the ready list is the batch;
- a watchdog thread answers 504 for a handler call that runs past the timeout, and ends the worker
  when one stays stuck (the supervisor starts a new one);
- a handler may raise anything, ``SystemExit`` and ``KeyboardInterrupt`` included: it is that
  request's 500 (or its typed 4xx), never the worker's end.

The response path takes ``bytes`` or an iterable of ``bytes`` (sent with chunked transfer
encoding), so a streaming handler can plug in without touching the HTTP layer.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from typing import Any, Iterable

from pydantic import BaseModel

from aiops.inference import codecs
from aiops.inference.errors import HttpError, typed_status
from aiops.settings import ServeSettings

log = logging.getLogger("aiops.serve")

SPEC_ENV = "AIOPS_SERVE_WORKER_SPEC"
MAX_CUSTOM_ATTRIBUTES = 1024
MAX_URL_BYTES = 8192
PING_BODY = b'{"status":"Healthy"}\n'
UNHEALTHY_BODY = b'{"status":"Unhealthy"}\n'
RETRY_AFTER_SECONDS = 1
EXIT_STUCK = 70  # the worker ended itself: a handler call stayed stuck past the timeout


class WorkerSpec(BaseModel):
    """What a worker process receives: the serve settings model itself plus the resolved paths."""

    settings: ServeSettings
    model_dir: str
    code_dir: str | None = None
    script: str | None = None
    torch_threads: int | None = None


_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed",
            406: b"Not Acceptable", 408: b"Request Timeout", 413: b"Payload Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
            431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 503: b"Service Unavailable",
            504: b"Gateway Timeout"}

_RID_PREFIX = uuid.uuid4().hex[:12]
_rid_counter = iter(range(1, 1 << 62))


def _rid() -> str:
    return f"{_RID_PREFIX}-{next(_rid_counter):08x}"


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))


def error_response(status: int, message: str, etype: str, rid: str, *, extra: list | None = None,
                   close: bool = False) -> bytes:
    body = json.dumps({"error": message, "code": etype, "status": status, "request_id": rid}).encode() + b"\n"
    head = [_status_line(status), b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"x-amzn-requestid: %s\r\n" % rid.encode(),
            b"x-amzn-errortype: %s\r\n" % etype.encode()]
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
    log.error("request %s: handler error\n%s", rid,
              "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip())
    return 500, f"the inference handler raised {type(err).__name__}; see the server log for request {rid}", \
        "ModelError"


# connection states; LINGER: answered early (413/401/...) and closing, dropping what the client still sends
IDLE, HEADERS, BODY, READY, CLOSED, LINGER = range(6)
LINGER_SECONDS = 2.0


class Request:
    __slots__ = ("conn", "body", "ctype", "accept", "attrs", "rid", "inference_id", "t0", "keep_alive")

    def __init__(self, conn, body, ctype, accept, attrs, rid, inference_id, keep_alive):
        self.conn, self.body, self.ctype, self.accept, self.attrs = conn, body, ctype, accept, attrs
        self.rid, self.inference_id, self.keep_alive = rid, inference_id, keep_alive
        self.t0 = time.monotonic()


class Connection(asyncio.Protocol):
    """One client connection: httptools parsing with every bound checked as bytes arrive."""

    __slots__ = ("app", "transport", "parser", "state", "deadline", "header_bytes", "url", "headers_size",
                 "ctype", "accept", "attrs", "inference_id", "api_key", "auth", "length", "body", "body_size", "complete",
                 "paused", "backlog", "poisoned", "last_active", "fd")

    def __init__(self, app: "App") -> None:
        self.app = app
        self.transport = None
        self.state = IDLE
        self.paused = False
        self.backlog: list[bytes] = []
        self.poisoned = False

    # ---- asyncio callbacks
    def connection_made(self, transport) -> None:
        import httptools

        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self._reset()
        self.deadline = time.monotonic() + self.app.header_timeout  # a fresh connection must start a request
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.app.accept(self)

    def connection_lost(self, exc) -> None:
        self.state = CLOSED
        self.app.conns.discard(self)

    def _reset(self) -> None:
        self.header_bytes = 0
        self.url = b""
        self.headers_size = 0
        self.ctype = self.accept = self.attrs = self.inference_id = self.api_key = self.auth = self.length = None
        self.body = []
        self.body_size = 0
        self.complete = False

    def data_received(self, data: bytes) -> None:
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
        import httptools

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
            self.fail(431, f"the request line and headers are larger than {self.app.max_header_bytes} bytes "
                           "(max_header_kb)", close=True)
            return
        if self.complete and self.state != CLOSED:
            self.complete = False
            self.app.admit(self)

    def resume(self) -> None:
        """The answer is written: read the next request (and any bytes held meanwhile)."""
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
            raise _Abort

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers_size += len(name) + len(value) + 4
        if self.headers_size > self.app.max_header_bytes:
            self.fail(431, f"the request headers are larger than {self.app.max_header_bytes} bytes (max_header_kb)",
                      close=True)
            raise _Abort
        n = name.lower()
        if n == b"content-type":
            self.ctype = value.decode("latin-1")
        elif n == b"accept":
            self.accept = value.decode("latin-1")
        elif n == b"x-amzn-sagemaker-custom-attributes":
            self.attrs = value
        elif n == b"x-amzn-sagemaker-inference-id":
            self.inference_id = value.decode("latin-1")[:64]
        elif n == b"x-api-key":
            self.api_key = value
        elif n == b"authorization":
            self.auth = value
        elif n == b"content-length":
            self.length = value

    def on_headers_complete(self) -> None:
        self.state = BODY
        self.deadline = time.monotonic() + self.app.body_timeout
        err = self.app.check_headers(self)
        if err is not None:
            status, message, extra = err
            self.fail(status, message, extra=extra, close=True, linger=True)  # before the body is read
            raise _Abort

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > self.app.max_payload:
            self.fail(413, self.app.too_large_message(), close=True, linger=True)
            raise _Abort
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.complete = True
        self.state = READY

    # ---- writing
    def fail(self, status: int, message: str, *, extra: list | None = None, close: bool = False,
             etype: str = "ValidationError", linger: bool = False) -> None:
        data = error_response(status, message, etype, _rid(), extra=extra, close=close)
        if linger and self.state != CLOSED:
            # a client that sends its whole body before reading would get EPIPE instead of this
            # answer if we closed now: drop its bytes for a moment (nothing is kept), then close
            self.transport.write(data)
            self.state = LINGER
            self.deadline = time.monotonic() + LINGER_SECONDS
            return
        self.write_and_finish(data, close)

    def write_and_finish(self, data: bytes, close: bool) -> None:
        if self.state == CLOSED:
            return
        self.transport.write(data)
        if close:
            self.state = CLOSED
            self.transport.close()
        else:
            self.resume()

    def write_chunked(self, head: bytes, chunks: Iterable[bytes], close: bool) -> None:
        """Write a response whose body is an iterable of bytes, with chunked transfer encoding."""
        self.transport.write(head)
        for chunk in chunks:
            if chunk:
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), bytes(chunk)))
        self.write_and_finish(b"0\r\n\r\n", close)


class _Abort(Exception):
    """Stops httptools from parsing further once a callback has answered (and closed)."""


class App:
    """Routing, admission, the ready list and the handler calls of one worker."""

    def __init__(self, handler, spec: WorkerSpec) -> None:
        from aiops.inference.handler import Context

        s = spec.settings
        self.handler = handler
        self.settings = s
        self.model_dir = spec.model_dir
        self.Context = Context
        self.batch_size = max(1, s.batch_size) if handler.batchable else 1
        self.max_delay = s.max_batch_delay_ms / 1000.0
        self.api_key = s.api_key.encode() if s.api_key else None
        self.variant = s.variant.encode()
        self.max_payload = s.max_payload_bytes
        self.max_header_bytes = int(s.max_header_kb * 1024)
        self.header_timeout = s.header_timeout_seconds
        self.body_timeout = s.body_timeout_seconds
        self.keep_alive = s.keep_alive_seconds
        self.timeout = s.timeout_seconds
        self.max_connections = s.max_connections
        self.max_queue = s.max_queue
        self.conns: set[Connection] = set()
        self.ready: list[Request] = []
        self.drain_scheduled = False
        self.batch_deadline = 0.0
        self.last_seen = 0
        self.healthy = True
        self.loop: asyncio.AbstractEventLoop | None = None
        # what the loop thread is running now, for the watchdog: (started, [requests]) or None
        self.running: tuple[float, list[Request]] | None = None
        self.running_lock = threading.Lock()
        self.call_started: float | None = None  # stays set after a 504: a stuck call ends the worker

    # ---- admission
    def accept(self, conn: Connection) -> None:
        if len(self.conns) >= self.max_connections:
            idle = [c for c in self.conns if c.state == IDLE]
            if idle:  # make room by closing the connection idle the longest
                oldest = min(idle, key=lambda c: c.deadline)
                oldest.state = CLOSED
                oldest.transport.close()
                self.conns.discard(oldest)
            else:
                conn.fail(503, f"this worker has {self.max_connections} open connections (max_connections)",
                          extra=[(b"retry-after", str(RETRY_AFTER_SECONDS).encode())], close=True,
                          etype="ServiceUnavailable")
                return
        self.conns.add(conn)

    def check_headers(self, conn: Connection):
        """Route, method, custom attributes, API key and declared length; None when acceptable."""
        url = conn.url.split(b"?", 1)[0]
        method = conn.parser.get_method()
        if url == b"/ping":
            if method not in (b"GET", b"HEAD"):
                return 405, "use GET /ping", None
            return None
        if not (url == b"/invocations" or (url.startswith(b"/endpoints/") and url.endswith(b"/invocations")
                                           and url.count(b"/") == 3 and len(url) > len(b"/endpoints//invocations"))):
            return 404, f"no route {url.decode('latin-1')[:200]!r}; use /ping or /invocations", None
        if method != b"POST":
            return 405, "use POST", None
        if conn.attrs is not None and len(conn.attrs) > MAX_CUSTOM_ATTRIBUTES:
            return 400, f"X-Amzn-SageMaker-Custom-Attributes is longer than {MAX_CUSTOM_ATTRIBUTES} characters", None
        if self.api_key is not None:
            given = conn.api_key
            if given is None and conn.auth is not None and conn.auth[:7].lower() == b"bearer ":
                given = conn.auth[7:].strip()
            if given is None or not hmac.compare_digest(given, self.api_key):
                return 401, "missing or wrong API key (X-Api-Key header)", [(b"www-authenticate", b"Bearer")]
        if conn.length is not None:
            try:
                declared = int(conn.length)
            except ValueError:
                return 400, "bad Content-Length", None
            if declared > self.max_payload:
                return 413, self.too_large_message(), None
        return None

    def too_large_message(self) -> str:
        mb = self.max_payload / (1024 * 1024)
        return f"the request body is larger than {mb:g} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)"

    def admit(self, conn: Connection) -> None:
        """A complete request: answer /ping now, queue an invocation (or 503 when the queue is full)."""
        keep = conn.parser.should_keep_alive()
        if conn.url == b"/ping" or conn.url.startswith(b"/ping?"):
            body = PING_BODY if self.healthy else UNHEALTHY_BODY
            status = 200 if self.healthy else 503
            head = b"%scontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n" % (
                _status_line(status), len(body), b"" if keep else b"connection: close\r\n")
            conn.write_and_finish(head + (body if conn.parser.get_method() == b"GET" else b""), not keep)
            return
        if len(self.ready) >= self.max_queue or not self.healthy:
            why = "is draining" if not self.healthy else f"has {self.max_queue} requests waiting (max_queue)"
            conn.fail(503, f"the model server is overloaded: this worker {why}; retry shortly",
                      extra=[(b"retry-after", str(RETRY_AFTER_SECONDS).encode())], close=not keep,
                      etype="ServiceUnavailable")
            return
        body = conn.body[0] if len(conn.body) == 1 else b"".join(conn.body)
        conn.body = []
        self.ready.append(Request(conn, body, conn.ctype, conn.accept, conn.attrs, _rid(), conn.inference_id, keep))
        if len(self.ready) >= self.batch_size:
            if self.batch_size > 1:
                self.drain()  # a full batch runs at once
                return
        if not self.drain_scheduled:
            self.drain_scheduled = True
            self.loop.call_soon(self._tick)

    # ---- running
    def _tick(self) -> None:
        """Once per loop iteration: run what is ready (a batch may wait for stragglers first)."""
        ready = self.ready
        n = len(ready)
        if self.batch_size > 1 and 1 < n < self.batch_size and self.max_delay > 0:
            now = time.monotonic()
            if self.last_seen == 0:
                self.batch_deadline = ready[0].t0 + self.max_delay
            # more arrived since the last look and there is time left: let the loop read once more
            if n > self.last_seen and now < self.batch_deadline:
                self.last_seen = n
                self.loop.call_later(min(0.0005, self.batch_deadline - now), self._tick)
                return
        self.drain_scheduled = False
        self.last_seen = 0
        self.drain()

    def drain(self) -> None:
        while self.ready:
            if self.batch_size > 1:
                batch, self.ready = self.ready[:self.batch_size], self.ready[self.batch_size:]
            else:
                batch, self.ready = self.ready, []
            if self.batch_size > 1 and len(batch) > 1:
                self._run_batch(batch)
            else:
                for req in batch:
                    self._run_one(req)

    def _live(self, req: Request) -> bool:
        if req.conn.state == CLOSED:
            return False
        if time.monotonic() - req.t0 > self.timeout:  # waited past its timeout before its turn came
            self._answer_error(req, HttpErrorTimeout(self.timeout))
            return False
        return True

    def _context(self, req: Request):
        return self.Context(model_dir=self.model_dir, request_id=req.inference_id or req.rid,
                            content_type=req.ctype, accept=req.accept,
                            custom_attributes=req.attrs.decode("latin-1") if req.attrs is not None else None,
                            headers=None)

    def _run_one(self, req: Request) -> None:
        if not self._live(req):
            return
        ctx = self._context(req)
        self._start([req])
        try:
            result = self.handler.invoke(req.body, req.ctype, req.accept, ctx)
        except BaseException as err:  # noqa: BLE001 - even SystemExit: that request's 500, not the worker's end
            result = err
        if self._finish():
            self._answer(req, result)

    def _run_batch(self, batch: list[Request]) -> None:
        batch = [r for r in batch if self._live(r)]
        if not batch:
            return
        self._start(batch)
        try:
            results = self.handler.invoke_batch([(r.body, r.ctype, r.accept, self._context(r)) for r in batch])
        except BaseException as err:  # noqa: BLE001 - invoke_batch captures per request; this is a backstop
            results = [err] * len(batch)
        if self._finish():
            for req, result in zip(batch, results):
                self._answer(req, result)

    def _start(self, reqs: list[Request]) -> None:
        self.call_started = now = time.monotonic()
        self.running = (now, reqs)

    def _finish(self) -> bool:
        """False when the watchdog already answered these requests (504) while they ran."""
        self.call_started = None
        with self.running_lock:
            running, self.running = self.running, None
        return running is not None

    def _answer(self, req: Request, result: Any) -> None:
        conn = req.conn
        if conn.state == CLOSED:
            return
        if isinstance(result, BaseException):
            self._answer_error(req, result)
            return
        out, out_type = result
        head = [_status_line(200), b"content-type: ", out_type.encode("latin-1"), b"\r\n",
                b"x-amzn-requestid: ", req.rid.encode(), b"\r\nx-amzn-invoked-production-variant: ", self.variant,
                b"\r\n"]
        if req.attrs is not None:
            head += [b"x-amzn-sagemaker-custom-attributes: ", req.attrs, b"\r\n"]
        if not req.keep_alive:
            head.append(b"connection: close\r\n")
        if isinstance(out, (bytes, bytearray, memoryview)):
            head += [b"content-length: %d\r\n\r\n" % len(out)]
            if len(out) < 65536:  # one write (one send) for the usual small answer
                conn.write_and_finish(b"".join(head) + out, not req.keep_alive)
            else:  # no copy of a large body
                conn.transport.write(b"".join(head))
                conn.write_and_finish(out, not req.keep_alive)
        else:  # an iterable of chunks
            head.append(b"transfer-encoding: chunked\r\n\r\n")
            conn.write_chunked(b"".join(head), out, not req.keep_alive)

    def _answer_error(self, req: Request, err: BaseException) -> None:
        status, message, etype = describe_error(err, req.rid)
        extra = [(b"x-amzn-sagemaker-custom-attributes", req.attrs)] if req.attrs is not None else []
        if status == 503:
            extra.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
        req.conn.write_and_finish(error_response(status, message, etype, req.rid, extra=extra,
                                                 close=not req.keep_alive), not req.keep_alive)

    # ---- timers (one sweep for every connection instead of a timer per request)
    def sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.conns):
            if conn.state in (IDLE, HEADERS, BODY, LINGER) and now > conn.deadline:
                if conn.state in (IDLE, LINGER):
                    conn.state = CLOSED
                    conn.transport.close()  # idle keep-alive (or never started): close quietly
                else:
                    what = "headers" if conn.state == HEADERS else "body"
                    conn.fail(408, f"the request {what} did not arrive in time "
                                   f"({what}_timeout_seconds)", close=True)
                self.conns.discard(conn)

    def watchdog_check(self) -> bool:
        """From the watchdog thread: 504 for a call past the timeout; True when it is stuck for good."""
        running = self.running
        if running is None:
            return False
        started, reqs = running
        elapsed = time.monotonic() - started
        if elapsed > self.timeout:
            with self.running_lock:
                if self.running is running:
                    self.running = None
                    for req in reqs:
                        _write_direct(req, self.timeout)
        return False

    def running_since(self) -> float | None:
        return self.call_started


class HttpErrorTimeout(HttpError):
    status_code = 504
    error_type = "ModelError"

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the model did not answer within {timeout:g} s (SAGEMAKER_MODEL_SERVER_TIMEOUT)")


def _write_direct(req: Request, timeout: float) -> None:
    """Answer 504 from the watchdog thread while the loop thread is blocked in the handler.

    The loop is not writing to this connection (it is inside the handler call), so a direct send
    on the socket cannot interleave; the connection is closed once the call returns.
    """
    conn = req.conn
    if conn.state == CLOSED or conn.fd < 0 or conn.transport.get_write_buffer_size():
        return
    err = HttpErrorTimeout(timeout)
    log.error("request %s: %s", req.rid, err.message)
    data = error_response(504, err.message, err.error_type, req.rid, close=True)
    try:
        os.write(conn.fd, data)
    except OSError:
        pass
    conn.state = CLOSED  # the loop closes the transport when it comes back
    conn.poisoned = True


# ---------------------------------------------------------------- worker process


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s [worker {os.getpid()}] %(levelname)s %(message)s")


def _listen(fd: int) -> socket.socket:
    """This worker's listening socket: its own on the shared port (SO_REUSEPORT), else the shared one."""
    shared = socket.socket(fileno=fd)
    if hasattr(socket, "SO_REUSEPORT") and shared.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.bind(shared.getsockname()[:2])
        shared.close()
        sock = own
    else:
        sock = shared
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _raise_fd_limit() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def worker_main(fd: int, ready_fd: int | None, spec: WorkerSpec) -> int:
    from aiops.errors import AiopsError, UsageError
    from aiops.inference.handler import Handler

    s = spec.settings
    _configure_logging(s.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C reaches it too
    stop_early = []
    signal.signal(signal.SIGTERM, lambda *_: stop_early.append(1))

    def report(line: str) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, (line.replace("\n", " ")[:2000] + "\n").encode())
            except OSError:
                pass

    codecs.configure(max_decoded_bytes=int(s.max_decoded_mb * 1024 * 1024), json_max_depth=s.json_max_depth,
                     json_max_elements=s.json_max_elements)
    try:
        if spec.torch_threads:
            import torch

            torch.set_num_threads(spec.torch_threads)
        handler = Handler(spec.model_dir, script=_path(spec.script), code_dir=_path(spec.code_dir),
                          default_accept=s.default_accept)
        handler.load()
    except AiopsError as err:  # "usage-error": bad input (no model file, ...), the CLI exits 2
        report(f"{'usage-error' if isinstance(err, UsageError) else 'error'}: {err}")
        return 3
    except BaseException as err:  # noqa: BLE001 - the user's model_fn failed (even with sys.exit)
        log.error("loading the model failed\n%s", traceback.format_exc().rstrip())
        report(f"error: loading the model failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}")
        return 3
    if stop_early:
        return 0
    _raise_fd_limit()
    sock = _listen(fd)
    app = App(handler, spec)
    code = _serve(app, sock, report, stop_early)
    return code


def _serve(app: App, sock: socket.socket, report, stop_early: list) -> int:
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app.loop = loop
    s = app.settings
    exit_code = [0]
    stopping = asyncio.Event()

    def stop(code: int = 0) -> None:
        exit_code[0] = exit_code[0] or code
        stopping.set()

    loop.add_signal_handler(signal.SIGTERM, stop)
    if stop_early:
        stop()
    stuck_after = app.timeout + max(app.timeout, 10.0)
    done = threading.Event()

    def watchdog() -> None:
        while not done.wait(0.1):
            app.watchdog_check()
            running = app.running_since()
            if running and time.monotonic() - running > stuck_after:
                log.error("a handler call has run for over %.0f s (timeout %g s); this worker exits and the "
                          "supervisor starts a new one", stuck_after, app.timeout)
                sys.stderr.flush()
                os._exit(EXIT_STUCK)

    async def main() -> None:
        # Our own accept loop: every pending connection per wake-up (uvloop's server accepts one per
        # loop iteration, so a burst of new clients behind a busy handler waited seconds to be accepted)
        listening = [True]

        def on_accept() -> None:
            for _ in range(1024):
                try:
                    client, _addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as err:  # e.g. EMFILE: back off instead of spinning on a readable socket
                    log.warning("accept failed (%s); retrying in 0.1 s", err.strerror or err)
                    loop.remove_reader(sock.fileno())
                    loop.call_later(0.1, lambda: listening[0] and loop.add_reader(sock.fileno(), on_accept))
                    return
                client.setblocking(False)
                loop.create_task(_adopt(client))

        async def _adopt(client: socket.socket) -> None:
            try:
                await loop.connect_accepted_socket(lambda: Connection(app), client)
            except OSError:
                client.close()

        loop.add_reader(sock.fileno(), on_accept)
        report("ready")
        log.info("ready: %s, batch size %d", app.handler.describe(), app.batch_size)
        rss_cap = int(s.max_worker_rss_mb * 1024 * 1024) if s.max_worker_rss_mb else 0
        recycling = False
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
            app.sweep()
            for conn in [c for c in app.conns if c.poisoned]:
                conn.transport.close()
                app.conns.discard(conn)
            if rss_cap and not recycling and _rss_bytes() > rss_cap:
                recycling = True
                log.warning("worker RSS %d MB is over max_worker_rss_mb=%g; asking for a replacement",
                            _rss_bytes() // (1024 * 1024), s.max_worker_rss_mb)
                report("recycle")
        # graceful: stop accepting, answer what is in flight, close idle connections, then exit
        app.healthy = False
        listening[0] = False
        loop.remove_reader(sock.fileno())
        sock.close()
        deadline = time.monotonic() + s.graceful_shutdown_seconds
        await asyncio.sleep(0.05)  # read what already arrived on accepted connections before closing idle ones
        while time.monotonic() < deadline:
            for conn in list(app.conns):
                if conn.state == IDLE:
                    conn.state = CLOSED
                    conn.transport.close()
                    app.conns.discard(conn)
            if not app.conns and not app.ready:
                break
            await asyncio.sleep(0.05)

    threading.Thread(target=watchdog, name="aiops-watchdog", daemon=True).start()
    try:
        loop.run_until_complete(main())
    finally:
        done.set()
    return exit_code[0]


def _path(value: str | None):
    from pathlib import Path

    return Path(value) if value else None


def main() -> None:  # python -m aiops.inference.server --fd N [--ready-fd M]
    import argparse

    parser = argparse.ArgumentParser(prog="aiops-serve-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, default=None)
    args = parser.parse_args()
    spec = WorkerSpec.model_validate_json(os.environ[SPEC_ENV])
    code = worker_main(args.fd, args.ready_fd, spec)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait on torch's atexit work


if __name__ == "__main__":
    main()
