"""A worker's core: admission, placement of each handler call, the answers and the timeouts.

Threads: the event loop does all the I/O (parsing, bounds, /ping, writing answers, timeouts); the
inference thread (:mod:`.inference_thread`) takes requests off ``work`` and runs the handler,
then hands the results back with one loop wake-up for whatever finished meanwhile. So a /ping, a
new connection or a 408 never waits for a handler call. Where each call runs (the thread, or the
loop itself when calls are fast: inline mode, solo) and when a batch closes is decided by
:class:`~aiops.inference.serving.scheduling.SchedulingPolicy`; this class carries the decisions out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from typing import Any

from aiops.inference.contract import InferenceHandler
from aiops.inference.errors import InferenceError
from aiops.inference.serving.calls import HandlerCalls, off_cpu_since, runqueue_wait
from aiops.inference.serving.http import admission, routes
from aiops.inference.serving.http.connection import CLOSED, Connection
from aiops.inference.serving.http.responses import (
    SMALL_ANSWER,
    TransportSink,
    answer_head,
    model_timeout,
    request_error,
    small_answer,
    stream_head_lines,
    whole_answer,
)
from aiops.inference.serving.inference_thread import InferenceThread
from aiops.inference.serving.scheduling import PROMOTION_POLL_SECONDS, Placement, SchedulingPolicy
from aiops.inference.serving.stream_sender import BUFFERED, EVENTS, StreamTimeout, StreamTooLarge, stream_to
from aiops.inference.serving.watchdog import Watchdog
from aiops.inference.serving.work import Request, Rest, Streamed, request_id

from aiops.settings import ServeSettings

log = logging.getLogger("aiops.serve")


class App:
    """Routing, admission, the work queue, placement and the answers of one worker."""

    loop: asyncio.AbstractEventLoop  # the worker's, set before it serves

    def __init__(self, handler: InferenceHandler, settings: ServeSettings, model_dir: str) -> None:
        s = settings
        self.handler = handler
        self.settings = s
        self.calls = HandlerCalls(handler, model_dir)
        self.batch_size = max(1, s.batch_size) if handler.batchable else 1
        self.api_key = s.api_key.encode() if s.api_key else None
        self.variant = s.variant.encode()
        self.max_payload = s.max_payload_bytes
        self.max_header_bytes = int(s.max_header_kb * 1024)
        self.header_timeout = s.header_timeout_seconds
        self.body_timeout = s.body_timeout_seconds
        self.keep_alive = s.keep_alive_seconds
        self.write_timeout = s.write_timeout_seconds
        self.timeout = s.timeout_seconds
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
        # (requests, results) the inference thread hands back to the loop
        self.finished: collections.deque = collections.deque()
        self.wake_pending = False  # a loop wake-up for ``finished`` is scheduled
        self.healthy = True
        self.draining = False
        self.call_started: float | None = None  # set while a handler call runs (either thread)
        self.policy = SchedulingPolicy.for_worker(
            batch_size=self.batch_size,
            max_batch_delay_ms=s.max_batch_delay_ms,
            inline_call_ms=s.inline_call_ms,
        )
        self.solo: list[Request] = []  # requests placed SOLO, run by the loop after this poll
        self.solo_scheduled = False  # a loop callback for ``solo`` is scheduled
        self.pending: list[Request] = []  # requests placed INLINE, read and not yet run
        self.flush_scheduled = False  # a loop callback for ``pending`` is scheduled
        self.inline_reqs: list[Request] = []  # the loop's call running now: the watchdog's view
        self.inference = InferenceThread(self)
        self.watchdog = Watchdog(self)

    def start_threads(self) -> None:
        self.inference.start()
        if self.policy.uses_loop:  # the loop may run calls itself: a thread must watch those
            self.watchdog.start()

    # ---- admission (loop thread)
    def accept(self, conn: Connection) -> None:
        admission.accept(self.conns, conn, self.max_connections)

    def check_head(self, conn: Connection):
        """Route, method, custom attributes, API key and declared length; None when acceptable."""
        err = routes.check_head(conn, self.api_key, self.max_payload)
        if err is None and conn.ping_only and not routes.is_ping(conn.url):
            return admission.ping_only_refusal(self.max_connections, "/ping")
        return err

    def too_large_message(self) -> str:
        return routes.too_large_message(self.max_payload)

    def admit(self, conn: Connection) -> None:
        """A complete request: answer /ping now, place an invocation (or 503 when the queue is full)."""
        keep = conn.keep_alive and not self.draining
        url = conn.url
        if routes.is_ping(url):
            answer = routes.ping_answer(self.healthy, keep, with_body=conn.method == b"GET")
            conn.write_and_finish(answer, not keep)
            return
        if len(self.inflight) >= self.max_queue:
            admission.refuse_overloaded(conn, self.max_queue, keep, "waiting")
            return
        body = conn.body[0] if len(conn.body) == 1 else b"".join(conn.body)
        conn.body = []
        mode = routes.answer_mode(url.split(b"?", 1)[0], conn.http_version)
        # boto3 sends Accept as X-Amzn-SageMaker-Accept on the response-stream route
        accept = conn.sm_accept or conn.accept if mode == EVENTS else conn.accept
        req = Request(conn, body, conn.ctype, accept, conn.attrs, request_id(), conn.inference_id, keep, mode)
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

    # ---- placement (loop thread)
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
        """The loop runs one handler call (the watchdog guards it), then answers its requests."""
        self.inline_reqs = reqs
        waited = runqueue_wait() if len(reqs) > 1 else None
        self.call_started = started = time.monotonic()
        try:
            results = [self.calls.one(reqs[0])] if len(reqs) == 1 else self.calls.batch(reqs)
        finally:
            self.call_started = None
            self.inline_reqs = []
        self.policy.on_call_finished(time.monotonic() - started, solo=solo, off_cpu=off_cpu_since(waited))
        with self.lock:  # once for the whole batch: only the watchdog competes
            was_done = [r.done for r in reqs]
            for req in reqs:
                req.done = True
                self.inflight.pop(req, None)
        for req, result, done in zip(reqs, results, was_done, strict=True):
            if done:
                self._after_late(req, result)
            else:
                self._reply(req, result)

    def _after_late(self, req: Request, result: Any) -> None:
        """A loop call's result for a request answered meanwhile (504 by the watchdog) or abandoned."""
        if isinstance(result, Streamed):
            result.stream.discard()
        conn, late = req.conn, req.late
        if late is None or conn.state == CLOSED:
            return
        if late:  # the watchdog's 504 did not fit in the socket: the rest goes the usual way
            conn.write_and_finish(late, not req.keep_alive)
        elif not req.keep_alive:
            conn.close()

    # ---- answers (loop thread)
    def deliver(self) -> None:
        """The inference thread's wake-up: answer whatever it finished meanwhile."""
        self.wake_pending = False
        finished = self.finished
        while finished:
            reqs, results = finished.popleft()
            for req, result in zip(reqs, results, strict=True):
                self._answer(req, result)

    def _answer(self, req: Request, result: Any) -> None:
        if isinstance(result, Rest):  # the rest of an answer the inference thread began to write
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

    def _write_whole(self, req: Request, out: bytes, out_type: str) -> None:
        conn = req.conn
        if req.mode != EVENTS and len(out) < SMALL_ANSWER:  # the usual small answer: one buffer, one send
            conn.write_and_finish(small_answer(req, self.variant, out, out_type), not req.keep_alive)
            return
        head, body = whole_answer(req, self.variant, out, out_type)
        if len(body) < SMALL_ANSWER:  # one write (one send) for the usual small answer
            conn.write_and_finish(head + body, not req.keep_alive)
        else:  # no copy of a large body
            conn.transport.write(head)
            conn.write_and_finish(body, not req.keep_alive)

    async def _stream(self, req: Request, result: Streamed) -> None:
        conn, stream = req.conn, result.stream
        conn.current = None  # from here the stream watches the client itself
        try:
            await stream.start()
            if req.mode == BUFFERED:  # HTTP/1.0 or the InvokeEndpoint route: the whole body
                try:
                    # within the timeout and the payload cap, as a streamed or a whole answer is
                    out = await stream.collect(timeout_s=self.timeout, max_bytes=self.max_payload)
                except BaseException as err:  # noqa: BLE001 - nothing sent yet: an ordinary error answer
                    if isinstance(err, asyncio.CancelledError):
                        raise
                    self._answer_error(req, self._collect_error(err))
                    return
                self._write_whole(req, out, result.ctype)
                return
            if conn.state == CLOSED:
                return
            head = answer_head(req, self.variant)
            head.append(stream_head_lines(req.mode, result.ctype) + b"\r\n")
            conn.sink = sink = TransportSink(conn.transport)
            sink.start(b"".join(head))
            outcome = await stream_to(stream, sink, mode=req.mode, request_id=req.rid, timeout_s=self.timeout)
            conn.sink = None
            if outcome.completed and req.keep_alive:
                conn.resume()
            elif conn.state != CLOSED:
                conn.close()
        finally:
            conn.sink = None
            stream.close()

    def _collect_error(self, err: BaseException) -> BaseException:
        """What a stream collected whole answers when it ran past the timeout or the payload cap."""
        if isinstance(err, StreamTimeout):
            return model_timeout(self.timeout)
        if isinstance(err, StreamTooLarge):
            mb = self.max_payload / (1024 * 1024)
            return InferenceError(
                500,
                f"the streamed response is larger than {mb:g} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB), the most a "
                "whole answer holds; stream it: /invocations over HTTP/1.1, or "
                "/endpoints/NAME/invocations-response-stream",
            )
        return err

    def _answer_error(self, req: Request, err: BaseException) -> None:
        if self.draining:
            req.keep_alive = False
        req.conn.write_and_finish(request_error(req, err), not req.keep_alive)

    # ---- timers (one sweep for every connection instead of a timer per request)
    def sweep(self) -> None:
        now = time.monotonic()
        admission.expire(self.conns, now, self.write_timeout, self.resumed)
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
            err = model_timeout(self.timeout)
            log.error("request %s: %s", req.rid, err.message)
            self._answer_error(req, err)

    def close_idle(self) -> None:
        """Draining: close every connection between requests."""
        admission.close_idle(self.conns)

    @property
    def busy(self) -> bool:
        """Connections open, requests unanswered or streams being sent."""
        return bool(self.conns or self.inflight or self.streams)
