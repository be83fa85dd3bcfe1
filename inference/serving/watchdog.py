"""Handler calls stuck past the timeout: answered 504, and the worker ended when a call stays stuck
(the supervisor starts a new one); and stream producers stuck in their generator, counted so that
a worker holding too many of them is replaced.

The loop's own sweep checks the inference thread's call (:meth:`Watchdog.stuck`) and the stream
producers (:meth:`Watchdog.blocked_streams`). While the loop itself runs a call (inline or solo)
nothing on it can look, so a watchdog thread that only watches answers those requests 504 (written
to the socket's duplicate fd) and ends the worker.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from aiops.inference.serving.http.responses import error_response, model_timeout
from aiops.inference.serving.stream_sender import blocked_producers
from aiops.inference.serving.work import Request

if TYPE_CHECKING:
    from aiops.inference.serving.app import App

log = logging.getLogger("aiops.serve")

EXIT_STUCK = 70  # the worker ended itself: a handler call stayed stuck past the timeout
WATCH_SECONDS = 0.1  # the loop's own sweep has the same granularity


class Watchdog:
    def __init__(self, app: App) -> None:
        self.app = app
        self.timeout = app.timeout
        # a call still running this long after it started ends the worker
        self.stuck_after = self.timeout + max(self.timeout, 10.0)

    def start(self) -> None:
        threading.Thread(target=self._watch, name="aiops-watchdog", daemon=True).start()

    def stuck(self) -> bool:
        """A handler call has run so far past the timeout that this worker should be replaced."""
        started = self.app.call_started
        return started is not None and time.monotonic() - started > self.stuck_after

    def blocked_streams(self) -> int:
        """Stream producers still inside their generator ``timeout`` after they were told to stop
        (client gone, timeout): threads a generator blocked in (a lock, a queue, a socket) keeps,
        with whatever it holds, until the process ends."""
        return blocked_producers(stopped_for=self.timeout)

    def exit_stuck(self) -> None:
        log.error(
            "a handler call has run for over %.0f s (timeout %g s); this worker exits and the "
            "supervisor starts a new one",
            self.stuck_after,
            self.timeout,
        )
        sys.stderr.flush()
        os._exit(EXIT_STUCK)

    def _watch(self) -> None:
        """During a call on the loop: 504 past the timeout, the worker's end when the call stays stuck."""
        app = self.app
        while True:
            time.sleep(WATCH_SECONDS)
            reqs, started = app.inline_reqs, app.call_started
            if not reqs or started is None:
                continue
            now = time.monotonic()
            if now - started > self.stuck_after:
                self.exit_stuck()
            for req in reqs:
                if now - req.t0 > self.timeout and not req.done:
                    self._late_direct(req)

    def _late_direct(self, req: Request) -> None:
        """504 for ``req`` from this thread; what the socket does not take waits in ``req.late`` for the
        loop (once the call returns)."""
        app = self.app
        err = model_timeout(self.timeout)
        extra = [(b"x-amzn-sagemaker-custom-attributes", req.attrs)] if req.attrs is not None else []
        data = error_response(
            504, err.message, err.error_type, req.rid, extra=extra, close=not req.keep_alive
        )
        conn = req.conn
        with app.lock:
            if req.done:
                return
            req.done = True
            app.inflight.pop(req, None)
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
