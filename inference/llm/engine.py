"""The LLM engine: a Hugging Face causal LM decoding many requests together (continuous batching).

Requests are admitted into one running batch and decoded step by step together: at every step boundary
the :class:`~aiops.inference.llm.scheduler.Scheduler` says which sequences leave (finished, or cancelled
because their client went away) and which waiting ones join; a joining prompt is prefilled alone (its first
token is out after that one forward), its KV cache is left-padded to the batch's length and stacked onto the
batch, and one decode step then runs every sequence at once.

Correctness: left padding with an attention mask and per-row position ids gives each row the computation it
would get alone, so greedy output equals ``model.generate(do_sample=False)`` token for token, batched or
not (to float rounding: fp32 on the CPU in the tests; half precision may flip near-ties, as in any batched
server). Each sampled request draws from its own ``torch.Generator``, so a seed reproduces it whatever its
batch companions. Logits processing is transformers' own (repetition penalty, temperature, top-k, top-p),
applied in ``generate``'s order; the stopping rules and the incremental detokenizer are TGI's
(server/text_generation_server: ``StoppingCriteria``, ``Model.decode_token``).

Threads: :meth:`LLMEngine.submit` may be called from any thread (it tokenizes there); one thread runs the
steps, either the engine's own (:meth:`LLMEngine.start`) or the caller's (:meth:`LLMEngine.step`, what the
tests use to interleave requests deterministically). Each request's events arrive on its
:class:`Generation`, which the HTTP layer drains (``notify`` wakes an event loop from the engine thread).
"""

from __future__ import annotations

import inspect
import itertools
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from aiops.inference.llm.folder import check_causal_lm_folder
from aiops.inference.llm.generation import (
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    Limits,
    LLMError,
    SamplingParams,
    Token,
    TokenEvent,
)
from aiops.inference.llm.scheduler import Scheduler

from aiops.errors import UsageError
from aiops.extras import missing_modules, require_extra


class Generation:
    """One request's handle: its events in order (``TokenEvent``s, then one ``Finished``), and ``cancel``.

    Iterating blocks until the next event (a thread must be stepping the engine); :meth:`poll` drains what
    has arrived without waiting (an event loop calls it when ``notify`` fires). A request that failed in the
    engine raises its :class:`LLMError` from either.
    """

    def __init__(
        self,
        engine: LLMEngine,
        seq_id: int,
        input_length: int,
        max_new_tokens: int,
        notify: Callable[[], None] | None,
    ) -> None:
        self._engine = engine
        self.seq_id = seq_id
        self.input_length = input_length
        self.max_new_tokens = max_new_tokens
        self._notify = notify
        self._events: queue.SimpleQueue[Event | LLMError] = queue.SimpleQueue()
        self.done = False  # the last event has been taken
        self._end: Finished | LLMError | None = None

    def _put(self, event: Event | LLMError) -> None:
        self._events.put(event)
        if self._notify is not None:
            self._notify()

    def _take(self, event: Event | LLMError) -> Event:
        if isinstance(event, (Finished, LLMError)):
            self.done, self._end = True, event
        if isinstance(event, LLMError):
            raise event
        return event

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
        self._engine.cancel(self.seq_id)


@dataclass
class _Sequence:
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


@dataclass(frozen=True)
class _Choice:
    token_id: int
    logprob: float
    top_tokens: tuple[Token, ...]


@dataclass
class _Batch:
    """The running batch: row r is ``seqs[r]``; the cache and mask are left-padded to one length."""

    seqs: list[_Sequence]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [rows, kv_heads, length, head_dim]
    mask: torch.Tensor  # [rows, length], 0 on padding
    lengths: torch.Tensor  # [rows]: real tokens in the cache, the next position id
    next_input: torch.Tensor  # [rows]: the last chosen token, fed at the next step
    cache: object = None  # the DynamicCache the model appends to, built from ``kv`` when rows change
    padded: bool = False  # some row has padding: the engine then builds the attention mask itself


class LLMEngine:
    """Continuous batching over a ``transformers`` causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, limits: Limits | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.limits = limits or Limits()
        self.device = next(model.parameters()).device
        self.scheduler = Scheduler(self.limits)
        self._check_model(model)
        forward = set(inspect.signature(model.forward).parameters)
        self._keep_last = next(
            (name for name in ("logits_to_keep", "num_logits_to_keep") if name in forward), None
        )
        # A padded batch's decode mask is one row per sequence: built here as a 4D additive mask, which
        # transformers takes as is (its own builder costs most of a small model's step); flash attention
        # takes the 2D mask instead
        self._own_mask = "flash" not in str(getattr(model.config, "_attn_implementation", ""))
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self.special_ids = frozenset(tokenizer.all_special_ids)
        self._lock = threading.Condition()
        self._seqs: dict[int, _Sequence] = {}
        self._batch: _Batch | None = None
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._closing = False

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        limits: Limits | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
    ) -> LLMEngine:
        """Load a causal-LM folder (``save_pretrained``'s output): UsageError naming what is missing when
        it is not one. ``device``: default cuda when present; ``dtype``: default float32 on the CPU, the
        config's half-precision dtype (or bfloat16) on a GPU."""
        folder = Path(folder)
        check_causal_lm_folder(folder)
        missing = missing_modules("transformers", "tokenizers", "jinja2")
        if missing:
            raise require_extra("llm", "serving a causal LM", missing=", ".join(missing))
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = _resolve_dtype(folder, device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        import transformers
        from packaging.version import Version

        key = (
            "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        )  # renamed in 4.56
        model = AutoModelForCausalLM.from_pretrained(folder, **{key: torch_dtype}).to(device)
        limits = limits or Limits()
        window = _sliding_window(model.config)
        if window is not None and window < limits.max_total_tokens:
            raise UsageError(
                f"{folder}: the model attends through a sliding window of {window} tokens, which "
                f"this engine does not implement: serve it with max_total_tokens <= {window}"
            )
        return cls(model, tokenizer, limits)

    @staticmethod
    def _check_model(model) -> None:
        if "position_ids" not in inspect.signature(model.forward).parameters:
            raise UsageError(f"{type(model).__name__} takes no position_ids: batched decoding needs them")

    # ------------------------------------------------------------------ requests
    def submit(self, request: GenerationRequest, notify: Callable[[], None] | None = None) -> Generation:
        """Tokenize and queue a request (in the caller's thread). Raises LLMError: "validation" over the token
        budget, "overloaded" when the queue is full."""
        ids = self.tokenizer(request.prompt, add_special_tokens=request.add_special_tokens)["input_ids"]
        if request.truncate is not None:
            ids = ids[-request.truncate :]
        params = request.params
        seed = params.seed
        if params.do_sample and seed is None:
            seed = secrets.randbits(63)
        with self._lock:
            seq_id = next(self._ids)
            entry = self.scheduler.enqueue(seq_id, len(ids), params.max_new_tokens)
            handle = Generation(self, seq_id, len(ids), entry.max_new_tokens, notify)
            seq = _Sequence(
                seq_id,
                request,
                list(ids),
                len(ids),
                entry.max_new_tokens,
                handle,
                seed=seed if params.do_sample else None,
                prefix_offset=max(len(ids) - 5, 0),
                read_offset=len(ids),
            )
            self._seqs[seq_id] = seq
            self._lock.notify_all()
        return handle

    def cancel(self, seq_id: int) -> None:
        with self._lock:
            self.scheduler.cancel(seq_id)
            self._lock.notify_all()

    # ------------------------------------------------------------------ the loop
    def start(self) -> LLMEngine:
        """Run the steps on a daemon thread of the engine's own."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float | None = 30) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._lock:
                while self.scheduler.idle and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
            self.step()

    def run_until_idle(self, max_steps: int = 1_000_000) -> int:
        """Step in the caller's thread until nothing is left to do; the number of steps."""
        steps = 0
        while self.step() and steps < max_steps:
            steps += 1
        return steps

    def counts(self) -> tuple[int, int]:
        """(running, waiting) requests, as the scheduler sees them now (metrics)."""
        with self._lock:
            return len(self.scheduler.running), len(self.scheduler.waiting)

    @property
    def running(self) -> int:
        return len(self._batch.seqs) if self._batch else 0

    def step(self) -> bool:
        """One step boundary and one decode step: sequences leave, waiting ones join (prefilled, their first
        token out), then every running sequence gets its next token. False when there was nothing to do."""
        with self._lock:
            if self.scheduler.idle:
                return False
            plan = self.scheduler.plan()
            joining = [self._seqs[seq_id] for seq_id in plan.join]
            gone = [self._seqs.pop(seq_id) for seq_id in plan.leave + plan.dropped]
        for seq in gone:
            self._end(seq, "cancelled")  # a no-op for those that finished
        try:
            with torch.inference_mode():
                if plan.leave:
                    self._remove(set(plan.leave))
                fresh = [part for seq in joining if (part := self._prefill(seq)) is not None]
                if fresh:
                    self._batch = _merge(([self._batch] if self._batch else []) + fresh)
                if self._batch is not None:
                    self._decode(self._batch)
        except Exception as exc:  # noqa: BLE001 - every running request learns why, the engine carries on
            self._fail_all(exc)
        return True

    # ------------------------------------------------------------------ model calls
    def _prefill(self, seq: _Sequence) -> _Batch | None:
        """The prompt alone, as ``generate`` runs it; its first token. None when that token ended it."""
        from transformers import DynamicCache

        length = seq.input_length
        ids = torch.tensor([seq.ids], device=self.device)
        mask = torch.ones((1, length), dtype=torch.long, device=self.device)
        kwargs = {}
        if self._keep_last and not seq.params.prefill_details:
            kwargs[self._keep_last] = 1
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=torch.arange(length, device=self.device)[None],
            past_key_values=DynamicCache(),
            use_cache=True,
            **kwargs,
        )
        if seq.params.prefill_details:
            seq.prefill = self._prefill_tokens(seq.ids, out.logits[0].float())
        if seq.params.do_sample:
            seq.generator = torch.Generator(device=self.device)
            seq.generator.manual_seed(seq.seed)
        choice = self._choose([seq], out.logits[:, -1, :])[0]
        if self._advance(seq, choice):
            return None
        return _Batch(
            [seq],
            _cache_layers(out.past_key_values),
            mask,
            torch.tensor([length], device=self.device),
            torch.tensor([choice.token_id], device=self.device),
        )

    def _decode(self, batch: _Batch) -> None:
        if batch.cache is None:
            batch.cache = _build_cache(batch.kv)
        rows = len(batch.seqs)
        mask = torch.cat(
            [batch.mask, torch.ones((rows, 1), dtype=batch.mask.dtype, device=self.device)], dim=1
        )
        attention = mask
        if batch.padded and self._own_mask:
            dtype = batch.kv[0][0].dtype
            attention = (1 - mask[:, None, None, :]).to(dtype) * torch.finfo(dtype).min
        out = self.model(
            input_ids=batch.next_input[:, None],
            attention_mask=attention,
            position_ids=batch.lengths[:, None],
            past_key_values=batch.cache,
            use_cache=True,
        )
        batch.mask = mask
        batch.lengths = batch.lengths + 1
        batch.kv = _cache_layers(batch.cache)
        choices = self._choose(batch.seqs, out.logits[:, -1, :])
        batch.next_input = torch.tensor([choice.token_id for choice in choices], device=self.device)
        for seq, choice in zip(batch.seqs, choices, strict=True):
            self._advance(seq, choice)

    def _remove(self, seq_ids: set[int]) -> None:
        batch = self._batch
        if batch is None:
            return
        keep = [row for row, seq in enumerate(batch.seqs) if seq.seq_id not in seq_ids]
        if len(keep) == len(batch.seqs):
            return
        if not keep:
            self._batch = None
            return
        index = torch.tensor(keep, device=self.device)
        mask = batch.mask.index_select(0, index)
        start = int((mask.sum(dim=0) > 0).nonzero()[0])  # columns that are padding in every remaining row
        mask = mask[:, start:]
        self._batch = _Batch(
            [batch.seqs[row] for row in keep],
            [
                (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                for k, v in batch.kv
            ],
            mask,
            batch.lengths.index_select(0, index),
            batch.next_input.index_select(0, index),
            padded=bool((mask == 0).any()),
        )

    # ------------------------------------------------------------------ choosing tokens
    def _choose(self, seqs: list[_Sequence], logits: torch.Tensor) -> list[_Choice]:
        """The next token of each row: plain greedy rows in one argmax, the others row by row."""
        logits = logits.float()
        choices: list[_Choice | None] = [None] * len(seqs)
        plain = [row for row, seq in enumerate(seqs) if seq.plain_greedy]
        if plain:
            rows = logits[plain] if len(plain) < len(seqs) else logits
            best = rows.argmax(dim=-1).tolist()
            row_logprobs = torch.log_softmax(rows, dim=-1)
            for i, row in enumerate(plain):
                choices[row] = self._choice(best[i], row_logprobs[i], seqs[row])
        for row, seq in enumerate(seqs):
            if choices[row] is not None:
                continue
            scores = self._process(seq, logits[row : row + 1])
            if seq.params.do_sample:
                token_id = int(
                    torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=seq.generator)[0, 0]
                )
            else:
                token_id = int(scores.argmax(dim=-1)[0])
            choices[row] = self._choice(token_id, torch.log_softmax(scores, dim=-1)[0], seq)
        return cast(list[_Choice], choices)  # every row is chosen by now

    def _choice(self, token_id: int, logprobs: torch.Tensor, seq: _Sequence) -> _Choice:
        return _Choice(
            token_id, float(logprobs[token_id]), self._top_tokens(logprobs, seq.params.top_n_tokens)
        )

    def _process(self, seq: _Sequence, scores: torch.Tensor) -> torch.Tensor:
        """transformers' processors in ``generate``'s order: penalties, then the sampling warpers."""
        from transformers import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
            TypicalLogitsWarper,
        )

        p = seq.params
        ids = torch.tensor([seq.ids], device=scores.device)
        if p.repetition_penalty != 1.0:
            scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
        if (p.frequency_penalty or p.presence_penalty) and len(seq.ids) > seq.input_length:
            generated = torch.tensor(seq.ids[seq.input_length :], device=scores.device)
            counts = torch.bincount(generated, minlength=scores.shape[-1])[: scores.shape[-1]].to(
                scores.dtype
            )
            scores = (
                scores - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(scores.dtype)
            )
        if p.do_sample:
            if p.temperature != 1.0:
                scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
            if p.top_k:
                scores = TopKLogitsWarper(p.top_k)(ids, scores)
            if p.top_p < 1.0:
                scores = TopPLogitsWarper(p.top_p)(ids, scores)
            if p.typical_p < 1.0:
                scores = TypicalLogitsWarper(p.typical_p)(ids, scores)
        return scores

    def _top_tokens(self, logprobs: torch.Tensor, n: int) -> tuple[Token, ...]:
        if not n:
            return ()
        values, indices = logprobs.topk(min(n, logprobs.shape[-1]))
        return tuple(
            self._token(int(i), float(v), self.tokenizer.decode([int(i)]))
            for v, i in zip(values, indices, strict=True)
        )

    def _prefill_tokens(self, ids: list[int], logits: torch.Tensor) -> tuple[Token, ...]:
        logprobs = torch.log_softmax(logits, dim=-1)
        out = [self._token(ids[0], float("nan"), self.tokenizer.decode([ids[0]]))]
        for position in range(1, len(ids)):
            token_id = ids[position]
            out.append(
                self._token(
                    token_id, float(logprobs[position - 1, token_id]), self.tokenizer.decode([token_id])
                )
            )
        return tuple(out)

    def _token(self, token_id: int, logprob: float, text: str) -> Token:
        return Token(token_id, text, logprob, token_id in self.special_ids)

    # ------------------------------------------------------------------ stopping and events
    def _advance(self, seq: _Sequence, choice: _Choice) -> bool:
        """Record the chosen token, apply TGI's stopping criteria, emit the event; True when it finished."""
        if seq.done:
            return True
        seq.ids.append(choice.token_id)
        text, seq.prefix_offset, seq.read_offset = self._decode_token(
            seq.ids, seq.prefix_offset, seq.read_offset
        )
        token = self._token(choice.token_id, choice.logprob, text)
        seq.tokens.append(token)
        if seq.params.top_n_tokens:
            seq.top_tokens.append(choice.top_tokens)
        reason = self._stop_reason(seq, choice.token_id, text)
        if reason is None:
            seq.handle._put(TokenEvent(token, len(seq.tokens), choice.top_tokens))
            return False
        self._end(seq, reason)
        with self._lock:
            self.scheduler.finish(seq.seq_id)
        return True

    def _stop_reason(self, seq: _Sequence, token_id: int, text: str) -> FinishReason | None:
        p = seq.params
        if len(seq.tokens) >= seq.max_new_tokens:
            return "length"
        if not p.ignore_eos and token_id in self.eos_ids:
            return "eos_token"
        if p.stop and text:
            seq.output += text
            if len(seq.output) > 300:
                seq.output = seq.output[-200:]
            for stop in p.stop:
                if (
                    seq.output.endswith(stop)
                    if p.stop_rule == "suffix"
                    else stop in seq.output[-(len(text) + len(stop)) :]
                ):
                    seq.matched_stop = stop
                    return "stop_sequence"
        return None

    def _end(self, seq: _Sequence, reason: FinishReason) -> None:
        if seq.done:
            return
        seq.done = True
        n = len(seq.tokens)
        # TGI's final text: the new tokens decoded with one token of context, special tokens skipped; TGI
        # answers "" when it ends in an unfinished UTF-8 sequence, here it keeps the replacement character
        context = seq.ids[len(seq.ids) - n - 1 : len(seq.ids) - n]
        before = self.tokenizer.decode(context, skip_special_tokens=True)
        generated_text = self.tokenizer.decode(
            context + seq.ids[len(seq.ids) - n :], skip_special_tokens=True
        )
        generated_text = (
            generated_text[len(before) :]
            if n and generated_text.startswith(before)
            else self.tokenizer.decode(seq.ids[len(seq.ids) - n :] if n else [], skip_special_tokens=True)
        )
        if seq.matched_stop and seq.params.stop_rule == "contains":
            at = generated_text.find(seq.matched_stop)
            generated_text = generated_text[:at] if at >= 0 else generated_text
        top = seq.top_tokens[-1] if seq.top_tokens else ()
        seq.handle._put(
            Finished(
                reason=reason,
                token=seq.tokens[-1] if n else None,
                index=n,
                generated_text=generated_text,
                input_length=seq.input_length,
                tokens=tuple(seq.tokens),
                seed=seq.seed,
                top_tokens=top,
                all_top_tokens=tuple(seq.top_tokens),
                prefill=seq.prefill,
                stop=seq.matched_stop,
            )
        )

    def _decode_token(
        self, ids: list[int], prefix_offset: int, read_offset: int, skip_special_tokens: bool = False
    ) -> tuple[str, int, int]:
        """TGI's ``Model.decode_token``: the new text of the last tokens, decoded with some context before
        them so that tokenizers that clean up spaces still give each token its own text; nothing while the
        text ends in an unfinished UTF-8 sequence."""
        prefix_text = self.tokenizer.decode(
            ids[prefix_offset:read_offset], skip_special_tokens=skip_special_tokens
        )
        new_text = self.tokenizer.decode(ids[prefix_offset:], skip_special_tokens=skip_special_tokens)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            return new_text[len(prefix_text) :], read_offset, len(ids)
        return "", prefix_offset, read_offset

    def _fail_all(self, exc: Exception) -> None:
        """A step failed (out of memory, say): every running request gets TGI's generation error; the batch is
        dropped and waiting requests run next."""
        error = LLMError(f"Request failed during generation: {exc}", "generation")
        self._batch = None
        with self._lock:
            for seq_id in self.scheduler.running:
                seq = self._seqs.get(seq_id)
                if seq is not None and not seq.done:
                    seq.done = True
                    seq.handle._put(error)
                self.scheduler.finish(seq_id)


# ---------------------------------------------------------------------- the batch's cache
def _merge(parts: list[_Batch]) -> _Batch:
    """Stack batches into one, each left-padded to the longest."""
    length = max(part.mask.shape[1] for part in parts)

    def pad_kv(t: torch.Tensor) -> torch.Tensor:  # [rows, heads, len, dim]: zeros on the left of len
        return F.pad(t, (0, 0, length - t.shape[2], 0))

    layers = len(parts[0].kv)
    kv = [
        (
            torch.cat([pad_kv(part.kv[i][0]) for part in parts]),
            torch.cat([pad_kv(part.kv[i][1]) for part in parts]),
        )
        for i in range(layers)
    ]
    mask = torch.cat([F.pad(part.mask, (length - part.mask.shape[1], 0)) for part in parts])
    padded = any(part.padded or part.mask.shape[1] < length for part in parts)
    return _Batch(
        [seq for part in parts for seq in part.seqs],
        kv,
        mask,
        torch.cat([part.lengths for part in parts]),
        torch.cat([part.next_input for part in parts]),
        padded=padded,
    )


def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _build_cache(kv: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    cache = DynamicCache()
    for index, (keys, values) in enumerate(kv):
        cache.update(keys, values, index)
    return cache


def _resolve_dtype(folder: Path, device: str, dtype: str | None) -> torch.dtype:
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype is not None:
        if dtype not in names:
            raise UsageError(f"dtype {dtype!r}: allowed: {', '.join(names)}")
        return names[dtype]
    if not device.startswith("cuda"):
        return torch.float32
    import json

    configured = json.loads((folder / "config.json").read_text()).get("torch_dtype")
    if configured in ("float16", "bfloat16"):
        return names[configured]
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _sliding_window(config) -> int | None:
    if getattr(config, "use_sliding_window", True) is False:
        return None
    window = getattr(config, "sliding_window", None)
    return int(window) if isinstance(window, int) and window > 0 else None
