"""One request inside the engine: its handle for the caller (:class:`Generation`) and its decoding state
(:class:`Sequence`: the ids so far, its sampler's generator, the incremental detokenizer's offsets)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from aiops.inference.llm.generation import (
    Event,
    Finished,
    GenerationRequest,
    LLMError,
    SamplingParams,
    Token,
)


class Generation:
    """One request's handle: its events in order (``TokenEvent``s, then one ``Finished``), and ``cancel``.

    Iterating blocks until the next event (a thread must be stepping the engine); :meth:`poll` drains what
    has arrived without waiting (an event loop calls it when ``notify`` fires). A request that failed in the
    engine raises its :class:`LLMError` from either.

    ``deliver``, when given, takes every event in the engine's thread instead of the queue: it hands the event
    on itself (a streaming server writes a token straight to its client) or calls :meth:`enqueue`, so that
    the caller decides, under its own lock, what goes past the queue without reordering it.
    """

    def __init__(
        self,
        cancel: Callable[[int], None],
        seq_id: int,
        input_length: int,
        max_new_tokens: int,
        notify: Callable[[], None] | None,
        deliver: Callable[[Generation, Event | LLMError], None] | None = None,
    ) -> None:
        self._cancel = cancel
        self.seq_id = seq_id
        self.input_length = input_length
        self.max_new_tokens = max_new_tokens
        self._notify = notify
        self._deliver = deliver
        self._events: queue.SimpleQueue[Event | LLMError] = queue.SimpleQueue()
        self.done = False  # the last event has been taken
        self._end: Finished | LLMError | None = None

    def _put(self, event: Event | LLMError) -> None:
        if self._deliver is not None:
            self._deliver(self, event)
        else:
            self.enqueue(event)

    def enqueue(self, event: Event | LLMError) -> None:
        """Queue the event for :meth:`poll` or iteration, and wake the caller (``notify``)."""
        self._events.put(event)
        if self._notify is not None:
            self._notify()

    def _take(self, event: Event | LLMError) -> Event:
        if isinstance(event, (Finished, LLMError)):
            self.done, self._end = True, event
        if isinstance(event, LLMError):
            raise event
        return event

    @property
    def pending(self) -> bool:
        """Events are queued that :meth:`poll` has not taken."""
        return not self._events.empty()

    def __iter__(self) -> Iterator[Event]:
        while not self.done:
            yield self._take(self._events.get())

    def poll(self) -> list[Event]:
        out: list[Event] = []
        while not self.done:
            try:
                out.append(self._take(self._events.get_nowait()))
            except queue.Empty:
                break
        return out

    def result(self) -> Finished:
        """Wait for the end and return it (the ``Finished`` carries every token)."""
        for _ in self:
            pass
        if isinstance(self._end, LLMError):
            raise self._end
        assert self._end is not None  # iterating ends only at the Finished or the error
        return self._end

    def cancel(self) -> None:
        """The client went away: the sequence leaves the batch at the next step boundary."""
        self._cancel(self.seq_id)


@dataclass
class Sequence:
    seq_id: int
    request: GenerationRequest
    ids: list[int]  # prompt then generated
    input_length: int
    max_new_tokens: int
    handle: Generation
    seed: int | None = None
    generator: torch.Generator | None = None
    tokens: list[Token] = field(default_factory=list)
    top_tokens: list[tuple[Token, ...]] = field(default_factory=list)
    prefill: tuple[Token, ...] = ()
    prefix_offset: int = 0
    read_offset: int = 0
    output: str = ""  # the recent text, for stop sequences (TGI keeps its last 200-300 characters)
    matched_stop: str | None = None
    done: bool = False

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: taken for the whole batch in one operation."""
        p = self.params
        return (
            not p.do_sample
            and p.repetition_penalty == 1.0
            and p.frequency_penalty == 0.0
            and p.presence_penalty == 0.0
        )
