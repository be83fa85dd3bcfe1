"""One serving worker: a lean HTTP/1.1 server on asyncio (uvloop when installed) and httptools.

Process model (see docs/architecture.md): the supervisor binds the port; each worker process loads
the model, then opens its own listening socket on that port with ``SO_REUSEPORT`` (the kernel
spreads new connections over the workers that are listening) and serves it with two threads:

- the event loop does all the I/O: it parses requests (httptools, one parser per connection) and
  enforces every bound before anything large is buffered: header size (431), header/body read
  and keep-alive timeouts, connections per worker, body size (413, before the body is read), the
  API key (401); it answers ``/ping`` itself, so a health check never waits for the model;
- a complete request goes on the worker's work queue (bounded: past ``max_queue`` requests read
  and not answered it is answered 503 with Retry-After at once). One inference thread takes it
  off and runs the handler; with batching on it takes what is waiting (topped up for at most
  ``max_batch_delay_ms`` while more keep arriving): the queue is the batch. Results go back to
  the loop with one wake-up for whatever finished meanwhile;
- a response may be a stream (a handler returned an iterator, :mod:`aiops.inference.streaming`):
  its first chunk is made inside the handler call, the rest on the stream's own thread, sent as
  HTTP chunks on ``/invocations`` or event-stream frames on the response-stream route;
- the loop answers 504 for a request past the timeout (running or still queued) and ends the
  worker when a handler call stays stuck (the supervisor starts a new one);
- a handler may raise anything, ``SystemExit`` and ``KeyboardInterrupt`` included: it is that
  request's 500 (or its typed 4xx), never the worker's end.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from typing import Any

from pydantic import BaseModel

from aiops.inference import codecs
from aiops.inference.errors import HttpError, typed_status
from aiops.inference.scheduling import PROMOTION_POLL_SECONDS, Placement, SchedulingPolicy
from aiops.inference.streaming import BUFFERED, CHUNKED, EVENTS
from aiops.settings import ServeSettings

log = logging.getLogger("aiops.serve")

SPEC_ENV = "AIOPS_SERVE_WORKER_SPEC"
MAX_CUSTOM_ATTRIBUTES = 1024
MAX_URL_BYTES = 8192
PING_BODY = b'{"status":"Healthy"}\n'
UNHEALTHY_BODY = b'{"status":"Unhealthy"}\n'
RETRY_AFTER_SECONDS = 1
EXIT_STUCK = 70  # the worker ended itself: a handler call stayed stuck past the timeout
EXIT_INFERENCE_DIED = 71  # the inference thread itself failed (never a handler's error)
EVENTSTREAM_TYPE = b"application/vnd.amazon.eventstream"


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


_OK = _status_line(200)


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
    __slots__ = ("conn", "body", "ctype", "accept", "attrs", "rid", "inference_id", "t0", "keep_alive", "mode",
                 "done", "late")

    def __init__(self, conn, body, ctype, accept, attrs, rid, inference_id, keep_alive, mode):
        self.conn, self.body, self.ctype, self.accept, self.attrs = conn, body, ctype, accept, attrs
        self.rid, self.inference_id, self.keep_alive, self.mode = rid, inference_id, keep_alive, mode
        self.t0 = time.monotonic()
        self.done = False  # answered (or abandoned: the client left); set on the loop thread only
        self.late = None  # the watchdog answered it 504 during an inline call: what it could not write yet


class _Rest:
    """What is left of an answer the inference thread could only partly write (socket full)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Streamed:
    """An inference result that streams: its first chunk is already made (on the inference thread)."""

    __slots__ = ("stream", "ctype")

    def __init__(self, stream, ctype: str) -> None:
        self.stream, self.ctype = stream, ctype


httptools = None  # the module, imported by the first connection

# the request headers a connection keeps: lower-case name -> (attribute, kept as text, characters
# kept: None for all)
_KEPT_HEADERS = {
    b"content-type": ("ctype", True, None),
    b"accept": ("accept", True, None),
    b"x-amzn-sagemaker-custom-attributes": ("attrs", False, None),
    b"x-amzn-sagemaker-accept": ("sm_accept", True, None),  # how boto3 sends Accept on the response-stream route
    b"x-amzn-sagemaker-inference-id": ("inference_id", True, 64),
    b"x-api-key": ("api_key", False, None),
    b"authorization": ("auth", False, None),
    b"content-length": ("length", False, None),
}


class Connection(asyncio.Protocol):
    """One client connection: httptools parsing with every bound checked as bytes arrive."""

    __slots__ = ("app", "transport", "parser", "state", "deadline", "header_bytes", "url", "headers_size",
                 "ctype", "accept", "sm_accept", "attrs", "inference_id", "api_key", "auth", "length", "body",
                 "body_size", "complete", "paused", "backlog", "last_active", "sink", "current", "wfd", "answered")

    def __init__(self, app: "App") -> None:
        self.app = app
        self.transport = None
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
        if httptools is None:  # imported on first use: the supervisor imports this module too
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
        self.body = []
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
            self.fail(431, f"the request line and headers are larger than {self.app.max_header_bytes} bytes "
                           "(max_header_kb)", close=True)
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
            raise _Abort

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers_size += len(name) + len(value) + 4
        if self.headers_size > self.app.max_header_bytes:
            self.fail(431, f"the request headers are larger than {self.app.max_header_bytes} bytes (max_header_kb)",
                      close=True)
            raise _Abort
        kept = _KEPT_HEADERS.get(name.lower())
        if kept is not None:
            field, as_text, cap = kept
            setattr(self, field, value.decode("latin-1")[:cap] if as_text else value)

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
            self.current = None
            self.transport.close()
        else:
            self.resume()


class _Abort(Exception):
    """Stops httptools from parsing further once a callback has answered (and closed)."""


_STOP = None  # what the loop puts on the work queue to end the inference thread


class App:
    """Routing, admission, the work queue, the inference thread and the answers of one worker.

    Threads: the event loop does all the I/O (parsing, bounds, /ping, writing answers, timeouts);
    one inference thread takes requests off ``work`` and runs the handler (a batch at a time when
    batching is on), then hands the results back with one loop wake-up for whatever finished
    meanwhile. So a /ping, a new connection or a 408 never waits for a handler call.
    """

    def __init__(self, handler, spec: WorkerSpec) -> None:
        from aiops.inference import streaming
        from aiops.inference.handler import Context

        s = spec.settings
        self.handler = handler
        self.streaming = streaming
        self.settings = s
        self.model_dir = spec.model_dir
        self.Context = Context
        self.batch_size = max(1, s.batch_size) if handler.batchable else 1
        self.api_key = s.api_key.encode() if s.api_key else None
        self.variant = s.variant.encode()
        self.max_payload = s.max_payload_bytes
        self.max_header_bytes = int(s.max_header_kb * 1024)
        self.header_timeout = s.header_timeout_seconds
        self.body_timeout = s.body_timeout_seconds
        self.keep_alive = s.keep_alive_seconds
        self.timeout = s.timeout_seconds
        self.stuck_after = self.timeout + max(self.timeout, 10.0)
        self.max_connections = s.max_connections
        self.max_queue = s.max_queue
        self.conns: set[Connection] = set()
        # Guards the hand-over between the threads: a request is answered once (req.done), and a
        # connection's duplicate fd is not closed while the inference thread writes to it.
        self.lock = threading.Lock()
        # requests read and not yet answered, oldest first (the timeout sweep relies on the order)
        self.inflight: dict[Request, None] = {}
        self.streams: set = set()  # streamed answers being sent
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.finished: collections.deque = collections.deque()  # (requests, results) from the inference thread
        self.wake_pending = False  # a loop wake-up for ``finished`` is scheduled
        self.healthy = True
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.call_started: float | None = None  # set while a handler call runs (either thread)
        self.thread: threading.Thread | None = None
        # Where each handler call runs (the loop or the inference thread) and when a batch closes:
        # decided by the policy; this class carries the decisions out.
        self.policy = SchedulingPolicy.for_worker(batch_size=self.batch_size,
                                                  max_batch_delay_ms=s.max_batch_delay_ms,
                                                  inline_call_ms=s.inline_call_ms)
        self.solo: list[Request] = []  # requests placed SOLO, run by the loop after this poll
        self.solo_scheduled = False  # a loop callback for ``solo`` is scheduled
        self.pending: list[Request] = []  # requests placed INLINE, read and not yet run
        self.flush_scheduled = False  # a loop callback for ``pending`` is scheduled
        self.inline_reqs: list[Request] = []  # the loop's call running now: the watchdog's view

    # ---- admission (loop thread)
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
        if not (url == b"/invocations" or _endpoint_route(url) is not None):
            return 404, (f"no route {url.decode('latin-1')[:200]!r}; use /ping, /invocations or "
                         "/endpoints/NAME/invocations[-response-stream]"), None
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
        parser = conn.parser
        keep = parser.should_keep_alive() and not self.draining
        url = conn.url
        if url == b"/ping" or url.startswith(b"/ping?"):
            body = PING_BODY if self.healthy else UNHEALTHY_BODY
            status = 200 if self.healthy else 503
            head = b"%scontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n" % (
                _status_line(status), len(body), b"" if keep else b"connection: close\r\n")
            conn.write_and_finish(head + (body if parser.get_method() == b"GET" else b""), not keep)
            return
        if len(self.inflight) >= self.max_queue:
            conn.fail(503, f"the model server is overloaded: this worker has {self.max_queue} requests waiting "
                           "(max_queue); retry shortly",
                      extra=[(b"retry-after", str(RETRY_AFTER_SECONDS).encode())], close=not keep,
                      etype="ServiceUnavailable")
            return
        body = conn.body[0] if len(conn.body) == 1 else b"".join(conn.body)
        conn.body = []
        if url == b"/invocations":
            mode = CHUNKED if parser.get_http_version() != "1.0" else BUFFERED
            accept = conn.accept
        else:
            mode = _endpoint_route(url.split(b"?", 1)[0])
            accept = conn.sm_accept or conn.accept if mode == EVENTS else conn.accept
        req = Request(conn, body, conn.ctype, accept, conn.attrs, _rid(), conn.inference_id, keep, mode)
        conn.current = req
        self.inflight[req] = None
        placement = self.policy.on_admit(len(self.inflight))
        if placement is Placement.INLINE:
            self.pending.append(req)
            if not self.flush_scheduled:  # after this poll's reads: every request they completed
                self.flush_scheduled = True
                self.loop.call_soon(self._flush)
        elif placement is Placement.SOLO:
            # the loop runs it right after this poll (no queue, no thread wake-up, no GIL hand-over),
            # guarded as inline mode: watchdog, budget
            self.solo.append(req)
            if not self.solo_scheduled:
                self.solo_scheduled = True
                self.loop.call_soon(self._run_solo)
        else:
            self._to_thread(req)

    def _to_thread(self, req: Request) -> None:
        self.policy.to_thread()
        self.work.put(req)

    def _run_solo(self) -> None:
        self.solo_scheduled = False
        solo, self.solo = self.solo, []
        for req in solo:
            if req.done:
                continue
            if self.policy.solo_turn() is Placement.SOLO:
                self._run_inline([req], solo=True)
            else:  # something went to the thread meanwhile (or a slow call): keep the order there
                self._to_thread(req)

    def abandon(self, req: Request) -> None:
        """The client of ``req`` has gone (loop thread): it is not run if it has not started."""
        with self.lock:
            req.done = True
            self.inflight.pop(req, None)

    def resumed(self, conn: Connection) -> None:
        """Loop thread: a connection the inference thread answered reads its next request."""
        with self.lock:  # the inference thread's write has finished
            conn.answered = False
        conn.resume()

    # ---- the inference thread
    def start_inference(self) -> None:
        self.thread = threading.Thread(target=self._inference_main, name="aiops-inference", daemon=True)
        self.thread.start()
        if self.policy.uses_loop:
            threading.Thread(target=self.watch, name="aiops-watchdog", daemon=True).start()

    def _inference_main(self) -> None:
        try:
            self._inference_loop()
        except BaseException:  # noqa: BLE001 - our own bug, not a handler's: this worker cannot serve
            log.critical("the inference thread failed; this worker exits and the supervisor starts a new one\n%s",
                         traceback.format_exc().rstrip())
            sys.stderr.flush()
            os._exit(EXIT_INFERENCE_DIED)

    def _inference_loop(self) -> None:
        get, batch_size, policy = self.work.get, self.batch_size, self.policy
        while True:
            req = get()
            if req is _STOP:
                return
            batch = [req]
            if batch_size > 1:
                self._gather(batch)
            live = [r for r in batch if not r.done]
            if not live:
                policy.thread_done(len(batch))
                continue
            self.call_started = started = time.monotonic()
            if len(live) == 1:
                waited = None
                results = [self._invoke(live[0])]
            else:
                waited = _runqueue_wait()
                results = self._invoke_batch(live)
            self.call_started = None
            policy.on_call_finished(time.monotonic() - started, off_cpu=_off_cpu_since(waited))
            # One answer: written here. A batch's answers go to the loop in one wake-up instead: a
            # write per answer from this thread gives the GIL away once per answer (measured slower).
            rest = self._answer_direct(live, results) if len(live) == 1 else (live, results)
            if rest:
                self.finished.append(rest)
                if not self.wake_pending:  # one loop wake-up for whatever is left until the loop runs
                    self.wake_pending = True
                    self.loop.call_soon_threadsafe(self._deliver)
            policy.thread_done(len(batch))

    # ---- inline mode (loop thread)
    def _flush(self) -> None:
        """Run the requests this poll completed: one call each, or batches of up to batch_size."""
        self.flush_scheduled = False
        pending, policy = self.pending, self.policy
        if not pending:
            return
        placement = policy.on_flush()
        if placement is Placement.WAIT:  # the inference thread is not done yet: look again shortly
            self.flush_scheduled = True
            self.loop.call_later(PROMOTION_POLL_SECONDS, self._flush)
            return
        if placement is Placement.THREAD:  # demoted meanwhile: the inference thread takes what waits
            self.pending = []
            for req in pending:
                if not req.done:
                    self._to_thread(req)
            return
        n = self.batch_size
        if n > 1:
            if not policy.batch_closes(len(pending), len(self.conns), pending[0].t0, time.monotonic()):
                # still arriving: one more (non-blocking) look at the sockets before the call
                self.flush_scheduled = True
                self.loop.call_soon(self._flush)
                return
            take = pending[:n]
            del pending[:n]
            live = [r for r in take if not r.done]
            if live:
                self._run_inline(live)
        else:
            i = 0
            while i < len(pending) and policy.inline:
                req = pending[i]
                i += 1
                if not req.done:
                    self._run_inline([req])
            del pending[:i]
        if pending and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _run_inline(self, reqs: list[Request], solo: bool = False) -> None:
        self.inline_reqs = reqs
        waited = _runqueue_wait() if len(reqs) > 1 else None
        self.call_started = started = time.monotonic()
        try:
            results = [self._invoke(reqs[0])] if len(reqs) == 1 else self._invoke_batch(reqs)
        finally:
            self.call_started = None
            self.inline_reqs = []
        self.policy.on_call_finished(time.monotonic() - started, solo=solo, off_cpu=_off_cpu_since(waited))
        with self.lock:  # once for the whole batch: only the watchdog competes
            was_done = [r.done for r in reqs]
            for req in reqs:
                req.done = True
                self.inflight.pop(req, None)
        for req, result, done in zip(reqs, results, was_done):
            if done:
                self._after_late(req, result)
            else:
                self._reply(req, result)

    def _after_late(self, req: Request, result: Any) -> None:
        """An inline result for a request that was answered meanwhile (504 by the watchdog) or abandoned."""
        if isinstance(result, Streamed):
            result.stream.discard()
        conn, late = req.conn, req.late
        if late is None or conn.state == CLOSED:
            return
        if late:  # the watchdog's 504 did not fit in the socket: the rest goes the usual way
            conn.write_and_finish(late, not req.keep_alive)
        elif not req.keep_alive:
            conn.state = CLOSED
            conn.current = None
            conn.transport.close()

    def watch(self) -> None:
        """Watchdog thread: during an inline call (the loop itself is busy) it answers 504 past the
        timeout and ends the worker when the call stays stuck, as the loop does for the inference thread."""
        while True:
            time.sleep(0.1)  # the loop's own sweep has the same granularity
            reqs, started = self.inline_reqs, self.call_started
            if not reqs or started is None:
                continue
            now = time.monotonic()
            if now - started > self.stuck_after:
                log.error("a handler call has run for over %.0f s (timeout %g s); this worker exits and the "
                          "supervisor starts a new one", self.stuck_after, self.timeout)
                sys.stderr.flush()
                os._exit(EXIT_STUCK)
            for req in reqs:
                if now - req.t0 > self.timeout and not req.done:
                    self._late_direct(req)

    def _late_direct(self, req: Request) -> None:
        err = HttpErrorTimeout(self.timeout)
        extra = [(b"x-amzn-sagemaker-custom-attributes", req.attrs)] if req.attrs is not None else []
        data = error_response(504, err.message, err.error_type, req.rid, extra=extra, close=not req.keep_alive)
        conn = req.conn
        with self.lock:
            if req.done:
                return
            req.done = True
            self.inflight.pop(req, None)
            log.error("request %s: %s", req.rid, err.message)
            req.late = data
            if conn.wfd < 0 or conn.transport.get_write_buffer_size():
                return  # the loop writes it once the call returns
            conn.answered = req.keep_alive
            try:
                sent = os.write(conn.wfd, data)
            except OSError:
                sent = 0
            if sent < len(data):
                conn.answered = False
            req.late = data[sent:]

    def _answer_direct(self, reqs: list[Request], results: list) -> tuple[list, list] | None:
        """Inference thread: write plain answers straight to their sockets (the usual case: small,
        keep-alive, nothing else pending on the connection); return what the loop must answer."""
        left_reqs, left_results = [], []
        lock, inflight = self.lock, self.inflight
        for req, result in zip(reqs, results):
            conn = req.conn
            if (type(result) is not tuple or not req.keep_alive or self.draining or req.mode == EVENTS
                    or conn.wfd < 0 or conn.backlog or len(result[0]) > 65536):
                left_reqs.append(req)
                left_results.append(result)
                continue
            data = self._whole(req, result[0], result[1])
            with lock:
                if req.done or conn.wfd < 0 or conn.transport.get_write_buffer_size():
                    if not req.done:
                        left_reqs.append(req)
                        left_results.append(result)
                    continue
                req.done = True
                inflight.pop(req, None)
                conn.answered = True  # before the write: the client's next request may arrive at once
                try:
                    sent = os.write(conn.wfd, data)
                except BlockingIOError:
                    sent = 0
                except OSError:  # the client has gone: the loop sees connection_lost
                    conn.answered = False
                    continue
                if sent < len(data):  # the socket is full: the loop writes the rest, then reads on
                    conn.answered = False
                    left_reqs.append(req)
                    left_results.append(_Rest(data[sent:]))
        return (left_reqs, left_results) if left_reqs else None

    def _gather(self, batch: list) -> None:
        """Top ``batch`` up from the queue: what is waiting, then stragglers while they keep coming
        (at most ``max_batch_delay`` after the first; a lone request never waits). It sleeps 0.5 ms
        at a time instead of waiting on the queue, so stragglers do not wake it one by one."""
        work, n, policy = self.work, self.batch_size, self.policy
        while len(batch) < n:
            try:
                req = work.get_nowait()
            except queue.Empty:
                wait = policy.straggler_wait(len(batch), batch[0].t0, time.monotonic())
                if wait <= 0:
                    return
                before = len(batch)
                time.sleep(wait)
                while len(batch) < n:
                    try:
                        req = work.get_nowait()
                    except queue.Empty:
                        break
                    if req is _STOP:
                        work.put(_STOP)  # run this batch first, then stop
                        return
                    batch.append(req)
                if len(batch) == before:  # arrivals paused: run what we have
                    return
                continue
            if req is _STOP:
                work.put(_STOP)  # run this batch first, then stop
                return
            batch.append(req)

    def _context(self, req: Request):
        return self.Context(model_dir=self.model_dir, request_id=req.inference_id or req.rid,
                            content_type=req.ctype, accept=req.accept,
                            custom_attributes=req.attrs.decode("latin-1") if req.attrs is not None else None,
                            headers=None)

    def _invoke(self, req: Request):
        try:
            out, ctype = self.streaming.invoke(self.handler, req.body, req.ctype, req.accept, self._context(req))
            return self._prime(out, ctype)
        except BaseException as err:  # noqa: BLE001 - even SystemExit: that request's 500, not the worker's end
            return err

    def _prime(self, out, ctype):
        if not self.streaming.is_stream(out):
            return out, ctype
        stream = self.streaming.ChunkStream(out)
        stream.prime()  # the first chunk is part of the handler call (its errors are ordinary errors)
        return Streamed(stream, ctype)

    def _invoke_batch(self, batch: list[Request]) -> list:
        try:
            results = self.handler.invoke_batch([(r.body, r.ctype, r.accept, self._context(r)) for r in batch])
        except BaseException as err:  # noqa: BLE001 - invoke_batch captures per request; this is a backstop
            return [err] * len(batch)
        out = []
        for result in results:
            # a whole answer (bytes) never streams: no iterator check for it
            if isinstance(result, tuple) and type(result[0]) is not bytes:
                try:
                    result = self._prime(*result)
                except BaseException as err:  # noqa: BLE001
                    result = err
            out.append(result)
        return out

    # ---- answers (loop thread)
    def _deliver(self) -> None:
        self.wake_pending = False
        finished = self.finished
        while finished:
            reqs, results = finished.popleft()
            for req, result in zip(reqs, results):
                self._answer(req, result)

    def _answer(self, req: Request, result: Any) -> None:
        if isinstance(result, _Rest):  # the rest of an answer the inference thread began to write
            req.conn.write_and_finish(result.data, False)
            return
        with self.lock:
            done, req.done = req.done, True
            self.inflight.pop(req, None)
        if done:  # answered already (504) or the client left
            if isinstance(result, Streamed):
                result.stream.discard()
            return
        self._reply(req, result)

    def _reply(self, req: Request, result: Any) -> None:
        """Answer ``req`` (now marked done) with its result."""
        if self.draining:  # each answer from a draining worker closes its connection
            req.keep_alive = False
        conn = req.conn
        if conn.state == CLOSED:
            if isinstance(result, Streamed):
                result.stream.discard()
            return
        if isinstance(result, BaseException):
            self._answer_error(req, result)
            return
        if isinstance(result, Streamed):
            task = self.loop.create_task(self._stream(req, result))
            self.streams.add(task)
            task.add_done_callback(self.streams.discard)
            return
        out, out_type = result
        self._write_whole(req, out, out_type)

    def _head(self, req: Request, status: int = 200) -> list:
        head = [_status_line(status), b"x-amzn-requestid: ", req.rid.encode(), b"\r\nx-amzn-invoked-production-variant: ",
                self.variant, b"\r\n"]
        if req.attrs is not None:
            head += [b"x-amzn-sagemaker-custom-attributes: ", req.attrs, b"\r\n"]
        if not req.keep_alive:
            head.append(b"connection: close\r\n")
        return head

    def _whole(self, req: Request, out: bytes, out_type: str) -> bytes:
        """A small plain answer in one buffer (one send)."""
        head = b"%sx-amzn-requestid: %s\r\nx-amzn-invoked-production-variant: %s\r\ncontent-type: %s\r\n" % (
            _OK, req.rid.encode(), self.variant, out_type.encode("latin-1"))
        if req.attrs is not None:
            head += b"x-amzn-sagemaker-custom-attributes: " + req.attrs + b"\r\n"
        if not req.keep_alive:
            head += b"connection: close\r\n"
        return head + b"content-length: %d\r\n\r\n" % len(out) + out

    def _write_whole(self, req: Request, out: bytes, out_type: str) -> None:
        conn = req.conn
        if req.mode != EVENTS and len(out) < 65536:  # the usual small answer: one buffer, one send
            conn.write_and_finish(self._whole(req, out, out_type), not req.keep_alive)
            return
        head = self._head(req)
        if req.mode == EVENTS:  # a whole answer on the response-stream route: one PayloadPart
            head += [b"content-type: ", EVENTSTREAM_TYPE, b"\r\nx-amzn-sagemaker-content-type: ",
                     out_type.encode("latin-1"), b"\r\n"]
            out = self.streaming.eventstream.payload_part(out)
        else:
            head += [b"content-type: ", out_type.encode("latin-1"), b"\r\n"]
        head.append(b"content-length: %d\r\n\r\n" % len(out))
        if len(out) < 65536:  # one write (one send) for the usual small answer
            conn.write_and_finish(b"".join(head) + out, not req.keep_alive)
        else:  # no copy of a large body
            conn.transport.write(b"".join(head))
            conn.write_and_finish(out, not req.keep_alive)

    async def _stream(self, req: Request, result: Streamed) -> None:
        streaming, conn, stream = self.streaming, req.conn, result.stream
        conn.current = None  # from here the stream watches the client itself
        try:
            await stream.start()
            if req.mode == BUFFERED:  # HTTP/1.0 or the InvokeEndpoint route: the whole body
                try:
                    out = await stream.collect()
                except BaseException as err:  # noqa: BLE001 - nothing sent yet: an ordinary error answer
                    if isinstance(err, asyncio.CancelledError):
                        raise
                    self._answer_error(req, err)
                    return
                self._write_whole(req, out, result.ctype)
                return
            if conn.state == CLOSED:
                return
            head = self._head(req)
            head.append(streaming.head_lines(req.mode, result.ctype) + b"\r\n")
            conn.sink = sink = streaming.TransportSink(conn.transport)
            sink.start(b"".join(head))
            outcome = await streaming.stream_to(stream, sink, mode=req.mode, request_id=req.rid,
                                                timeout_s=self.timeout)
            conn.sink = None
            if outcome.completed and req.keep_alive:
                conn.resume()
            elif conn.state != CLOSED:
                conn.state = CLOSED
                conn.transport.close()
        finally:
            conn.sink = None
            stream.close()

    def _answer_error(self, req: Request, err: BaseException) -> None:
        if self.draining:
            req.keep_alive = False
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
            if conn.answered:  # answered by the inference thread and no next request yet: idle now
                self.resumed(conn)
            if conn.state in (IDLE, HEADERS, BODY, LINGER) and now > conn.deadline:
                if conn.state in (IDLE, LINGER):
                    conn.state = CLOSED
                    conn.transport.close()  # idle keep-alive (or never started): close quietly
                else:
                    what = "headers" if conn.state == HEADERS else "body"
                    conn.fail(408, f"the request {what} did not arrive in time "
                                   f"({what}_timeout_seconds)", close=True)
                self.conns.discard(conn)
        late = []
        with self.lock:
            for req in self.inflight:  # oldest first: stop at the first one still in time
                if now - req.t0 <= self.timeout:
                    break
                late.append(req)
            for req in late:  # running or queued past the timeout: 504 now (a late result is dropped)
                req.done = True
                del self.inflight[req]
        for req in late:
            err = HttpErrorTimeout(self.timeout)
            log.error("request %s: %s", req.rid, err.message)
            self._answer_error(req, err)

    def stuck(self) -> bool:
        """A handler call has run so far past the timeout that this worker should be replaced."""
        started = self.call_started
        return started is not None and time.monotonic() - started > self.stuck_after


def _endpoint_route(url: bytes) -> str | None:
    """``/endpoints/NAME/invocations`` -> buffered, ``.../invocations-response-stream`` -> events."""
    if not url.startswith(b"/endpoints/") or url.count(b"/") != 3:
        return None
    name, _, action = url[len(b"/endpoints/"):].partition(b"/")
    if not name:
        return None
    if action == b"invocations":
        return BUFFERED
    if action == b"invocations-response-stream":
        return EVENTS
    return None


class HttpErrorTimeout(HttpError):
    status_code = 504
    error_type = "ModelError"

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the model did not answer within {timeout:g} s (SAGEMAKER_MODEL_SERVER_TIMEOUT)")



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


_SCHED = threading.local()


def _runqueue_wait() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat), or None.
    One pread on a descriptor kept per thread (~3 µs)."""
    fd = getattr(_SCHED, "fd", None)
    if fd is None:
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            fd = -1
        _SCHED.fd = fd
    if fd < 0:
        return None
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _off_cpu_since(waited: float | None):
    """For a call that began with run-queue reading ``waited`` (None: not read): a function giving
    the seconds the thread has waited for a CPU since, or None when unknown (the policy asks it only
    for a call over its budget, so a fast call costs no reading)."""
    if waited is None:
        return None

    def off_cpu() -> float | None:
        now = _runqueue_wait()
        return None if now is None else now - waited

    return off_cpu


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
    # Two threads share the GIL (the loop, the inference thread or a stream's producer): a thread
    # that needs it waits until the holder blocks or this interval passes. 5 ms (the default) was
    # added to a streamed token's delivery and to a /ping during a Python-heavy handler.
    sys.setswitchinterval(0.001)
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

    async def main() -> None:
        # Our own accept loop: every pending connection per wake-up (uvloop's server accepts one per
        # loop iteration, so a burst of new clients waited to be accepted)
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

        app.start_inference()
        loop.add_reader(sock.fileno(), on_accept)
        report("ready")
        log.info("ready: %s, batch size %d", app.handler.describe(), app.batch_size)
        rss_cap = int(s.max_worker_rss_mb * 1024 * 1024) if s.max_worker_rss_mb else 0
        recycling = False
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
            app.sweep()
            if app.stuck():
                log.error("a handler call has run for over %.0f s (timeout %g s); this worker exits and the "
                          "supervisor starts a new one", app.stuck_after, app.timeout)
                sys.stderr.flush()
                os._exit(EXIT_STUCK)
            if rss_cap and not recycling and _rss_bytes() > rss_cap:
                recycling = True
                log.warning("worker RSS %d MB is over max_worker_rss_mb=%g; asking for a replacement",
                            _rss_bytes() // (1024 * 1024), s.max_worker_rss_mb)
                report("recycle")
        # Graceful: /ping says unhealthy, every answer from now on closes its connection. Take every
        # connection already queued on the listener before closing it (closing resets them), then
        # answer everything read or being read (queued requests included), close idle connections.
        app.healthy = False
        app.draining = True
        listening[0] = False
        loop.remove_reader(sock.fileno())
        on_accept()
        sock.close()
        deadline = time.monotonic() + s.graceful_shutdown_seconds
        await asyncio.sleep(0.05)  # read what already arrived on accepted connections before closing idle ones
        while time.monotonic() < deadline:
            for conn in list(app.conns):
                if conn.state == IDLE:
                    conn.state = CLOSED
                    conn.transport.close()
                    app.conns.discard(conn)
            if not app.conns and not app.inflight and not app.streams:
                break
            app.sweep()
            await asyncio.sleep(0.02)
        app.work.put(_STOP)

    try:
        loop.run_until_complete(main())
    finally:
        if app.thread is not None:
            app.thread.join(1.0)
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
