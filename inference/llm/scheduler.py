"""What runs next: the policy of the LLM engine's running batch, with no torch and no sockets.

The engine asks for a :class:`Plan` at every step boundary (between two decode steps) and carries it out:
the sequences in ``leave`` are taken out of the batch (finished at the last step, or cancelled because their
client went away), those in ``join`` are prefilled together (left-padded; the engine groups similar lengths
into one forward each) and added, then one decode step runs for the whole batch.

Policy, as TGI's router queue:
- a request is refused up front when its prompt plus ``max_new_tokens`` exceeds ``max_total_tokens`` or its
  prompt exceeds ``max_input_tokens`` (TGI's validation messages); a missing ``max_new_tokens`` takes the rest
  of the budget;
- waiting requests join in arrival order (FIFO) while the batch has a free slot (``max_batch_size``), the
  batch's reserved tokens stay within ``max_batch_total_tokens`` and the prompts joining at one step within
  ``max_batch_prefill_tokens``, counted padded (rows x the longest prompt: the most a joint prefill
  computes, TGI's count for models that pad); the head of the queue is never overtaken, so nothing starves;
- past ``max_queue`` waiting requests a new one is refused as overloaded.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from aiops.inference.llm.generation import Limits, LLMError


@dataclass(frozen=True)
class Entry:
    seq_id: int
    input_length: int
    max_new_tokens: int

    @property
    def reserved_tokens(self) -> int:
        """The most cache this sequence can hold: what the batch budget counts."""
        return self.input_length + self.max_new_tokens


@dataclass(frozen=True)
class Plan:
    leave: tuple[int, ...] = ()  # running sequences to take out of the batch before this step
    join: tuple[int, ...] = ()  # waiting sequences to prefill and add, in this order
    dropped: tuple[int, ...] = ()  # waiting sequences cancelled before they ever ran


NO_CHANGE = Plan()


class Scheduler:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._waiting: OrderedDict[int, Entry] = OrderedDict()
        self._running: dict[int, Entry] = {}
        self._leaving: list[int] = []
        self._dropped: list[int] = []

    # ------------------------------------------------------------------ admission
    def resolve_max_new_tokens(self, input_length: int, max_new_tokens: int | None) -> int:
        """The request's ``max_new_tokens`` under the budget, or LLMError("validation") with TGI's message
        (router/src/validation.rs: the total is checked before the input length)."""
        limits = self.limits
        if input_length < 1:
            raise LLMError("`inputs` cannot be empty")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise LLMError("`max_new_tokens` must be strictly positive")
        if max_new_tokens is None:
            max_new_tokens = max(limits.max_total_tokens - input_length, 0)
        if input_length + max_new_tokens > limits.max_total_tokens:
            raise LLMError(
                f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        if input_length > limits.input_tokens:
            raise LLMError(
                f"`inputs` must have less than {limits.input_tokens} tokens. Given: {input_length}"
            )
        return max_new_tokens

    def enqueue(self, seq_id: int, input_length: int, max_new_tokens: int | None) -> Entry:
        """Queue a request (validated by :meth:`resolve_max_new_tokens`); LLMError("overloaded") when the
        queue is full."""
        if seq_id in self._waiting or seq_id in self._running:
            raise ValueError(f"sequence {seq_id} is already scheduled")
        entry = Entry(seq_id, input_length, self.resolve_max_new_tokens(input_length, max_new_tokens))
        if len(self._waiting) >= self.limits.max_queue:
            raise LLMError("Model is overloaded", "overloaded")
        self._waiting[seq_id] = entry
        return entry

    # ------------------------------------------------------------------ leaving
    def finish(self, seq_id: int) -> None:
        """A running sequence ended at the last step; it leaves the batch at the next plan."""
        if seq_id in self._running and seq_id not in self._leaving:
            self._leaving.append(seq_id)

    def cancel(self, seq_id: int) -> None:
        """The client went away: a running sequence leaves at the next plan, a waiting one is dropped.
        Unknown or already finished sequences are ignored (the cancel raced the end)."""
        if seq_id in self._waiting:
            del self._waiting[seq_id]
            self._dropped.append(seq_id)
        else:
            self.finish(seq_id)

    # ------------------------------------------------------------------ the step boundary
    def plan(self) -> Plan:
        if not (self._leaving or self._dropped or self._waiting):
            return NO_CHANGE  # the usual step boundary while decoding
        leave, self._leaving = tuple(self._leaving), []
        dropped, self._dropped = tuple(self._dropped), []
        for seq_id in leave:
            del self._running[seq_id]
        limits = self.limits
        batch_tokens = sum(entry.reserved_tokens for entry in self._running.values())
        join: list[int] = []
        longest = 0
        while self._waiting and len(self._running) < limits.max_batch_size:
            head = next(iter(self._waiting.values()))
            if (
                limits.max_batch_total_tokens is not None
                and batch_tokens + head.reserved_tokens > limits.max_batch_total_tokens
            ):
                break
            padded = (len(join) + 1) * max(longest, head.input_length)
            if join and padded > limits.prefill_tokens:
                break  # the rest joins at the next step: one step's prefill stays bounded
            del self._waiting[head.seq_id]
            self._running[head.seq_id] = head
            batch_tokens += head.reserved_tokens
            longest = max(longest, head.input_length)
            join.append(head.seq_id)
        return Plan(leave=leave, join=tuple(join), dropped=dropped)

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> tuple[int, ...]:
        return tuple(self._running)

    @property
    def waiting(self) -> tuple[int, ...]:
        return tuple(self._waiting)

    @property
    def idle(self) -> bool:
        """Nothing to run and nothing to report: the engine may sleep until the next request."""
        return not (self._waiting or self._running or self._leaving or self._dropped)

    def entry(self, seq_id: int) -> Entry:
        return self._running.get(seq_id) or self._waiting[seq_id]
