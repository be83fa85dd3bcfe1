"""A worker's inference thread: it takes requests off the work queue (a batch at a time with
batching on, topped up with stragglers as the policy says), runs the handler, writes a lone plain
answer straight to its socket, and hands everything else back to the loop in one wake-up."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

from aiops.inference.serving.calls import off_cpu_since, runqueue_wait
from aiops.inference.serving.http.responses import SMALL_ANSWER, small_answer
from aiops.inference.serving.stream_sender import EVENTS
from aiops.inference.serving.work import STOP, Request, Rest

if TYPE_CHECKING:
    from aiops.inference.serving.app import App

log = logging.getLogger("aiops.serve")

EXIT_INFERENCE_DIED = 71  # the inference thread itself failed (never a handler's error)


class InferenceThread:
    def __init__(self, app: App) -> None:
        self.app = app
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name="aiops-inference", daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException:  # noqa: BLE001 - our own bug, not a handler's: this worker cannot serve
            log.critical(
                "the inference thread failed; this worker exits and the supervisor starts a new one\n%s",
                traceback.format_exc().rstrip(),
            )
            sys.stderr.flush()
            os._exit(EXIT_INFERENCE_DIED)

    def _loop(self) -> None:
        app = self.app
        get, batch_size, policy, calls = app.work.get, app.batch_size, app.policy, app.calls
        while True:
            req = get()
            if req is STOP:
                return
            batch = [req]
            if batch_size > 1:
                self._gather(batch)
            live = [r for r in batch if not r.done]
            if not live:
                policy.thread_done(len(batch))
                continue
            app.call_started = started = time.monotonic()
            if len(live) == 1:
                waited = None
                results = [calls.one(live[0])]
            else:
                waited = runqueue_wait()
                results = calls.batch(live)
            app.call_started = None
            policy.on_call_finished(time.monotonic() - started, off_cpu=off_cpu_since(waited))
            # One answer: written here. A batch's answers go to the loop in one wake-up instead: a
            # write per answer from this thread gives the GIL away once per answer (measured slower).
            rest = self._answer_direct(live, results) if len(live) == 1 else (live, results)
            if rest:
                app.finished.append(rest)
                if not app.wake_pending:  # one loop wake-up for whatever is left until the loop runs
                    app.wake_pending = True
                    app.loop.call_soon_threadsafe(app.deliver)
            policy.thread_done(len(batch))

    def _answer_direct(self, reqs: list[Request], results: list) -> tuple[list, list] | None:
        """Write plain answers straight to their sockets (the usual case: small, keep-alive, nothing
        else pending on the connection); return what the loop must answer."""
        app = self.app
        left_reqs, left_results = [], []
        lock, inflight, variant = app.lock, app.inflight, app.variant
        for req, result in zip(reqs, results, strict=True):
            conn = req.conn
            if (
                type(result) is not tuple
                or not req.keep_alive
                or app.draining
                or req.mode == EVENTS
                or conn.wfd < 0
                or conn.backlog
                or conn.pipelined
                or len(result[0]) > SMALL_ANSWER
            ):
                left_reqs.append(req)
                left_results.append(result)
                continue
            data = small_answer(req, variant, result[0], result[1])
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
                    left_results.append(Rest(data[sent:]))
        return (left_reqs, left_results) if left_reqs else None

    def _gather(self, batch: list) -> None:
        """Top ``batch`` up from the queue: what is waiting, then stragglers while they keep coming
        (at most ``max_batch_delay`` after the first; a lone request never waits). It sleeps a short
        while at a time instead of waiting on the queue, so stragglers do not wake it one by one."""
        app = self.app
        work, n, policy = app.work, app.batch_size, app.policy
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
                    if req is STOP:
                        work.put(STOP)  # run this batch first, then stop
                        return
                    batch.append(req)
                if len(batch) == before:  # arrivals paused: run what we have
                    return
                continue
            if req is STOP:
                work.put(STOP)  # run this batch first, then stop
                return
            batch.append(req)
