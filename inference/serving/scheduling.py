"""Where a worker's handler calls run and when a batch closes: the scheduling policy.

A worker has two places to run the handler: its **inference thread** (fed by the work queue) and
its **event loop** itself. The loop runs a call when handler calls have proven fast, so nothing
waits long on it (``/ping``, reads, timeouts) and no thread hand-off is paid:

- **inline mode** (batched workers, or ``inline_call_ms`` set): after ``promote_after`` calls in a
  row within the budget, every request runs on the loop, right after the poll that completed it;
  the switch waits until the inference thread has finished what it holds (*promoting*), so only
  one thread ever runs the handler;
- **solo**: a request alone in flight, with the inference thread idle and calls fast so far, runs
  on the loop (at c=1 nothing could overlap the call anyway);
- one call over the budget sends the worker back to its thread, and the next promotion needs 4x as
  many fast calls (at most ``INLINE_AFTER_MAX``). A batch over the budget only because its thread
  waited for a CPU (another process ran) is excused: it neither counts nor demotes.

Batches close when full, when their oldest request has waited ``max_batch_delay``, or as soon as
arrivals pause (a lone request never waits); on the loop, also when every open connection already
has its request pending (none can add one).

This object holds that state and makes those decisions; it has no sockets, threads or event loop.
The worker (:mod:`aiops.inference.serving.app`) owns the queue, the threads and the loop
callbacks, and asks it. Thread ownership of the counters: ``handed`` is written by the loop,
``taken`` by the inference thread; the streak is updated by whichever thread just ran the handler
(one at a time).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

log = logging.getLogger("aiops.serve")

DEFAULT_INLINE_CALL_MS = 50.0
INLINE_AFTER = 20  # fast handler calls on the inference thread before the loop runs them itself
INLINE_AFTER_MAX = 20_000  # ... growing 4x each time a slow call sends the worker back
STRAGGLER_POLL_SECONDS = 0.0005  # the inference thread's wait between looks for stragglers
PROMOTION_POLL_SECONDS = 0.0002  # the loop's wait for the inference thread to finish before inline mode


class Placement(enum.Enum):
    """Where a request (or the requests pending on the loop) goes next."""

    INLINE = "inline"  # pending on the loop, run right after this poll (inline mode, or promoting)
    SOLO = "solo"  # run on the loop right after this poll: it is alone
    THREAD = "thread"  # the work queue: the inference thread runs it
    WAIT = "wait"  # not yet: the inference thread still holds requests; look again shortly


class SchedulingPolicy:
    """The decisions of one worker: placement of each request, batch closing, inline promotion."""

    def __init__(
        self,
        *,
        batch_size: int = 1,
        max_delay_s: float = 0.0,
        inline_budget_s: float = 0.0,
        full_inline: bool = False,
    ) -> None:
        self.batch_size = max(1, batch_size)
        self.max_delay = max_delay_s
        self.inline_budget = inline_budget_s
        # every request on the loop once calls are fast (else only lone requests: solo)
        self.full_inline = inline_budget_s > 0 and full_inline
        self.inline = False
        self.promoting = False  # inline mode decided; waiting for the inference thread to finish
        self.fast_streak = 0  # consecutive handler calls within the budget
        self.promote_after = INLINE_AFTER  # grows each time a slow call demotes the worker
        self.handed = 0  # requests put on the work queue (loop thread)
        self.taken = 0  # requests the inference thread is done with (inference thread)
        self.seen = 0  # requests pending on the loop at its last look (a batch closes once arrivals pause)

    @classmethod
    def for_worker(
        cls, *, batch_size: int, max_batch_delay_ms: float, inline_call_ms: float | None
    ) -> SchedulingPolicy:
        """The policy of a worker from its settings. Full inline mode is for batched workers or when
        ``inline_call_ms`` is set: an unbatched worker by default keeps its thread under load (its
        forward, which releases the GIL, overlaps the loop's reads) and runs only lone requests on
        the loop."""
        budget = (inline_call_ms if inline_call_ms is not None else DEFAULT_INLINE_CALL_MS) / 1000.0
        return cls(
            batch_size=batch_size,
            max_delay_s=max_batch_delay_ms / 1000.0,
            inline_budget_s=budget,
            full_inline=batch_size > 1 or inline_call_ms is not None,
        )

    # ---- state the worker reads
    @property
    def uses_loop(self) -> bool:
        """The loop may run handler calls at all (so a watchdog must guard them)."""
        return self.inline_budget > 0

    @property
    def thread_idle(self) -> bool:
        """The inference thread has finished everything handed to it."""
        return self.handed == self.taken

    @property
    def calls_fast(self) -> bool:
        return self.fast_streak >= self.promote_after

    # ---- the work queue's bookkeeping
    def to_thread(self, n: int = 1) -> None:
        """Loop thread: ``n`` requests were put on the work queue."""
        self.handed += n

    def thread_done(self, n: int) -> None:
        """Inference thread: it is done with ``n`` requests it took."""
        self.taken += n

    # ---- placement (loop thread)
    def on_admit(self, in_flight: int) -> Placement:
        """A complete request was admitted; ``in_flight`` counts it and every other unanswered one.
        INLINE: pending on the loop (run by :meth:`on_flush`'s verdict); SOLO; THREAD."""
        if not (self.inline or self.promoting) and self.full_inline and self.calls_fast:
            self.promoting = True  # new requests wait until the inference thread has finished what it holds
        if self.inline or self.promoting:
            return Placement.INLINE
        if self.inline_budget > 0 and in_flight == 1 and self.thread_idle and self.calls_fast:
            return Placement.SOLO
        return Placement.THREAD

    def solo_turn(self) -> Placement:
        """A request placed SOLO is about to run: SOLO still, or THREAD when something went to the
        thread meanwhile (keep the order there) or a call was slow."""
        return Placement.SOLO if self.thread_idle and self.calls_fast else Placement.THREAD

    def on_flush(self) -> Placement:
        """The loop is about to run its pending requests: INLINE (run them), WAIT (promoting and the
        inference thread still busy: look again in ``PROMOTION_POLL_SECONDS``) or THREAD (demoted
        meanwhile: the thread takes them)."""
        if self.promoting:
            if not self.thread_idle:
                return Placement.WAIT
            self.promoting = False
            self.inline = self.calls_fast  # unless a slow call came meanwhile
            if self.inline:
                log.info(
                    "handler calls take under %g ms: the event loop runs them (inline mode)",
                    self.inline_budget * 1000,
                )
        return Placement.INLINE if self.inline else Placement.THREAD

    # ---- batches
    def batch_closes(self, pending: int, open_connections: int, first_arrival: float, now: float) -> bool:
        """Loop batching: run the ``pending`` requests now (True), or take one more non-blocking
        look at the sockets first (False) because arrivals are still growing within the delay.
        Never waits when the batch is full or every open connection has its request pending."""
        if (
            pending < self.batch_size
            and pending < open_connections
            and self.max_delay > 0
            and pending > self.seen
            and now < first_arrival + self.max_delay
        ):
            self.seen = pending
            return False
        self.seen = 0
        return True

    def straggler_wait(self, size: int, first_arrival: float, now: float) -> float:
        """Inference thread, the work queue empty: seconds to wait for more requests before running a
        batch of ``size`` (0: run it now). A lone request never waits; the caller stops as soon as
        a wait brought nothing (arrivals paused)."""
        if size >= self.batch_size or size == 1 or self.max_delay <= 0:
            return 0.0
        left = first_arrival + self.max_delay - now
        if left <= 0:
            return 0.0
        return min(STRAGGLER_POLL_SECONDS, left)

    # ---- call times (the thread that ran the call)
    def on_call_finished(
        self, seconds: float, *, solo: bool = False, off_cpu: Callable[[], float | None] | None = None
    ) -> None:
        """Count a handler call towards inline mode (within the budget) or out of it.

        ``off_cpu``: for a batch, how long its thread waited for a CPU during the call (None:
        unknown), asked only when the call was over the budget. A call slow only because the
        machine did not give it a CPU is not the handler being slow: it neither counts nor demotes
        (on a shared machine batches were thrown out of inline mode several times a second)."""
        if seconds <= self.inline_budget:
            self.fast_streak += 1
            return
        if off_cpu is not None:
            waited = off_cpu()
            if waited is not None and seconds - waited <= self.inline_budget:
                return
        self.fast_streak = 0
        if solo:  # a slow solo call: as many more fast calls before the next as after a demotion
            self.promote_after = min(self.promote_after * 4, INLINE_AFTER_MAX)
            log.info(
                "a handler call took %.0f ms (inline_call_ms=%g): lone requests go to the inference "
                "thread again",
                seconds * 1000,
                self.inline_budget * 1000,
            )
        if self.inline:  # a slow call: /ping and the timeouts must not wait on the next one
            self.inline = False
            self.promote_after = min(self.promote_after * 4, INLINE_AFTER_MAX)
            log.info(
                "a handler call took %.0f ms (inline_call_ms=%g): back to the inference thread",
                seconds * 1000,
                self.inline_budget * 1000,
            )
