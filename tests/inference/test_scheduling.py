"""The worker's scheduling policy on its own: where each request runs, when a batch closes, and how
handler call times move a worker into and out of inline mode. No sockets, threads or loop: each
row sets the policy's state, makes one decision and checks it and the state it leaves."""

from __future__ import annotations

import logging

import pytest
from aiops.inference.serving.scheduling import INLINE_AFTER, INLINE_AFTER_MAX, Placement, SchedulingPolicy

INLINE, SOLO, THREAD, WAIT = Placement.INLINE, Placement.SOLO, Placement.THREAD, Placement.WAIT


def policy(
    *,
    batch_size=1,
    max_delay_s=0.005,
    budget=0.05,
    full_inline=False,
    fast_streak=0,
    promote_after=INLINE_AFTER,
    inline=False,
    promoting=False,
    handed=0,
    taken=0,
    seen=0,
):
    p = SchedulingPolicy(
        batch_size=batch_size, max_delay_s=max_delay_s, inline_budget_s=budget, full_inline=full_inline
    )
    p.fast_streak, p.promote_after, p.inline, p.promoting = fast_streak, promote_after, inline, promoting
    p.handed, p.taken, p.seen = handed, taken, seen
    return p


FAST = {"fast_streak": INLINE_AFTER}  # calls fast so far: exactly enough to be promoted


@pytest.mark.parametrize(
    "batch_size, inline_call_ms, full_inline, budget, uses_loop",
    [
        (1, None, False, 0.05, True),  # unbatched by default: lone requests only (solo)
        (8, None, True, 0.05, True),  # batched: every request on the loop once calls are fast
        (1, 20.0, True, 0.02, True),  # set explicitly: inline mode for an unbatched worker too
        (8, 0.0, False, 0.0, False),  # 0: always the inference thread (no watchdog needed)
    ],
)
def test_the_policy_of_a_worker_from_its_settings(batch_size, inline_call_ms, full_inline, budget, uses_loop):
    p = SchedulingPolicy.for_worker(
        batch_size=batch_size, max_batch_delay_ms=5, inline_call_ms=inline_call_ms
    )
    assert (p.full_inline, p.inline_budget, p.uses_loop) == (full_inline, budget, uses_loop)
    assert p.max_delay == 0.005 and p.batch_size == batch_size


@pytest.mark.parametrize(
    "state, in_flight, placement, promoting",
    [
        ({}, 1, THREAD, False),  # calls not proven fast yet
        (FAST, 1, SOLO, False),  # alone, the thread idle, calls fast: the loop runs it
        (FAST, 2, THREAD, False),  # not alone: the thread takes it (its forward overlaps the loop's reads)
        ({**FAST, "handed": 3, "taken": 2}, 1, THREAD, False),  # the thread still holds one: keep the order
        ({**FAST, "budget": 0.0}, 1, THREAD, False),  # inline_call_ms=0: never on the loop
        ({**FAST, "full_inline": True}, 5, INLINE, True),  # full inline: promoting, pending on the loop
        ({"fast_streak": INLINE_AFTER - 1, "full_inline": True}, 1, THREAD, False),  # one fast call short
        ({"full_inline": True, "inline": True}, 9, INLINE, False),  # inline already
        ({"full_inline": True, "promoting": True}, 9, INLINE, True),  # waits with the others
        ({**FAST, "promote_after": 80}, 1, THREAD, False),  # demoted before: 4x as many fast calls now
    ],
)
def test_where_an_admitted_request_runs(state, in_flight, placement, promoting):
    p = policy(**state)
    assert p.on_admit(in_flight) is placement
    assert p.promoting is promoting


@pytest.mark.parametrize(
    "state, placement",
    [
        ({**FAST}, SOLO),
        ({**FAST, "handed": 1}, THREAD),  # something went to the thread meanwhile
        ({}, THREAD),  # a slow call meanwhile reset the streak
    ],
)
def test_a_solo_request_about_to_run_checks_again(state, placement):
    assert policy(**state).solo_turn() is placement


@pytest.mark.parametrize(
    "state, placement, inline, promoting",
    [
        ({**FAST, "promoting": True, "handed": 4, "taken": 3}, WAIT, False, True),  # the thread is busy
        ({**FAST, "promoting": True, "handed": 4, "taken": 4}, INLINE, True, False),  # done: inline now
        ({"promoting": True}, THREAD, False, False),  # a slow call came while promoting: not inline
        ({"inline": True}, INLINE, True, False),
        ({}, THREAD, False, False),  # demoted since the requests were placed: the thread takes them
    ],
)
def test_flushing_the_requests_pending_on_the_loop(state, placement, inline, promoting, caplog):
    p = policy(full_inline=True, **state)
    caplog.set_level(logging.INFO, "aiops.serve")
    assert p.on_flush() is placement
    assert (p.inline, p.promoting) == (inline, promoting)
    promoted = state.get("promoting") and inline
    assert ("the event loop runs them (inline mode)" in caplog.text) == bool(promoted)


# batch 8, 5 ms delay, the first request arrived at t=10.0
@pytest.mark.parametrize(
    "pending, open_conns, seen, max_delay, now, closes, seen_after",
    [
        (3, 10, 0, 0.005, 10.001, False, 3),  # arrivals growing within the delay: look once more
        (3, 10, 3, 0.005, 10.001, True, 0),  # no new arrival since the last look: run them
        (2, 10, 3, 0.005, 10.001, True, 0),  # fewer than seen (some ran): run
        (8, 10, 0, 0.005, 10.001, True, 0),  # full
        (3, 3, 0, 0.005, 10.001, True, 0),  # every open connection has its request here: none can add one
        (1, 1, 0, 0.005, 10.001, True, 0),  # c=1 never waits
        (3, 10, 0, 0.005, 10.005, True, 0),  # the oldest has waited the whole delay
        (3, 10, 0, 0.0, 10.0, True, 0),  # no delay configured
    ],
)
def test_when_a_batch_on_the_loop_closes(pending, open_conns, seen, max_delay, now, closes, seen_after):
    p = policy(batch_size=8, max_delay_s=max_delay, seen=seen)
    assert p.batch_closes(pending, open_conns, 10.0, now) is closes
    assert p.seen == seen_after


@pytest.mark.parametrize(
    "size, max_delay, now, wait",
    [
        (1, 0.005, 10.0, 0.0),  # a lone request never waits
        (3, 0.0, 10.0, 0.0),  # no delay configured
        (8, 0.005, 10.0, 0.0),  # full
        (3, 0.005, 10.005, 0.0),  # the delay has passed
        (3, 0.005, 10.001, 0.0005),  # stragglers: a short look at a time
        (3, 0.005, 10.0048, 0.0002),  # ... never past the delay
    ],
)
def test_how_long_the_inference_thread_waits_for_stragglers(size, max_delay, now, wait):
    p = policy(batch_size=8, max_delay_s=max_delay)
    assert p.straggler_wait(size, 10.0, now) == pytest.approx(wait)


def _never_asked():
    raise AssertionError("the run-queue reading is only for calls over the budget")


@pytest.mark.parametrize(
    "state, seconds, solo, off_cpu, after",
    [
        # within the budget: one more fast call, nothing read
        ({"fast_streak": 3}, 0.05, False, _never_asked, {"fast_streak": 4}),
        # slow on the thread: the streak restarts, no demotion to make
        ({"fast_streak": 30}, 0.2, False, None, {"fast_streak": 0, "inline": False, "promote_after": 20}),
        # slow inline: back to the thread, 4x as many fast calls before the next promotion
        (
            {"fast_streak": 30, "inline": True},
            0.2,
            False,
            None,
            {"fast_streak": 0, "inline": False, "promote_after": 80},
        ),
        # a slow solo call: lone requests go back to the thread for as long
        ({"fast_streak": 30}, 0.2, True, None, {"fast_streak": 0, "promote_after": 80}),
        # the growth is capped
        ({"inline": True, "promote_after": 10_000}, 0.2, False, None, {"promote_after": INLINE_AFTER_MAX}),
        # 0.19 s of the 0.2 s waiting for a CPU (another process ran): excused, nothing changes
        (
            {"fast_streak": 30, "inline": True},
            0.2,
            False,
            lambda: 0.19,
            {"fast_streak": 30, "inline": True, "promote_after": 20},
        ),
        # off-CPU time that does not explain the excess: slow
        ({"fast_streak": 30, "inline": True}, 0.2, False, lambda: 0.1, {"fast_streak": 0, "inline": False}),
        # no reading available (not Linux): wall time decides
        ({"fast_streak": 30, "inline": True}, 0.2, False, lambda: None, {"fast_streak": 0, "inline": False}),
    ],
)
def test_call_times_move_the_worker_in_and_out_of_inline_mode(state, seconds, solo, off_cpu, after):
    p = policy(**state)
    p.on_call_finished(seconds, solo=solo, off_cpu=off_cpu)
    assert {name: getattr(p, name) for name in after} == after


def test_a_worker_walks_into_inline_mode_and_back_out(caplog):
    """The sequence a batched worker goes through: fast calls on its thread, promotion once the
    thread is idle, inline calls, one slow call, and the longer way back."""
    caplog.set_level(logging.INFO, "aiops.serve")
    p = SchedulingPolicy.for_worker(batch_size=8, max_batch_delay_ms=5, inline_call_ms=None)
    for _ in range(INLINE_AFTER - 1):
        assert p.on_admit(2) is THREAD
        p.to_thread()
        p.on_call_finished(0.001)
        p.thread_done(1)
    assert p.on_admit(2) is THREAD  # the 20th fast call has not finished yet
    p.to_thread()
    assert p.on_admit(3) is THREAD
    p.to_thread()
    p.on_call_finished(0.001)  # now 20 fast calls
    assert p.on_admit(3) is INLINE and p.promoting  # from here every request is kept for the loop
    assert p.on_flush() is WAIT  # the thread still holds two requests
    p.thread_done(2)
    assert p.on_flush() is INLINE and p.inline and not p.promoting
    assert "inline mode" in caplog.text
    p.on_call_finished(0.002)
    assert p.on_admit(1) is INLINE
    p.on_call_finished(0.3)  # one slow inline call
    assert "back to the inference thread" in caplog.text
    assert not p.inline and p.promote_after == 4 * INLINE_AFTER
    assert p.on_flush() is THREAD  # what was pending goes to the thread
    assert p.on_admit(1) is THREAD
