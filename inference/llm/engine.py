"""The LLM engine: a Hugging Face causal LM decoding many requests together (continuous batching).

Requests are admitted into one running batch and decoded step by step together: at every step boundary
the :class:`~aiops.inference.llm.scheduler.Scheduler` says which sequences leave (finished, or cancelled
because their client went away) and which waiting ones join; the joining prompts are prefilled together,
left-padded, in groups of similar lengths (one forward per group; each one's first token is out after it),
their KV cache is stacked onto the batch's, and one decode step then runs every sequence at once.

Correctness: left padding with an attention mask and per-row position ids gives each row the computation it
would get alone, so greedy output equals ``model.generate(do_sample=False)`` token for token, batched or
not (to float rounding: fp32 on the CPU in the tests; half precision may flip near-ties, as in any batched
server). Each sampled request draws from its own ``torch.Generator``, so a seed reproduces it whatever its
batch companions (``sampling.py``). The stopping rules and the incremental detokenizer are TGI's
(server/text_generation_server: ``StoppingCriteria``, ``Model.decode_token``); the batch's tensors are
``kv_cache.py``'s.

Threads: :meth:`LLMEngine.submit` may be called from any thread (it tokenizes there); one thread runs the
steps, either the engine's own (:meth:`LLMEngine.start`) or the caller's (:meth:`LLMEngine.step`, what the
tests use to interleave requests deterministically). Each request's events arrive on its
:class:`Generation`, which the HTTP layer drains (``notify`` wakes an event loop from the engine thread).
"""

from __future__ import annotations

import inspect
import itertools
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from aiops.inference.llm import kv_cache
from aiops.inference.llm.folder import check_causal_lm_folder
from aiops.inference.llm.generation import (
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    Limits,
    LLMError,
    TokenEvent,
)
from aiops.inference.llm.kv_cache import Batch
from aiops.inference.llm.sampling import Choice, TokenChooser
from aiops.inference.llm.scheduler import Scheduler
from aiops.inference.llm.sequence import Generation, Sequence

from aiops.errors import UsageError
from aiops.extras import missing_modules, require_extra

__all__ = ["Generation", "LLMEngine", "check_causal_lm_folder"]


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
        # A padded batch's decode mask is built here as a 4D additive mask (kv_cache.additive_mask); flash
        # attention takes the 2D mask instead
        self._own_mask = "flash" not in str(getattr(model.config, "_attn_implementation", ""))
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self._chooser = TokenChooser(tokenizer)
        self._text = _plain_decoder(tokenizer)
        self.special_ids = self._chooser.special_ids
        # The joining prompts are prefilled in groups of similar lengths, each group padding at most this
        # fraction of its real tokens (kv_cache.prefill_groups): on a CPU a forward costs its tokens, padding
        # included (16 prompts of 8 to 120 tokens in one forward: 1.4x the CPU time of their separate
        # prefills with an 18M model; grouped at 0.1: the same); on a GPU one launch for all is cheapest
        self.prefill_padding: float | None = None if self.device.type == "cuda" else 0.1
        # what fills a shorter prompt's left in a joint prefill: any id will do, it is masked out
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else next(iter(self.eos_ids), 0)
        self._lock = threading.Condition()
        self._seqs: dict[int, Sequence] = {}
        self._batch: Batch | None = None
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
    def submit(
        self,
        request: GenerationRequest,
        notify: Callable[[], None] | None = None,
        deliver: Callable[[Generation, Event | LLMError], None] | None = None,
    ) -> Generation:
        """Tokenize and queue a request (in the caller's thread). Raises LLMError: "validation" over the token
        budget, "overloaded" when the queue is full. ``notify`` and ``deliver``: :class:`Generation`'s."""
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
            handle = Generation(self.cancel, seq_id, len(ids), entry.max_new_tokens, notify, deliver)
            seq = Sequence(
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
        """One step boundary and one decode step: sequences leave, the waiting ones the scheduler admits join
        (prefilled in groups of similar lengths, each group's first tokens out as it ends), then every running
        sequence gets its next token. False when there was nothing to do."""
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
                if plan.leave and self._batch is not None:
                    leaving = set(plan.leave)
                    keep = [row for row, seq in enumerate(self._batch.seqs) if seq.seq_id not in leaving]
                    self._batch = kv_cache.select(self._batch, keep)
                lengths = [seq.input_length for seq in joining]
                fresh = [
                    part
                    for group in kv_cache.prefill_groups(lengths, self.prefill_padding)
                    if (part := self._prefill([joining[i] for i in group])) is not None
                ]
                if fresh:
                    self._batch = kv_cache.merge(([self._batch] if self._batch else []) + fresh)
                if self._batch is not None:
                    self._decode(self._batch)
        except Exception as exc:  # noqa: BLE001 - every running request learns why, the engine carries on
            self._fail_all(exc)
        return True

    # ------------------------------------------------------------------ model calls
    def _prefill(self, seqs: list[Sequence]) -> Batch | None:
        """Prompts in one forward, left-padded to the longest (each row computes what it would alone, as
        ``generate`` runs a padded batch); their first tokens, out as soon as it ends. The rows whose first
        token did not end them, or None."""
        from transformers import DynamicCache

        input_ids, mask, positions = kv_cache.left_padded(
            [seq.ids for seq in seqs], self._pad_id, self.device
        )
        width = input_ids.shape[1]
        details = any(seq.params.prefill_details for seq in seqs)
        kwargs = {}
        if self._keep_last and not details:
            kwargs[self._keep_last] = 1
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=DynamicCache(),
            use_cache=True,
            **kwargs,
        )
        for row, seq in enumerate(seqs):
            if seq.params.prefill_details:
                seq.prefill = self._chooser.prompt_tokens(
                    seq.ids, out.logits[row, width - seq.input_length :]
                )
            if seq.params.do_sample:
                seq.generator = torch.Generator(device=self.device)
                seq.generator.manual_seed(seq.seed)
        choices = self._chooser.choose(seqs, out.logits[:, -1, :])
        batch = Batch(
            seqs,
            kv_cache.cache_layers(out.past_key_values),
            mask,
            torch.tensor([seq.input_length for seq in seqs], device=self.device),
            torch.tensor([choice.token_id for choice in choices], device=self.device),
            padded=bool((mask == 0).any()),
        )
        ended = [self._advance(seq, choice) for seq, choice in zip(seqs, choices, strict=True)]
        return kv_cache.select(batch, [row for row, done in enumerate(ended) if not done])

    def _decode(self, batch: Batch) -> None:
        if batch.cache is None:
            batch.cache = kv_cache.build_cache(batch.kv)
        mask = F.pad(batch.mask, (0, 1), value=1)
        # no padding: no mask, as for a lone sequence (its one query attends to every cached column); the
        # model then skips building one
        attention = None
        if batch.padded:
            attention = kv_cache.additive_mask(mask, batch.kv[0][0].dtype) if self._own_mask else mask
        out = self.model(
            input_ids=batch.next_input[:, None],
            attention_mask=attention,
            position_ids=batch.lengths[:, None],
            past_key_values=batch.cache,
            use_cache=True,
        )
        batch.mask = mask
        batch.lengths = batch.lengths + 1
        batch.kv = kv_cache.cache_layers(batch.cache)
        choices = self._chooser.choose(batch.seqs, out.logits[:, -1, :])
        batch.next_input = torch.tensor([choice.token_id for choice in choices], device=self.device)
        for seq, choice in zip(batch.seqs, choices, strict=True):
            self._advance(seq, choice)

    # ------------------------------------------------------------------ stopping and events
    def _advance(self, seq: Sequence, choice: Choice) -> bool:
        """Record the chosen token, apply TGI's stopping criteria, emit the event; True when it finished."""
        if seq.done:
            return True
        seq.ids.append(choice.token_id)
        text, seq.prefix_offset, seq.read_offset = self._decode_token(
            seq.ids, seq.prefix_offset, seq.read_offset
        )
        token = self._chooser.token(choice.token_id, choice.logprob, text)
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

    def _stop_reason(self, seq: Sequence, token_id: int, text: str) -> FinishReason | None:
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

    def _end(self, seq: Sequence, reason: FinishReason) -> None:
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
        prefix_text = self._text(ids[prefix_offset:read_offset], skip_special_tokens)
        new_text = self._text(ids[prefix_offset:], skip_special_tokens)
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


def _plain_decoder(tokenizer) -> Callable[[list[int], bool], str]:
    """``tokenizer.decode(ids, skip_special_tokens=...)``, straight to the Rust tokenizer when the tokenizer
    is a plain ``PreTrainedTokenizerFast`` (what its ``decode`` does, without the per-call conversions that
    cost more than the decode of a few tokens); any other tokenizer's own ``decode``."""
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

    kind = type(tokenizer)
    if (
        isinstance(tokenizer, PreTrainedTokenizerFast)
        and kind.decode is PreTrainedTokenizerBase.decode
        and kind._decode is PreTrainedTokenizerFast._decode
    ):
        backend = tokenizer.backend_tokenizer
        if tokenizer.clean_up_tokenization_spaces:
            clean = tokenizer.clean_up_tokenization
            return lambda ids, skip: clean(backend.decode(ids, skip_special_tokens=skip))
        return lambda ids, skip: backend.decode(ids, skip_special_tokens=skip)
    return lambda ids, skip: tokenizer.decode(ids, skip_special_tokens=skip)


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
