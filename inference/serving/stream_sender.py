"""Sending a handler's stream: its generator runs on a thread of its own (:class:`ChunkStream`), a
few chunks ahead of the network at most, and the loop writes what it makes to a :class:`Sink`
(:func:`stream_to`) as HTTP chunks or event-stream frames until it ends, fails, times out or the
client leaves.

- plain ``POST /invocations`` (HTTP/1.1): ``Transfer-Encoding: chunked``, one HTTP chunk per item,
  flushed as produced (the SageMaker bring-your-own-container streaming contract). A handler
  failure after the first chunk truncates the chunked body (no terminating chunk, connection
  closed) and logs one line; the client sees an incomplete body, never a hang;
- ``POST /endpoints/{name}/invocations-response-stream`` (InvokeEndpointWithResponseStream): the
  same chunks as AWS event-stream ``PayloadPart`` frames (:mod:`.http.eventstream`); a failure
  after the first chunk ends the stream with a ``ModelStreamError`` (``StreamBroken``) event, so
  boto3 raises it while iterating;
- a client that cannot stream (HTTP/1.0, or the non-streaming InvokeEndpoint route
  ``/endpoints/{name}/invocations``): the whole body, joined, with a Content-Length
  (:meth:`ChunkStream.collect`).

Its first chunk is made inside the handler call (:meth:`ChunkStream.prime`), so a handler that
fails at once still gets an ordinary error status. Client disconnect, a deadline or the end of the
response stop the producer and call the generator's ``close()`` on its own thread, so generation
stops (its ``finally`` runs). How the worker uses it, once ``InferenceHandler.invoke`` answered
``(out, ctype)`` with ``is_stream(out)``::

    stream = ChunkStream(out)
    stream.prime()                       # on the thread of the handler call: the first chunk;
                                         # raises the handler's error -> an ordinary error answer
    await stream.start()                 # on the loop; the producer thread starts after chunk 1
    if mode == BUFFERED:
        out = await stream.collect()     # raises the handler's error; then a whole answer
    else:                                # any Sink: the worker's is http.responses.TransportSink
        outcome = await stream_to(stream, sink, mode=mode, request_id=rid, timeout_s=...)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from aiops.inference.serving.http import eventstream
from aiops.inference.streaming import close_quietly, to_chunk

log = logging.getLogger("aiops.serve")

CHUNKED = "chunked"
EVENTS = "events"
BUFFERED = "buffered"
DEFAULT_AHEAD = 8  # chunks the generator may run ahead of the network


# ---------------------------------------------------------------- the producer thread


class _End:
    pass


class _Interrupt:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = _End()


class StreamTimeout(Exception):
    """The stream did not finish within the server's timeout."""


class StreamTooLarge(Exception):
    """A stream collected whole (:meth:`ChunkStream.collect`) passed its size cap."""


# Streams whose producer thread is running (a set: adding and discarding are atomic under the GIL);
# what :func:`blocked_producers` counts.
_PRODUCING: set[ChunkStream] = set()


def blocked_producers(stopped_for: float) -> int:
    """Producer threads told to stop (client gone, timeout, end) at least ``stopped_for`` seconds ago
    whose generator has still not yielded or returned: each holds a thread (and whatever the
    generator holds) that nothing can take back but the end of the process."""
    now = time.monotonic()
    return sum(
        1
        for stream in list(_PRODUCING)
        if stream.stopped_at is not None
        and now - stream.stopped_at >= stopped_for
        and not stream.closed.is_set()
    )


class ChunkStream:
    """Runs a handler's iterator on its own thread, ``ahead`` chunks ahead of the consumer at most.

    ``await start()`` (first chunk), then ``await next()`` until it returns None. ``close()``
    (or ``interrupt()``) stops the producer; the iterator's ``close()`` is called on the
    producer's thread (a generator cannot be closed from another thread while it runs).
    ``closed`` is a ``threading.Event`` set once the iterator is closed.

    Hand-off: a deque under a lock; the event loop is woken (``call_soon_threadsafe``, a
    syscall) only when the consumer is actually waiting, so a fast producer costs the loop
    nothing per chunk beyond taking it.
    """

    def __init__(
        self, items: Iterable[Any], *, ahead: int = DEFAULT_AHEAD, name: str = "aiops-stream"
    ) -> None:
        self._items = items
        self._space = threading.Semaphore(max(1, ahead))
        self._stop = threading.Event()
        self.closed = threading.Event()
        self._name = name
        self._lock = threading.Lock()
        self._buffer: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first: Any = None
        self._finished = False
        self._primed = False
        self._producing = False
        self._iterator: Iterator[Any] | None = None
        self.stopped_at: float | None = None  # when the producer was first told to stop
        self.chunks = 0
        self.bytes = 0

    # producer side (its own thread) ------------------------------------------------

    def _put(self, value: Any) -> None:
        with self._lock:
            self._buffer.append(value)
            waiter, self._waiter = self._waiter, None
        if waiter is not None and self._loop is not None:  # a waiter exists once start() ran
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # the loop is gone (server shutting down): nobody is listening
                self._stop.set()

    def _produce(self, iterator: Iterator[Any] | None = None) -> None:
        try:
            if iterator is None:
                iterator = iter(self._items)
            while not self._stop.is_set():
                try:
                    item = next(iterator)
                except StopIteration:
                    self._put(_END)
                    return
                chunk = to_chunk(item)
                if not chunk:  # an empty HTTP chunk would end the body; nothing to send anyway
                    continue
                self._space.acquire()
                if self._stop.is_set():
                    return
                self._put(chunk)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which reports it
            self._put(_Failure(err))
        finally:
            close_quietly(iterator if iterator is not None else self._items)
            self.closed.set()
            _PRODUCING.discard(self)

    def _start_producer(self, iterator: Iterator[Any] | None = None) -> None:
        _PRODUCING.add(self)
        threading.Thread(target=self._produce, args=(iterator,), name=self._name, daemon=True).start()

    # consumer side (the event loop) ----------------------------------------------

    def prime(self) -> None:
        """Make the first chunk now, on the calling thread (no event loop needed): for a server
        that calls its handler on an inference thread, so the first chunk is part of that call and a
        handler that fails at once raises here (an ordinary error response). ``start()`` then only
        starts the producer thread for the rest."""
        self._iterator = self._first_chunk()
        self._primed = True

    def discard(self) -> None:
        """Close a primed stream that will never be sent (its request was answered otherwise)."""
        self.close()

    async def start(self, *, inline_first: bool = False) -> None:
        """Start the producer and wait for the first chunk; raises what the handler raised.

        ``inline_first``: make the first chunk right here, on the calling (event-loop) thread,
        before the producer thread exists - for a server that already runs its handler calls on
        the loop (it saves a thread start and a wake-up from the time to first byte; the loop is
        blocked for that one chunk, as it is for a whole non-streamed predict).
        """
        self._loop = asyncio.get_running_loop()
        if self._primed:  # the producer starts once the first chunk is out (see _get)
            return
        if not inline_first:
            self._start_producer()
            self._first = await self._get()
            if isinstance(self._first, _Failure):
                self.close()
                raise self._first.error
            return
        iterator = self._first_chunk()
        if iterator is not None:
            self._start_producer(iterator)

    def _first_chunk(self) -> Any:
        """Make the first non-empty chunk on the calling thread; return the iterator for the rest,
        or None when the stream ended before one. What the handler raised is raised here, with
        the stream closed."""
        iterator = None
        try:
            iterator = iter(self._items)
            chunk = b""
            while not chunk:
                chunk = to_chunk(next(iterator))
        except StopIteration:
            self._first = _END
            close_quietly(iterator)
            self.closed.set()
            return None
        except BaseException:
            close_quietly(iterator if iterator is not None else self._items)
            self.closed.set()
            self._stop.set()
            raise
        self.chunks, self.bytes = 1, len(chunk)
        self._first = chunk
        return iterator

    async def _get(self) -> Any:
        if self._primed and not self._producing:
            # A primed stream starts its producer only when the second chunk is wanted: the first
            # one is sent before a thread that would compete for the GIL exists.
            self._producing = True
            if not self.closed.is_set() and not self._stop.is_set():
                self._start_producer(self._iterator)
        while True:
            with self._lock:
                if self._buffer:
                    value = self._buffer.popleft()
                    break
                assert self._loop is not None, "start() before next()"
                waiter = self._waiter = self._loop.create_future()
            await waiter
        if isinstance(value, bytes):
            self._space.release()
            self.chunks += 1
            self.bytes += len(value)
        return value

    def ready(self) -> int:
        """How many items are waiting (the consumer may take them without waiting)."""
        return len(self._buffer)

    async def next(self) -> bytes | None:
        """The next chunk, or None at the end. Raises the handler's error, or StreamTimeout /
        ``ConnectionAbortedError`` after :meth:`interrupt`."""
        if self._finished:
            return None
        if self._first is not None:
            value, self._first = self._first, None
        else:
            value = await self._get()
        if isinstance(value, bytes):
            return value
        self._finished = True
        self.close()
        if value is _END:
            return None
        if isinstance(value, _Failure):
            raise value.error
        if isinstance(value, _Interrupt):
            if value.reason == "timeout":
                raise StreamTimeout("the model did not finish its streamed response in time")
            raise ConnectionAbortedError("the client disconnected")
        return None

    def interrupt(self, reason: str = "disconnect") -> None:
        """Wake the consumer at once (client gone, deadline) and stop the producer. Event loop only."""
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        self._stop.set()
        self._space.release()
        with self._lock:
            self._buffer.appendleft(_Interrupt(reason))  # ahead of chunks nobody will read
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    def close(self) -> None:
        """Stop the producer; the iterator is closed on its thread as soon as it yields."""
        if not self._stop.is_set():
            if self.stopped_at is None:
                self.stopped_at = time.monotonic()
            self._stop.set()
            self._space.release()  # unblock a producer waiting for room
        if self._primed and not self._producing and not self.closed.is_set():
            # primed and its producer never started: the generator is suspended, close it here
            self._producing = True
            close_quietly(self._iterator)
            self.closed.set()

    async def collect(self, *, timeout_s: float | None = None, max_bytes: int | None = None) -> bytes:
        """All the chunks joined (for a client that cannot stream). Raises the handler's error,
        :class:`StreamTimeout` when the stream has not ended ``timeout_s`` after this call, and
        :class:`StreamTooLarge` once the chunks pass ``max_bytes`` (the generator is closed then)."""
        timer = (
            asyncio.get_running_loop().call_later(timeout_s, self.interrupt, "timeout") if timeout_s else None
        )
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = await self.next()
                if chunk is None:
                    return b"".join(parts)
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise StreamTooLarge(f"the response passed {max_bytes} bytes")
                parts.append(chunk)
        finally:
            if timer is not None:
                timer.cancel()
            self.close()


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


# ---------------------------------------------------------------- where chunks go


class Sink(Protocol):
    """A response body being written: the minimal interface :func:`stream_to` needs."""

    async def send(self, data: bytes) -> None:
        """Write and flush one body part (framing, e.g. HTTP chunks, is the sink's business)."""

    async def finish(self) -> None:
        """End the body properly (the terminating chunk)."""

    def abort(self) -> None:
        """End the body improperly: the client must see a truncated response."""

    def is_disconnected(self) -> bool: ...

    async def wait_disconnected(self) -> None:
        """Return when the client has gone."""


@dataclass
class StreamOutcome:
    chunks: int = 0
    bytes: int = 0
    completed: bool = False
    disconnected: bool = False
    error: BaseException | None = None


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {os.path.basename(last.filename)}:{last.lineno}"


async def stream_to(
    stream: ChunkStream,
    sink: Sink,
    *,
    mode: str = CHUNKED,
    request_id: str = "-",
    timeout_s: float | None = None,
) -> StreamOutcome:
    """Send a started :class:`ChunkStream` to ``sink`` as HTTP chunks (``mode="chunked"``) or
    event-stream frames (``mode="events"``) until it ends, fails, times out or the client leaves."""
    if mode not in (CHUNKED, EVENTS):
        raise ValueError(f"mode {mode!r}: expected {CHUNKED!r} or {EVENTS!r}")
    outcome = StreamOutcome()
    frame = eventstream.payload_part if mode == EVENTS else None
    loop = asyncio.get_running_loop()
    watcher = asyncio.ensure_future(_watch(sink, stream))
    sending = timed_out = False  # sending: waiting in sink.send for the client to read

    def on_timeout() -> None:
        nonlocal timed_out
        timed_out = True
        stream.interrupt("timeout")
        if sending:  # the client reads nothing: no error event or end could reach it either
            sink.abort()

    timer = loop.call_later(timeout_s, on_timeout) if timeout_s else None
    # Event-stream frames are self-delimiting, so frames already waiting go out in one write
    # (fewer syscalls, same events); nothing waits for company: a lone frame is sent at once.
    # Chunked mode keeps one HTTP chunk per item.
    pending: list[bytes] = []
    try:
        while True:
            try:
                chunk = await stream.next()
            except ConnectionAbortedError:
                outcome.disconnected = True
                break
            except asyncio.CancelledError:
                raise
            except BaseException as err:  # noqa: BLE001 - the handler's failure mid-stream (even SystemExit)
                outcome.error = err
                if pending:
                    await sink.send(b"".join(pending))
                await _fail(sink, err, mode, request_id, stream)
                break
            if chunk is None:
                if pending:
                    await sink.send(b"".join(pending))
                await sink.finish()
                outcome.completed = True
                break
            sending = True
            if frame is None:
                await sink.send(chunk)
            else:
                pending.append(frame(chunk))
                if stream.ready() and len(pending) < 64:
                    sending = False
                    continue
                await sink.send(pending[0] if len(pending) == 1 else b"".join(pending))
                pending.clear()
            sending = False
            if sink.is_disconnected():
                outcome.disconnected = True
                break
    finally:
        stream.close()
        if timer is not None:
            timer.cancel()
        watcher.cancel()
    if outcome.disconnected and timed_out:
        log.error(
            "request %s: streamed response timed out after %d chunks while its client read nothing; "
            "connection aborted",
            request_id,
            stream.chunks,
        )
    elif outcome.disconnected:
        log.info(
            "request %s: client disconnected after %d streamed chunks; generation stopped",
            request_id,
            stream.chunks,
        )
    outcome.chunks, outcome.bytes = stream.chunks, stream.bytes
    return outcome


async def _watch(sink: Sink, stream: ChunkStream) -> None:
    await sink.wait_disconnected()
    stream.interrupt("disconnect")


async def _fail(sink: Sink, err: BaseException, mode: str, request_id: str, stream: ChunkStream) -> None:
    timeout = isinstance(err, StreamTimeout)
    what = "timed out" if timeout else f"failed: {type(err).__name__}: {str(err)[:300]}{_where(err)}"
    log.error(
        "request %s: streamed response %s after %d chunks (%s)",
        request_id,
        what,
        stream.chunks,
        "ModelStreamError event sent" if mode == EVENTS else "chunked body truncated",
    )
    if mode == EVENTS and not sink.is_disconnected():
        if timeout:
            message = eventstream.model_stream_error(str(err), eventstream.INVOCATION_TIMEOUT)
        else:
            message = eventstream.model_stream_error(
                f"the inference handler raised {type(err).__name__} while streaming; see the server log for "
                f"request {request_id}"
            )
        await sink.send(message)
        await sink.finish()
    else:
        sink.abort()
