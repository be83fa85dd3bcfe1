"""The streaming module on its own: what counts as a stream, the batching rule, the answer mode of
each route, and a batched stream split into one stream per request. Streamed answers over real
sockets are tests/inference/test_stream_serve.py (a real `aiops serve`)."""

from __future__ import annotations

import threading

import pytest
from aiops.inference import streaming
from aiops.inference.serving.http import routes
from aiops.inference.serving.stream_sender import BUFFERED, CHUNKED, EVENTS


def test_what_counts_as_a_stream_and_the_batching_rule():
    import types

    import torch

    assert streaming.is_stream(iter([b"a"])) and streaming.is_stream(x for x in [1])
    for whole in (b"a", "a", bytearray(b"a"), [b"a"], {"a": 1}, torch.zeros(3)):
        assert not streaming.is_stream(whole)
    plain = types.SimpleNamespace()
    assert streaming.batchable(plain, True) is True and streaming.batchable(None, False) is False
    assert streaming.batchable(types.SimpleNamespace(aiops_stream=True), True) is False
    assert streaming.batchable(types.SimpleNamespace(aiops_stream=True, aiops_batch=True), True) is True
    assert routes.answer_mode(b"/invocations", "1.1") == CHUNKED
    assert routes.answer_mode(b"/invocations", "1.0") == BUFFERED
    assert routes.answer_mode(b"/endpoints/e/invocations", "1.1") == BUFFERED
    assert routes.answer_mode(b"/endpoints/e/invocations-response-stream", "1.1") == EVENTS
    assert routes.answer_mode(b"/endpoints/e/other", "1.1") is None


def batched(steps, closed: threading.Event):
    try:
        yield from steps
    finally:
        closed.set()


def test_a_batched_stream_splits_into_one_stream_per_request():
    closed = threading.Event()
    steps = [(b"a0", b"b0"), (b"a1", None), (None, b"b1"), (b"a2", b"b2")]
    rows = streaming.split_batch(batched(steps, closed), 2)
    assert list(rows[1]) == [b"b0", b"b1", b"b2"]  # read one request's stream to its end first
    assert list(rows[0]) == [b"a0", b"a1", b"a2"]
    assert closed.is_set()


def test_a_batched_stream_stops_when_every_request_has_gone_and_keeps_going_for_the_rest():
    closed, made = threading.Event(), []

    def endless_rows():
        try:
            for i in range(10_000):
                made.append(i)
                yield (f"a{i}".encode(), f"b{i}".encode())
        finally:
            closed.set()

    a, b = streaming.split_batch(endless_rows(), 2)
    assert next(a) == b"a0" and next(b) == b"b0"
    a.close()  # the first client leaves; the second still gets its tokens
    assert [next(b) for _ in range(3)] == [b"b1", b"b2", b"b3"]
    assert not closed.is_set()
    b.close()
    assert closed.is_set() and len(made) == 4


def test_a_batched_stream_failure_reaches_every_request_and_bad_steps_are_named():
    def boom():
        yield (b"x", b"y")
        raise RuntimeError("batch failed")

    a, b = streaming.split_batch(boom(), 2)
    assert next(a) == b"x"
    with pytest.raises(RuntimeError, match="batch failed"):
        next(a)
    assert next(b) == b"y"
    with pytest.raises(RuntimeError, match="batch failed"):
        next(b)
    (only,) = streaming.split_batch(iter([(b"1", b"2")]), 1)
    with pytest.raises(ValueError, match="has 2 items for a batch of 1"):
        next(only)
