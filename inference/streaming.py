"""What a streamed answer is, for the handler contract: a handler streams by returning an iterator
or a generator (:func:`is_stream`) instead of bytes; each item is one chunk (``bytes`` or ``str``,
:func:`to_chunk`).

Batching: :func:`batchable` — a handler that declares ``aiops_stream = True`` is served
unbatched unless it also declares ``aiops_batch = True``; then its ``predict_fn`` given a batch
returns an iterator of steps, one entry per request, and :func:`split_batch` turns it into one
stream per request. A batched ``predict_fn`` of an undeclared handler that returns a stream anyway
is closed (:func:`close_quietly`) and the requests run one by one.

How the server sends a stream (its own thread, chunked or event-stream framing, disconnects,
deadlines) is :mod:`aiops.inference.serving.stream_sender`.
"""

from __future__ import annotations

import collections
import collections.abc
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("aiops.serve")

_END = object()  # a row's stream has ended


def is_stream(obj: Any) -> bool:
    """True for an iterator or generator a handler returned as its response.

    bytes, str, lists, dicts, tensors and arrays are iterable but not iterators: they are
    ordinary (whole) responses.
    """
    return isinstance(obj, collections.abc.Iterator) and not isinstance(
        obj, (bytes, str, bytearray, memoryview)
    )


def to_chunk(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    raise TypeError(
        f"a streamed response yielded {type(item).__name__}; each item must be bytes or str "
        "(encode it in output_fn)"
    )


def map_stream(items: Iterator[Any], fn: Callable[[Any], Any]) -> Iterator[Any]:
    """``fn`` applied to each item, lazily; closing the result closes ``items`` (stops generation)."""
    try:
        for item in items:
            yield fn(item)
    finally:
        close_quietly(items)


def close_quietly(items: Any) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - a generator's cleanup failing must not mask the response
            log.warning("closing a streamed response raised:\n%s", traceback.format_exc().rstrip())


def batchable(module: Any, batchable_otherwise: bool) -> bool:
    """Batching rule: streamed handlers (``aiops_stream = True``) are unbatched unless they also
    declare ``aiops_batch = True``; other handlers keep ``batchable_otherwise``."""
    if module is not None and getattr(module, "aiops_stream", False):
        return bool(getattr(module, "aiops_batch", False))
    return batchable_otherwise


class _Rows:
    """The shared side of :func:`split_batch`: one batched iterator, one deque per request."""

    def __init__(self, items: Iterator[Any], n: int) -> None:
        self.items = items
        self.pending: list[collections.deque] = [collections.deque() for _ in range(n)]
        self.open = [True] * n
        self.done = False
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def pull(self, row: int) -> Any:
        with self.lock:
            while not self.pending[row]:
                if self.error is not None:
                    raise self.error
                if self.done:
                    return _END
                try:
                    step = next(self.items)
                except StopIteration:
                    self.done = True
                    continue
                except BaseException as err:  # noqa: BLE001 - every request of the batch sees it
                    self.error = err
                    self.done = True
                    close_quietly(self.items)
                    continue
                if len(step) != len(self.pending):
                    self.error = ValueError(
                        f"a batched stream step has {len(step)} items for a batch of "
                        f"{len(self.pending)}; yield one item (or None) per request"
                    )
                    self.done = True
                    close_quietly(self.items)
                    continue
                for i, item in enumerate(step):
                    if self.open[i] and item is not None:
                        self.pending[i].append(item)
            return self.pending[row].popleft()

    def leave(self, row: int) -> None:
        with self.lock:
            self.open[row] = False
            self.pending[row].clear()
            if not any(self.open) and not self.done:
                self.done = True
                close_quietly(self.items)  # every client has gone: stop the batch's generation


def _row(rows: _Rows, row: int) -> Iterator[Any]:
    try:
        while True:
            item = rows.pull(row)
            if item is _END:
                return
            yield item
    finally:
        rows.leave(row)


def split_batch(items: Iterator[Any], n: int) -> list[Iterator[Any]]:
    """One stream per request from a batched streaming ``predict_fn`` (``aiops_stream`` and
    ``aiops_batch`` both declared): each step of ``items`` is a sequence with one entry per
    request (None: nothing for that request at this step). Safe to consume from several threads;
    the batch's generator is closed once every request's stream is closed or it ends."""
    rows = _Rows(iter(items), n)
    return [_row(rows, i) for i in range(n)]
