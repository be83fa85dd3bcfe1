"""`aiops serve MODEL_DIR --container tgi|lmi`: a Hugging Face causal LM behind the HTTP API of the LLM
container the endpoint runs, a second engine beside the handler server.

Process model: the handler server's supervisor (bind once, workers on the port, replaced when they die,
SIGTERM drains) runs workers of this module instead of the handler worker. Each worker loads the model
into an :class:`~aiops.inference.llm.engine.LLMEngine`, whose decode loop runs on the engine's own thread,
and serves HTTP on one asyncio loop with the handler server's HTTP layer: its connections
(:mod:`aiops.inference.serving.http.connection`: parsing and every bound on headers, bodies and their
deadlines), its answers' bytes (:mod:`~aiops.inference.serving.http.responses`) and the event-stream frames
of InvokeEndpointWithResponseStream (:mod:`~aiops.inference.serving.http.eventstream`).

Per request (:class:`LLMApp`): the route's parser (:mod:`aiops.inference.llm.protocols`) gives the call
or the container's refusal; each of the call's generations is submitted to the engine with a ``notify``
that wakes the loop (one wake-up for whatever finished meanwhile); a task per request drains its events
and writes them (server-sent events chunked on the container's routes, PayloadPart frames on the
response-stream route, the whole body on InvokeEndpoint's route and for HTTP/1.0). A client that leaves
cancels its generations (their batch slots are freed at the next step); a request past the server's
timeout is cancelled and answered 504 (or its stream ended).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiops.inference.errors import HttpError
from aiops.inference.llm import protocols
from aiops.inference.llm.calls import ApiError, Call, ModelContext, Reply, dumps
from aiops.inference.llm.folder import DEFAULT_MAX_TOTAL_TOKENS, check_causal_lm_folder, max_positions
from aiops.inference.llm.generation import Limits, LLMError
from aiops.inference.llm.protocols import Container
from aiops.inference.serving.http import admission, eventstream, routes
from aiops.inference.serving.http.connection import BODY, CLOSED, HEADERS, IDLE, LINGER, Connection
from aiops.inference.serving.http.listener import Listener
from aiops.inference.serving.http.responses import (
    RETRY_AFTER,
    answer_head,
    model_timeout,
    request_error,
    stream_head_lines,
)
from aiops.inference.serving.stream_sender import BUFFERED, CHUNKED, EVENTS
from aiops.inference.serving.work import request_id

from aiops.errors import UsageError
from aiops.settings import ServeSettings

if TYPE_CHECKING:
    from aiops.inference.llm.engine import Generation, LLMEngine
    from aiops.inference.serving.worker import WorkerSpec

log = logging.getLogger("aiops.serve")

WORKER_MODULE = "aiops.inference.llm.server"
_SWEEP_SECONDS = 0.1

# GET routes per container (TGI's router/src/server.rs info routes; djl-serving's /ping)
GET_ROUTES: dict[str, frozenset[str]] = {
    "tgi": frozenset({"/", "/health", "/ping", "/info", "/metrics", "/v1/models"}),
    "lmi": frozenset({"/ping", "/metrics"}),
}


# ---------------------------------------------------------------------- the command
def limits_for(opts: ServeSettings, config: dict) -> Limits:
    """The engine's bounds from the serve settings and the model's positions; UsageError naming the option."""
    positions = max_positions(config)
    total = opts.max_total_tokens
    if total is None:
        total = min(DEFAULT_MAX_TOTAL_TOKENS, positions or DEFAULT_MAX_TOTAL_TOKENS)
    elif positions is not None and total > positions:
        raise UsageError(
            f"--max-total-tokens {total} is more than the model's {positions} positions "
            f"(config.json max_position_embeddings): use at most {positions}"
        )
    try:
        return Limits(
            max_total_tokens=total,
            max_batch_size=opts.max_batch_size or Limits.max_batch_size,
            max_input_tokens=opts.max_input_tokens,
            max_queue=opts.max_queue,
        )
    except ValueError as exc:
        raise UsageError(f"LLM bounds: {exc} (--max-total-tokens, --max-input-tokens)") from None


def serve(
    model: str,
    opts: ServeSettings,
    *,
    runs_dir: Path,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """MODEL (a folder, a model.tar.gz or a local run, as for handlers) checked as a causal-LM folder and
    the bounds checked, then bind and run the workers; the exit code after a graceful stop."""
    from aiops import archive
    from aiops.artifacts.resolve import resolve_model

    logging.basicConfig(
        level=getattr(logging, opts.log_level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s [aiops serve] %(levelname)s %(message)s",
    )
    limits = {
        "max_bytes": int(opts.archive_max_gb * archive.GIB),
        "max_ratio": opts.archive_max_ratio,
        "max_members": opts.archive_max_members,
    }
    source = resolve_model(model, runs_dir=runs_dir, archive_limits=limits)
    try:
        return _serve_folder(source.model_dir.resolve(), opts, on_ready)
    finally:
        source.cleanup()


def _serve_folder(folder: Path, opts: ServeSettings, on_ready: Callable[[str], None] | None) -> int:
    from aiops.inference.serving.supervisor import Supervisor, bind
    from aiops.inference.serving.worker import WorkerSpec

    config = check_causal_lm_folder(folder)
    limits = limits_for(opts, config)
    opts = opts.model_copy(
        update={
            "max_total_tokens": limits.max_total_tokens,
            "max_batch_size": limits.max_batch_size,
        }
    )
    cpus = os.cpu_count() or 1
    spec = WorkerSpec(
        settings=opts,
        model_dir=str(folder),
        torch_threads=None if "OMP_NUM_THREADS" in os.environ else max(1, cpus // opts.workers),
    )
    sock = bind(opts.host, opts.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else '[' + host + ']'}:{port}"
    supervisor = Supervisor(spec, sock, module=WORKER_MODULE)
    return supervisor.run(on_ready=(lambda: on_ready(url)) if on_ready else None)


# ---------------------------------------------------------------------- one request
class LLMRequest:
    """A request being answered; its head fields are what the HTTP layer's answer builders read."""

    __slots__ = (
        "conn",
        "rid",
        "attrs",
        "keep_alive",
        "mode",
        "t0",
        "done",
        "timed_out",
        "handles",
        "wake",
        "streaming",
        "cancelled",
    )

    def __init__(self, conn: Connection, keep_alive: bool, mode: str) -> None:
        self.conn = conn
        self.rid = request_id()
        self.attrs = conn.attrs
        self.keep_alive = keep_alive
        self.mode = mode
        self.t0 = time.monotonic()
        self.done = False  # answered, or its client left
        self.timed_out = 0  # sweeps that found it past the timeout
        self.handles: list[Generation] = []
        self.wake = asyncio.Event()
        self.streaming = False  # the 200 head is out
        self.cancelled = False  # its generations were told to stop


class _Stop(Exception):
    """The request ends without an answer of its own: its client left, or it timed out."""


class LLMApp:
    """Routes, admission and answers of one LLM worker; what a
    :class:`~aiops.inference.serving.http.connection.Connection` calls (the handler server's ``App``
    interface: accept, check_head, admit, abandon, resumed, and the bounds)."""

    def __init__(
        self,
        engine: LLMEngine,
        context: ModelContext,
        container: Container,
        settings: ServeSettings,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        s = settings
        self.engine = engine
        self.context = context
        self.container = container
        self.settings = s
        self.api_key = s.api_key.encode() if s.api_key else None
        self.variant = s.variant.encode()
        self.max_payload = s.max_payload_bytes
        self.max_header_bytes = int(s.max_header_kb * 1024)
        self.header_timeout = s.header_timeout_seconds
        self.body_timeout = s.body_timeout_seconds
        self.write_timeout = s.write_timeout_seconds
        self.keep_alive = s.keep_alive_seconds
        self.timeout = s.timeout_seconds
        self.max_connections = s.max_connections
        self.max_queue = s.max_queue
        self.conns: set[Connection] = set()
        self.lock = threading.Lock()  # the Connection's hand-over lock; only the loop thread answers here
        self.inflight: dict[LLMRequest, None] = {}  # read and not yet answered, oldest first
        self.tasks: set[asyncio.Task] = set()
        self.healthy = True
        self.draining = False
        self.loop = loop
        self._woken: collections.deque[LLMRequest] = collections.deque()
        self._wake_pending = False
        self._post = frozenset(protocols.POST_ROUTES[container])
        self._get = GET_ROUTES[container]
        self.counts: collections.Counter[str] = collections.Counter()  # what /metrics reports

    # ---- the Connection's interface (loop thread)
    def accept(self, conn: Connection) -> None:
        admission.accept(self.conns, conn, self.max_connections)

    def check_head(self, conn: Connection):
        path = conn.url.split(b"?", 1)[0].decode("latin-1")
        method = conn.method
        is_post = path in self._post or routes.endpoint_route(path.encode("latin-1")) is not None
        if method in (b"GET", b"HEAD") and path in self._get:
            return None  # health and info: no key, as the containers
        if conn.ping_only:  # taken past max_connections: the health routes only
            return admission.ping_only_refusal(self.max_connections, "a GET route (/ping, /health)")
        if method == b"POST" and is_post:
            return routes.check_access(conn, self.api_key, self.max_payload)
        if is_post or path in self._get:
            return 405, f"use {'POST' if is_post else 'GET'} {path}", None
        hint = ", ".join(sorted(self._post | self._get))
        return 404, f"no route {path[:200]!r}; this {self.container} server answers {hint}", None

    def too_large_message(self) -> str:
        return routes.too_large_message(self.max_payload)

    def admit(self, conn: Connection) -> None:
        # what the connection read when the headers completed (the parser has moved on by now)
        keep = conn.keep_alive and not self.draining
        path = conn.url.split(b"?", 1)[0]
        method = conn.method
        if method in (b"GET", b"HEAD"):
            req = LLMRequest(conn, keep, BUFFERED)
            self._write_reply(req, self._get_reply(path.decode("latin-1")), with_body=method == b"GET")
            return
        if len(self.inflight) >= self.max_queue:
            conn.fail(
                503,
                f"the model server is overloaded: this worker has {self.max_queue} requests in flight "
                "(max_queue); retry shortly",
                extra=[RETRY_AFTER],
                close=not keep,
                etype="ServiceUnavailable",
            )
            return
        body = conn.body[0] if len(conn.body) == 1 else b"".join(conn.body)
        conn.body = []
        http10 = conn.http_version == "1.0"
        mode = routes.answer_mode(path, conn.http_version) or (BUFFERED if http10 else CHUNKED)
        api_path = "/invocations" if routes.endpoint_route(path) is not None else path.decode("latin-1")
        req = LLMRequest(conn, keep, mode)
        conn.current = req  # type: ignore[assignment]  # what connection_lost hands to abandon()
        self.inflight[req] = None
        self.counts["request"] += 1
        try:
            call = _parse(self.container, api_path, body, self.context)
        except ApiError as refused:
            self._answer(req, refused.reply)
            return
        except Exception:  # noqa: BLE001 - a parser bug: a 500 for this request, the worker carries on
            log.error("request %s: parsing failed\n%s", req.rid, traceback.format_exc().rstrip())
            self._answer_error(req, _internal(req))
            return
        task = self.loop.create_task(self._run(req, call))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def abandon(self, req: LLMRequest) -> None:
        """The client of ``req`` left: its generations stop and free their slots at the next step."""
        if req.done:
            return
        req.done = True
        self.inflight.pop(req, None)
        self._cancel(req)
        req.wake.set()

    def resumed(self, conn: Connection) -> None:  # the handler server's inference thread only
        conn.resume()

    # ---- the engine's wake-ups (notify runs on the engine thread)
    def _notifier(self, req: LLMRequest) -> Callable[[], None]:
        woken, loop = self._woken, self.loop

        def notify() -> None:
            woken.append(req)
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    loop.call_soon_threadsafe(self._wake)
                except RuntimeError:  # the loop is closed: the worker is stopping
                    pass

        return notify

    def _wake(self) -> None:
        self._wake_pending = False  # before draining: an event added from now on schedules another wake-up
        woken = self._woken
        while woken:
            woken.popleft().wake.set()

    # ---- a request's life (a task on the loop)
    async def _run(self, req: LLMRequest, call: Call) -> None:
        try:
            notify = self._notifier(req)
            try:
                for request in call.requests:
                    req.handles.append(self.engine.submit(request, notify=notify))
            except LLMError as error:
                self._cancel(req)
                self._answer(req, call.refuse(error))
                return
            if call.stream and req.mode != BUFFERED:
                await self._stream(req, call)
            elif call.stream:
                data = [call.head()]
                async for part in self._events(req, call):
                    data.append(part)
                self._answer(req, Reply(200, b"".join(data) + call.end(), call.content_type))
            else:
                await self._whole(req, call)
        except _Stop:
            pass
        except Exception:  # noqa: BLE001 - a bug here must not take the worker down; the client learns it
            log.error("request %s failed\n%s", req.rid, traceback.format_exc().rstrip())
            if not req.done and not req.streaming:
                self._answer_error(req, _internal(req))
            elif not req.done:
                self._end_stream(req)
        finally:
            self._cancel(req)

    async def _next(self, req: LLMRequest) -> None:
        await req.wake.wait()
        req.wake.clear()
        if req.done:
            raise _Stop
        if req.timed_out:
            self._timed_out(req)
            raise _Stop

    async def _whole(self, req: LLMRequest, call: Call) -> None:
        handles = req.handles
        try:
            while True:
                for handle in handles:
                    handle.poll()
                if all(handle.done for handle in handles):
                    break
                await self._next(req)
            reply = call.reply([handle.result() for handle in handles])
        except LLMError as error:
            reply = call.refuse(error)
        self._answer(req, reply)

    async def _events(self, req: LLMRequest, call: Call) -> AsyncIterator[bytes]:
        """The stream's bytes as the engine makes them (events of several generations interleaved); a
        generation that fails ends it with the container's error event."""
        handles = req.handles
        while True:
            out = []
            failed = None
            for index, handle in enumerate(handles):
                try:
                    for event in handle.poll():
                        out.append(call.event(index, event))
                except LLMError as error:
                    failed = error
                    break
            if failed is not None:
                out.append(call.fail(failed))
            data = b"".join(out)
            if data:
                yield data
            if failed is not None:
                return
            if all(handle.done for handle in handles):
                tail = call.end()
                if tail:
                    yield tail
                return
            await self._next(req)

    async def _stream(self, req: LLMRequest, call: Call) -> None:
        from aiops.inference.serving.http.responses import TransportSink

        conn = req.conn
        transport = conn.transport
        events = req.mode == EVENTS
        head = answer_head(req, self.variant)
        head.append(stream_head_lines(req.mode, call.content_type) + b"\r\n")
        conn.sink = sink = TransportSink(transport)  # type: ignore[assignment]
        req.streaming = True
        sink.start(b"".join(head))
        try:
            first = call.head()
            if first:
                await sink.send(eventstream.payload_part(first) if events else first)
            async for data in self._events(req, call):
                await sink.send(eventstream.payload_part(data) if events else data)
            await sink.finish()
        finally:
            conn.sink = None
        self.counts["success"] += 1
        self._settle(req)
        if req.keep_alive and not self.draining:
            conn.resume()
        else:
            conn.close()

    def _timed_out(self, req: LLMRequest) -> None:
        """Past the server's timeout: the generations stop; a 504, or the started stream ends."""
        self._cancel(req)
        self.counts["failure"] += 1
        if not req.streaming:
            err = model_timeout(self.timeout)
            log.error("request %s: %s", req.rid, err.message)
            self._answer_error(req, err)
            return
        self._end_stream(req, eventstream.INVOCATION_TIMEOUT)

    def _end_stream(self, req: LLMRequest, code: str = eventstream.STREAM_BROKEN) -> None:
        """A started stream that cannot complete: a ModelStreamError frame on the response-stream route
        (boto3 raises it), a chunked body cut short elsewhere; the connection closes."""
        conn = req.conn
        transport = conn.transport
        self._settle(req)
        if req.mode == EVENTS and not transport.is_closing():
            frame = eventstream.model_stream_error(f"the model's stream ended early ({code})", code)
            transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(frame), frame))
        conn.close()

    # ---- answers (loop thread)
    def _answer(self, req: LLMRequest, reply: Reply) -> None:
        if req.done:
            return
        self._settle(req)
        self.counts["success" if reply.status == 200 else "failure"] += 1
        self._write_reply(req, reply)

    def _answer_error(self, req: LLMRequest, err: BaseException) -> None:
        if req.done:
            return
        self._settle(req)
        req.conn.write_and_finish(request_error(req, err), not req.keep_alive)

    def _settle(self, req: LLMRequest) -> None:
        req.done = True
        self.inflight.pop(req, None)
        if self.draining:
            req.keep_alive = False

    def _write_reply(self, req: LLMRequest, reply: Reply, *, with_body: bool = True) -> None:
        status, body, ctype = reply.status, reply.body, reply.content_type
        on_endpoint = routes.endpoint_route(req.conn.url.split(b"?", 1)[0]) is not None
        if on_endpoint and status != 200:  # what InvokeEndpoint answers when the container does not say 200
            text = body.decode("utf-8", "replace")
            status, ctype = 424, "application/json"
            body = dumps(
                {
                    "Message": f"Received client error ({reply.status}) from primary with message "
                    + dumps(text).decode(),
                    "OriginalStatusCode": reply.status,
                    "OriginalMessage": text,
                }
            )
            extra: tuple[tuple[str, str], ...] = (("x-amzn-errortype", "ModelError"),)
        else:
            extra = reply.headers
        head = answer_head(req, self.variant, status)
        if req.mode == EVENTS and status == 200:
            body = eventstream.payload_part(body)
            head += [b"content-type: ", eventstream.CONTENT_TYPE.encode(), b"\r\n"]
            head += [b"x-amzn-sagemaker-content-type: ", ctype.encode("latin-1"), b"\r\n"]
        else:
            head += [b"content-type: ", ctype.encode("latin-1"), b"\r\n"]
        for name, value in extra:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        req.conn.write_and_finish(b"".join(head) + (body if with_body else b""), not req.keep_alive)

    def _cancel(self, req: LLMRequest) -> None:
        """Stop the request's unfinished generations (once: their end arrives a step later)."""
        live = [handle for handle in req.handles if not handle.done]
        if live and not req.cancelled:
            req.cancelled = True
            self.counts["cancelled"] += 1
            for handle in live:
                handle.cancel()

    # ---- GET routes
    def _get_reply(self, path: str) -> Reply:
        if path == "/metrics":
            return Reply(200, self.metrics().encode(), "text/plain; version=0.0.4")
        if self.container == "lmi" and path == "/ping":
            if self.healthy:
                return Reply(200, b'{"status":"Healthy"}\n')
            return Reply(503, b'{"status":"Unhealthy"}\n')
        if path in ("/", "/health", "/ping"):  # TGI's health: 200 and no body
            if self.healthy:
                return Reply(200, b"")
            return Reply(503, dumps({"error": "unhealthy", "error_type": "healthcheck"}))
        if path == "/v1/models":
            model = {"id": self.context.model_id, "object": "model", "created": 0}
            return Reply(
                200, dumps({"object": "list", "data": [{**model, "owned_by": self.context.model_id}]})
            )
        reply = protocols.get(self.container, path, self.context)
        return reply if reply is not None else Reply(404, b"")

    def metrics(self) -> str:
        """Prometheus text: TGI's metric names where TGI has them."""
        running, waiting = self.engine.counts()
        values = [
            ("tgi_request_count", "counter", self.counts["request"]),
            ("tgi_request_success", "counter", self.counts["success"]),
            ("tgi_request_failure", "counter", self.counts["failure"]),
            ("tgi_batch_current_size", "gauge", running),
            ("tgi_queue_size", "gauge", waiting),
            ("aiops_llm_requests_cancelled_total", "counter", self.counts["cancelled"]),
            ("aiops_llm_requests_in_flight", "gauge", len(self.inflight)),
        ]
        return "".join(f"# TYPE {name} {kind}\n{name} {value}\n" for name, kind, value in values)

    # ---- timers
    def sweep(self) -> None:
        """Header/body/keep-alive deadlines of the connections, and the requests past the timeout."""
        now = time.monotonic()
        stalled_before = now - self.write_timeout
        for conn in list(self.conns):
            if 0.0 < conn.write_stalled < stalled_before or (conn.state == CLOSED and now > conn.deadline):
                # its client has read nothing for write_timeout_seconds, or it closed with data its
                # client never took: a reset (the handler server's rule)
                admission.drop(self.conns, conn)
            elif conn.state in (IDLE, HEADERS, BODY, LINGER) and now > conn.deadline:
                if conn.state in (IDLE, LINGER):
                    conn.close()
                else:
                    what = "headers" if conn.state == HEADERS else "body"
                    conn.fail(
                        408, f"the request {what} did not arrive in time ({what}_timeout_seconds)", close=True
                    )
                self.conns.discard(conn)
        for req in list(self.inflight):  # oldest first: stop at the first one still in time
            if now - req.t0 <= self.timeout:
                break
            req.timed_out += 1
            req.wake.set()
            if req.timed_out > 2:  # its task is stuck writing to a client that stopped reading
                self._cancel(req)
                self._settle(req)
                req.conn.transport.abort()

    def close_idle(self) -> None:
        for conn in list(self.conns):
            if conn.state == IDLE:
                conn.close()
                self.conns.discard(conn)

    @property
    def busy(self) -> bool:
        return bool(self.conns or self.inflight or self.tasks)


def _internal(req: LLMRequest) -> HttpError:
    return HttpError(f"the LLM server failed on request {req.rid}; see its log", 500)


def _parse(container: Container, path: str, body: bytes, context: ModelContext) -> Call:
    call = protocols.parse(container, path, body, context)
    if call is None:  # check_head routed only the container's POST paths here
        raise ApiError(Reply(404, b""), f"no route {path}")
    return call


# ---------------------------------------------------------------------- the worker process
def worker_main(fd: int, ready_fd: int | None, spec: WorkerSpec, supervisor_pid: int | None = None) -> int:
    from aiops.inference.serving.worker import _configure_logging, _listen, _raise_fd_limit

    from aiops.errors import AiopsError

    s = spec.settings
    _configure_logging(s.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C reaches it too
    stop_early: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_early.append(1))

    def report(line: str) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, (line.replace("\n", " ")[:2000] + "\n").encode())
            except OSError:
                pass

    container: Container = "lmi" if s.container == "lmi" else "tgi"
    try:
        if spec.torch_threads:
            import torch

            torch.set_num_threads(spec.torch_threads)
        from aiops.inference.llm.engine import LLMEngine

        folder = Path(spec.model_dir)
        limits = limits_for(s, check_causal_lm_folder(folder))
        engine = LLMEngine.from_folder(folder, limits)
        context = protocols.model_context(folder, container, limits)
    except AiopsError as err:  # "usage-error": bad input, the CLI exits 2
        report(f"{'usage-error' if isinstance(err, UsageError) else 'error'}: {err}")
        return 3
    except BaseException as err:  # noqa: BLE001 - transformers failed to load the folder
        log.error("loading the model failed\n%s", traceback.format_exc().rstrip())
        report(f"error: loading the model failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}")
        return 3
    if stop_early:
        return 0
    _raise_fd_limit()
    sys.setswitchinterval(0.001)  # the loop and the engine thread share the GIL: hand it over promptly
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    engine.start()
    try:
        app = LLMApp(engine, context, container, s, loop)
        return _serve(app, _listen(fd), report, stop_early, supervisor_pid)
    finally:
        engine.close(timeout=5)


def _serve(
    app: LLMApp,
    sock: socket.socket,
    report: Callable[[str], None],
    stop_early: list,
    supervisor_pid: int | None = None,
) -> int:
    loop = app.loop
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    if stop_early:
        stopping.set()

    async def main() -> None:
        listener = Listener(loop, sock, lambda: Connection(app))  # type: ignore[arg-type]  # App-like
        listener.start()
        report("ready")
        limits = app.context.limits
        log.info(
            "ready: %s API, max_total_tokens %d, max_batch_size %d",
            app.container,
            limits.max_total_tokens,
            limits.max_batch_size,
        )
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), _SWEEP_SECONDS)
            except asyncio.TimeoutError:
                pass
            app.sweep()
            if supervisor_pid is not None and os.getppid() != supervisor_pid:
                log.warning("the supervisor (pid %d) has ended; this worker stops", supervisor_pid)
                break
        # Graceful: health says unhealthy, every answer closes its connection, in-flight requests finish
        app.healthy = False
        app.draining = True
        listener.close()
        deadline = time.monotonic() + app.settings.graceful_shutdown_seconds
        await asyncio.sleep(0.05)
        while time.monotonic() < deadline:
            app.close_idle()
            if not app.busy:
                break
            app.sweep()
            await asyncio.sleep(0.02)

    loop.run_until_complete(main())
    return 0


def main() -> None:  # python -m aiops.inference.llm.server --fd N [--ready-fd M] [--supervisor-pid P]
    import argparse

    from aiops.inference.serving.worker import SPEC_ENV, WorkerSpec, end_with_supervisor

    parser = argparse.ArgumentParser(prog="aiops-llm-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--supervisor-pid", type=int, default=None)
    args = parser.parse_args()
    end_with_supervisor(args.supervisor_pid)  # as the handler worker: it ends with its supervisor
    spec = WorkerSpec.model_validate_json(os.environ[SPEC_ENV])
    code = worker_main(args.fd, args.ready_fd, spec, args.supervisor_pid)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait on torch's atexit work


if __name__ == "__main__":
    main()
