"""The LLM scheduler's policy, table by table: budgets, FIFO admission, leaving, cancelling, overload."""

from __future__ import annotations

import pytest
from aiops.inference.llm.generation import Limits, LLMError
from aiops.inference.llm.scheduler import Plan, Scheduler


@pytest.mark.parametrize(
    ("limits", "input_length", "max_new_tokens", "expected"),
    [
        # a missing max_new_tokens takes the rest of the budget (TGI)
        (Limits(max_total_tokens=100), 30, None, 70),
        (Limits(max_total_tokens=100), 99, None, 1),
        (Limits(max_total_tokens=100), 30, 70, 70),
        (Limits(max_total_tokens=100), 1, 1, 1),
        (
            Limits(max_total_tokens=100),
            30,
            71,
            (
                "`inputs` tokens + `max_new_tokens` must be <= 100. "
                "Given: 30 `inputs` tokens and 71 `max_new_tokens`"
            ),
        ),
        # the total is checked before the input length, as TGI's validate_input does
        (Limits(max_total_tokens=100), 100, None, "`inputs` must have less than 99 tokens. Given: 100"),
        (
            Limits(max_total_tokens=100),
            101,
            5,
            (
                "`inputs` tokens + `max_new_tokens` must be <= 100. "
                "Given: 101 `inputs` tokens and 5 `max_new_tokens`"
            ),
        ),
        (
            Limits(max_total_tokens=100, max_input_tokens=10),
            11,
            5,
            "`inputs` must have less than 10 tokens. Given: 11",
        ),
        (Limits(max_total_tokens=100), 5, 0, "`max_new_tokens` must be strictly positive"),
        (Limits(max_total_tokens=100), 0, 5, "`inputs` cannot be empty"),
    ],
)
def test_budget(limits, input_length, max_new_tokens, expected):
    scheduler = Scheduler(limits)
    if isinstance(expected, int):
        assert scheduler.resolve_max_new_tokens(input_length, max_new_tokens) == expected
        assert scheduler.enqueue(1, input_length, max_new_tokens).max_new_tokens == expected
    else:
        with pytest.raises(LLMError) as refused:
            scheduler.enqueue(1, input_length, max_new_tokens)
        assert refused.value.error_type == "validation"
        assert refused.value.message == expected
        assert scheduler.idle  # nothing was queued


# Each case: limits, then steps of (operation, argument) and the plan each `plan` step must give.
# enqueue's argument is (seq_id, input_length, max_new_tokens).
CASES = {
    "fifo-up-to-batch-size": (
        Limits(max_total_tokens=100, max_batch_size=2),
        [
            ("enqueue", (1, 10, 10)),
            ("enqueue", (2, 10, 10)),
            ("enqueue", (3, 10, 10)),
            ("plan", Plan(join=(1, 2))),
            ("plan", Plan()),  # full: 3 waits
            ("finish", 1),
            (
                "plan",
                Plan(leave=(1,), join=(3,)),
            ),  # the freed slot goes to the next in line at the same boundary
        ],
    ),
    "joins-between-steps": (
        Limits(max_total_tokens=100, max_batch_size=4),
        [
            ("enqueue", (1, 10, 10)),
            ("plan", Plan(join=(1,))),
            ("enqueue", (2, 5, 10)),
            ("plan", Plan(join=(2,))),
            ("finish", 2),
            ("finish", 1),
            ("plan", Plan(leave=(2, 1))),
        ],
    ),
    "batch-token-budget-blocks-the-head": (
        Limits(max_total_tokens=100, max_batch_size=8, max_batch_total_tokens=150),
        [
            ("enqueue", (1, 50, 50)),
            ("enqueue", (2, 40, 20)),
            ("enqueue", (3, 10, 10)),
            # 1 reserves 100; 2 would make 160 > 150; 3 would fit but never overtakes 2
            ("plan", Plan(join=(1,))),
            ("finish", 1),
            ("plan", Plan(leave=(1,), join=(2, 3))),
        ],
    ),
    "prefill-budget-spreads-joins-over-steps": (
        Limits(max_total_tokens=100, max_batch_size=8, max_batch_prefill_tokens=50),
        [
            ("enqueue", (1, 30, 10)),
            ("enqueue", (2, 30, 10)),
            ("enqueue", (3, 90, 10)),
            ("plan", Plan(join=(1,))),  # 1 + 2 = 60 prompt tokens > 50
            ("plan", Plan(join=(2,))),
            ("plan", Plan(join=(3,))),  # alone it may exceed the step budget, or it would never run
        ],
    ),
    "prefill-budget-counts-the-padding": (
        Limits(max_total_tokens=100, max_batch_size=8, max_batch_prefill_tokens=60),
        [
            ("enqueue", (1, 10, 10)),
            ("enqueue", (2, 20, 10)),
            ("enqueue", (3, 40, 10)),
            ("enqueue", (4, 5, 10)),
            ("enqueue", (5, 5, 10)),
            # 1 and 2 pad to 2 x 20 = 40; with 3, 3 x 40 = 120 > 60 (70 prompt tokens unpadded)
            ("plan", Plan(join=(1, 2))),
            ("plan", Plan(join=(3,))),  # 2 x 40 = 80 with 4: the short one waits a step
            ("plan", Plan(join=(4, 5))),
        ],
    ),
    "cancel-running-and-waiting": (
        Limits(max_total_tokens=100, max_batch_size=1),
        [
            ("enqueue", (1, 10, 10)),
            ("enqueue", (2, 10, 10)),
            ("enqueue", (3, 10, 10)),
            ("plan", Plan(join=(1,))),
            ("cancel", 2),  # waiting: dropped, it never runs
            ("cancel", 1),  # running: its slot frees at the next boundary
            ("plan", Plan(leave=(1,), join=(3,), dropped=(2,))),
            ("cancel", 1),  # already gone: ignored
            ("finish", 3),
            ("cancel", 3),  # a cancel racing the end: it leaves once
            ("plan", Plan(leave=(3,))),
            ("plan", Plan()),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_policy(name):
    limits, steps = CASES[name]
    scheduler = Scheduler(limits)
    for number, (operation, argument) in enumerate(steps):
        if operation == "plan":
            assert scheduler.plan() == argument, f"{name}, step {number}"
        elif operation == "enqueue":
            scheduler.enqueue(*argument)
        else:
            getattr(scheduler, operation)(argument)
    assert not set(scheduler.running) & set(scheduler.waiting)


def test_overloaded_past_max_queue_and_room_again_once_admitted():
    scheduler = Scheduler(Limits(max_total_tokens=100, max_batch_size=1, max_queue=2))
    scheduler.enqueue(1, 10, 10)
    scheduler.enqueue(2, 10, 10)
    with pytest.raises(LLMError) as refused:
        scheduler.enqueue(3, 10, 10)
    assert (refused.value.error_type, refused.value.message) == ("overloaded", "Model is overloaded")
    assert scheduler.plan() == Plan(join=(1,))  # 1 leaves the queue for the batch: one place frees
    scheduler.enqueue(3, 10, 10)
    assert scheduler.waiting == (2, 3)
    assert scheduler.running == (1,)


def test_idle_only_when_nothing_is_left_to_report():
    scheduler = Scheduler(Limits(max_total_tokens=100))
    assert scheduler.idle
    scheduler.enqueue(1, 10, 10)
    assert not scheduler.idle
    scheduler.plan()
    scheduler.finish(1)
    assert not scheduler.idle  # the engine still has to take 1 out of the batch
    assert scheduler.plan() == Plan(leave=(1,))
    assert scheduler.idle
    scheduler.enqueue(2, 10, 10)
    scheduler.cancel(2)
    assert not scheduler.idle  # its handle must still hear that it was cancelled
    assert scheduler.plan() == Plan(dropped=(2,))
    assert scheduler.idle


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_total_tokens": 1}, "max_total_tokens=1"),
        ({"max_batch_size": 0}, "max_batch_size=0"),
        ({"max_total_tokens": 10, "max_input_tokens": 10}, "max_input_tokens=10"),
        ({"max_total_tokens": 10, "max_batch_total_tokens": 9}, "max_batch_total_tokens=9"),
    ],
)
def test_limits_refuse_impossible_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Limits(**kwargs)
