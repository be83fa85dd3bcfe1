"""One LLM worker's core, as :mod:`aiops.inference.serving.app` is the handler server's: what a
:class:`~aiops.inference.serving.http.connection.Connection` calls (accept, check_head, admit, abandon,
resumed, and the bounds), admission (503 past ``max_queue``), each request's task, the answers and the
timeouts.

Threads: the event loop does all the I/O; the engine (:class:`~aiops.inference.llm.engine.LLMEngine`)
decodes on its own thread and calls each generation's ``notify``, which wakes the loop once for whatever
finished meanwhile. Per request: the route's adapter (:mod:`.routes`) gives the call or the container's
refusal; each of the call's generations is submitted to the engine; a task drains their events and
answers whole or streams (:mod:`.stream_sender`). A client that leaves cancels its generations (their
batch slots are freed at the next step); a request past the server's timeout is cancelled and answered
504 (or its stream cut).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiops.inference.errors import HttpError
from aiops.inference.llm import routes, stream_sender
from aiops.inference.llm.calls import ApiError, Call, ModelContext, Reply
from aiops.inference.llm.generation import Event, LLMError, TokenEvent
from aiops.inference.llm.protocols import Container
from aiops.inference.llm.work import LLMRequest, Stop
from aiops.inference.serving.http import admission, eventstream
from aiops.inference.serving.http import routes as http_routes
from aiops.inference.serving.http.connection import Connection
from aiops.inference.serving.http.responses import chunk, model_timeout, request_error, whole_answer
from aiops.inference.serving.stream_sender import BUFFERED, CHUNKED, EVENTS

from aiops.settings import ServeSettings

if TYPE_CHECKING:
    from aiops.inference.llm.engine import LLMEngine
    from aiops.inference.llm.sequence import Generation

log = logging.getLogger("aiops.serve")


class LLMApp:
    """Routes, admission and answers of one LLM worker."""

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
        self.counts: collections.Counter[str] = collections.Counter()  # what /metrics reports

    # ---- the Connection's interface (loop thread)
    def accept(self, conn: Connection) -> None:
        admission.accept(self.conns, conn, self.max_connections)

    def check_head(self, conn: Connection):
        return routes.check_head(conn, self.container, self.api_key, self.max_payload, self.max_connections)

    def too_large_message(self) -> str:
        return http_routes.too_large_message(self.max_payload)

    def admit(self, conn: Connection) -> None:
        # what the connection read when the headers completed (the parser has moved on by now)
        keep = conn.keep_alive and not self.draining
        url = conn.url
        if conn.method in routes.HEAD_METHODS:
            req = LLMRequest(conn, keep, BUFFERED)
            self._write_reply(req, self._get_reply(routes.path_of(url)), with_body=conn.method == b"GET")
            return
        if len(self.inflight) >= self.max_queue:
            admission.refuse_overloaded(conn, self.max_queue, keep, "in flight")
            return
        body = conn.body[0] if len(conn.body) == 1 else b"".join(conn.body)
        conn.body = []
        http10 = conn.http_version == "1.0"
        mode = http_routes.answer_mode(routes.path_of(url), conn.http_version) or (
            BUFFERED if http10 else CHUNKED
        )
        req = LLMRequest(conn, keep, mode)
        conn.current = req  # type: ignore[assignment]  # what connection_lost hands to abandon()
        self.inflight[req] = None
        self.counts["request"] += 1
        try:
            call = routes.parse(self.container, url, body, self.context)
        except ApiError as refused:
            self.answer(req, refused.reply)
            return
        except Exception:  # noqa: BLE001 - a parser bug: a 500 for this request, the worker carries on
            log.error("request %s: parsing failed\n%s", req.rid, traceback.format_exc().rstrip())
            self.answer_error(req, _internal(req))
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
        self.cancel(req)
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

    # ---- a stream's tokens written by the engine thread (the inference thread's direct answers, per token)
    def _deliverer(
        self, req: LLMRequest, call: Call, index: int, notify: Callable[[], None]
    ) -> Callable[[Generation, Event | LLMError], None]:
        """What takes generation ``index``'s events in the engine thread: while the loop has handed the
        stream over (``req.direct``), a token's bytes go straight to the client's socket (the connection's
        ``wfd``), no loop wake-up per token; any other event, or a token the socket cannot take whole, goes
        to the loop, which owns the stream from then on until it hands it over again."""
        lock, conn = self.lock, req.conn
        framed = req.mode == EVENTS

        def deliver(handle: Generation, event: Event | LLMError) -> None:
            with lock:
                if (
                    req.direct
                    and type(event) is TokenEvent
                    and conn.wfd >= 0
                    and not conn.transport.get_write_buffer_size()
                ):
                    data = call.event(index, event)
                    if not data:
                        return
                    if framed:
                        data = eventstream.payload_part(data)
                    framed_chunk = chunk(data)
                    try:
                        sent = os.write(conn.wfd, framed_chunk)
                    except BlockingIOError:
                        sent = 0
                    except OSError:  # the client has gone: the loop learns it from connection_lost
                        req.direct = False
                        return
                    if sent < len(framed_chunk):  # the socket is full: the loop writes the rest and waits
                        req.rest, req.direct = framed_chunk[sent:], False
                        notify()
                    return
                req.direct = False
                handle.enqueue(event)

        return deliver

    def hand_over(self, req: LLMRequest) -> None:
        """Let the engine thread write the stream's next tokens itself (:meth:`_deliverer`), when the loop
        has written everything so far: no event queued, nothing buffered, the request still running."""
        conn = req.conn
        with self.lock:
            req.direct = (
                not req.done
                and not req.timed_out
                and conn.wfd >= 0
                and not conn.transport.get_write_buffer_size()
                and not any(handle.pending for handle in req.handles)
            )

    # ---- a request's life (a task on the loop)
    async def _run(self, req: LLMRequest, call: Call) -> None:
        try:
            notify = self._notifier(req)
            direct = call.stream and req.mode != BUFFERED
            try:
                for index, request in enumerate(call.requests):
                    deliver = self._deliverer(req, call, index, notify) if direct else None
                    req.handles.append(self.engine.submit(request, notify=notify, deliver=deliver))
            except LLMError as error:
                self.cancel(req)
                self.answer(req, call.refuse(error))
                return
            if call.stream and req.mode != BUFFERED:
                await stream_sender.send(self, req, call)
            elif call.stream:
                body = await stream_sender.collect(self, req, call)
                self.answer(req, Reply(200, body, call.content_type))
            else:
                await self._whole(req, call)
        except Stop:
            pass
        except Exception:  # noqa: BLE001 - a bug here must not take the worker down; the client learns it
            log.error("request %s failed\n%s", req.rid, traceback.format_exc().rstrip())
            if not req.done and not req.streaming:
                self.answer_error(req, _internal(req))
            elif not req.done:
                stream_sender.cut(self, req)
        finally:
            self.cancel(req)

    async def next(self, req: LLMRequest) -> None:
        """Wait for the engine's next wake-up of ``req``; Stop when its client left or it timed out."""
        await req.wake.wait()
        req.wake.clear()
        with self.lock:  # a stream the engine thread was writing is the loop's again
            req.direct = False
            rest, req.rest = req.rest, b""
        if rest and not req.conn.transport.is_closing():
            req.conn.transport.write(rest)
        if req.done:
            raise Stop
        if req.timed_out:
            self._timed_out(req)
            raise Stop

    async def _whole(self, req: LLMRequest, call: Call) -> None:
        handles = req.handles
        try:
            while True:
                for handle in handles:
                    handle.poll()
                if all(handle.done for handle in handles):
                    break
                await self.next(req)
            reply = call.reply([handle.result() for handle in handles])
        except LLMError as error:
            reply = call.refuse(error)
        self.answer(req, reply)

    def _timed_out(self, req: LLMRequest) -> None:
        """Past the server's timeout: the generations stop; a 504, or the started stream is cut."""
        self.cancel(req)
        self.counts["failure"] += 1
        if not req.streaming:
            err = model_timeout(self.timeout)
            log.error("request %s: %s", req.rid, err.message)
            self.answer_error(req, err)
            return
        stream_sender.cut(self, req, eventstream.INVOCATION_TIMEOUT)

    def cancel(self, req: LLMRequest) -> None:
        """Stop the request's unfinished generations (once: their end arrives a step later)."""
        live = [handle for handle in req.handles if not handle.done]
        if live and not req.cancelled:
            req.cancelled = True
            self.counts["cancelled"] += 1
            for handle in live:
                handle.cancel()

    # ---- answers (loop thread)
    def answer(self, req: LLMRequest, reply: Reply) -> None:
        if req.done:
            return
        self.settle(req)
        self.counts["success" if reply.status == 200 else "failure"] += 1
        self._write_reply(req, reply)

    def answer_error(self, req: LLMRequest, err: BaseException) -> None:
        if req.done:
            return
        self.settle(req)
        req.conn.write_and_finish(request_error(req, err), not req.keep_alive)

    def settle(self, req: LLMRequest) -> None:
        """``req`` is answered (or being streamed to the end): out of the in-flight list."""
        req.done = True
        self.inflight.pop(req, None)
        if self.draining:
            req.keep_alive = False

    def _write_reply(self, req: LLMRequest, reply: Reply, *, with_body: bool = True) -> None:
        if reply.status != 200 and routes.is_endpoint_route(req.conn.url):
            reply = routes.endpoint_refusal(reply)
        head, body = whole_answer(
            req, self.variant, reply.body, reply.content_type, status=reply.status, extra=reply.headers
        )
        req.conn.write_and_finish(head + body if with_body else head, not req.keep_alive)

    # ---- GET routes
    def _get_reply(self, path: bytes) -> Reply:
        if path == b"/metrics":
            return Reply(200, self.metrics().encode(), "text/plain; version=0.0.4")
        return routes.get_reply(self.container, path.decode("latin-1"), self.context, self.healthy)

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
        """The connections' deadlines (the handler server's rule), and the requests past the timeout."""
        now = time.monotonic()
        admission.expire(self.conns, now, self.write_timeout, self.resumed)
        for req in list(self.inflight):  # oldest first: stop at the first one still in time
            if now - req.t0 <= self.timeout:
                break
            req.timed_out += 1
            req.wake.set()
            if req.timed_out > 2:  # its task is stuck writing to a client that stopped reading
                self.cancel(req)
                self.settle(req)
                req.conn.transport.abort()

    def close_idle(self) -> None:
        admission.close_idle(self.conns)

    @property
    def busy(self) -> bool:
        return bool(self.conns or self.inflight or self.tasks)


def _internal(req: LLMRequest) -> HttpError:
    return HttpError(f"the LLM server failed on request {req.rid}; see its log", 500)
