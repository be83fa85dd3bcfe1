"""What one generation is, shared by the engine, its scheduler and the API schemas: the request the
engine runs (:class:`GenerationRequest`), the events it yields (:class:`TokenEvent`, :class:`Finished`),
the serving limits (:class:`Limits`) and the one error type (:class:`LLMError`).

No torch and no transformers here: the API modules (``api_tgi``, ``api_openai``, ``api_lmi``) parse and
render with these types alone, so they are tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# TGI's names (router/src/lib.rs FinishReason); "cancelled" is internal: the client is gone, nothing
# renders it
FinishReason = Literal["length", "eos_token", "stop_sequence", "cancelled"]


@dataclass(frozen=True)
class Limits:
    """Serving bounds. ``max_total_tokens`` and ``max_batch_size`` are the stack's ``llm.maxTotalTokens`` and
    ``llm.maxBatchSize``; the others carry TGI's launcher names and defaults."""

    max_total_tokens: int = 4096  # prompt + new tokens, per request
    max_batch_size: int = 16  # requests decoded together
    max_input_tokens: int | None = None  # default: max_total_tokens - 1
    max_batch_total_tokens: int | None = (
        None  # sum over the running batch; default: no bound beyond the two above
    )
    max_batch_prefill_tokens: int | None = (
        None  # prompt tokens admitted at one step; default: max_input_tokens
    )
    max_queue: int = 128  # waiting requests; past it a request is refused as overloaded (TGI: 429)
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_client_batch_size: int = 4  # prompts in one /v1/completions request

    def __post_init__(self) -> None:
        if self.max_total_tokens < 2:
            raise ValueError(f"max_total_tokens={self.max_total_tokens}: must be at least 2")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size={self.max_batch_size}: must be at least 1")
        if not 1 <= self.input_tokens < self.max_total_tokens:
            raise ValueError(
                f"max_input_tokens={self.max_input_tokens}: must be at least 1 and less than "
                f"max_total_tokens={self.max_total_tokens}"
            )
        if self.max_batch_total_tokens is not None and self.max_batch_total_tokens < self.max_total_tokens:
            raise ValueError(
                f"max_batch_total_tokens={self.max_batch_total_tokens}: must be at least "
                f"max_total_tokens={self.max_total_tokens} (one full request must fit)"
            )
        if self.max_queue < 1:
            raise ValueError(f"max_queue={self.max_queue}: must be at least 1")

    @property
    def input_tokens(self) -> int:
        return self.max_input_tokens if self.max_input_tokens is not None else self.max_total_tokens - 1

    @property
    def prefill_tokens(self) -> int:
        return (
            self.max_batch_prefill_tokens if self.max_batch_prefill_tokens is not None else self.input_tokens
        )


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes. Greedy unless ``do_sample``; the API modules decide that flag the way
    their container does (TGI samples whenever a warper is set)."""

    max_new_tokens: int | None = None  # None: the rest of the token budget (TGI's default)
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    typical_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off (transformers' RepetitionPenaltyLogitsProcessor)
    # OpenAI's penalties, over the generated tokens: logit -= frequency x count (+ presence when count > 0)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    # "suffix" (TGI): the generation ends when its text ends with a stop sequence, which stays in the text;
    # "contains" (vLLM): ... when the newest text contains one; the text is cut before it
    stop_rule: Literal["suffix", "contains"] = "suffix"
    seed: int | None = None  # sampling only; None: a random one, reported back
    ignore_eos: bool = False
    top_n_tokens: int = 0  # the n most likely tokens at each step, reported with the chosen one
    prefill_details: bool = False  # logprobs of the prompt tokens (TGI's decoder_input_details)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt for the engine. ``add_special_tokens`` is False for a chat prompt: the chat template
    already wrote the special tokens (TGI tokenizes templated chat the same way)."""

    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)
    add_special_tokens: bool = True
    truncate: int | None = None  # keep only the last N prompt tokens


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # this token's share of the decoded text (special tokens included, as TGI streams them)
    logprob: float
    special: bool


@dataclass(frozen=True)
class TokenEvent:
    """A generated token that is not the last one."""

    token: Token
    index: int  # 1-based position among the generated tokens
    top_tokens: tuple[Token, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The end of a generation. ``token`` is the last generated token (None when cancelled before one);
    ``generated_text`` is the decoded new text without special tokens, stop sequence included (TGI)."""

    reason: FinishReason
    token: Token | None
    index: int
    generated_text: str
    input_length: int
    tokens: tuple[Token, ...]  # every generated token, the last one included
    seed: int | None = None  # set when sampling
    top_tokens: tuple[Token, ...] = ()  # of the last token
    all_top_tokens: tuple[tuple[Token, ...], ...] = ()  # per generated token, when top_n_tokens was asked
    prefill: tuple[Token, ...] = ()  # prompt tokens, when prefill_details was asked (first logprob is NaN)
    stop: str | None = None  # the stop sequence that ended it

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)


Event = TokenEvent | Finished

# Error kinds, named as TGI's error_type (router/src/infer/mod.rs InferError::error_type)
ErrorType = Literal["validation", "overloaded", "generation", "template_error", "incomplete_generation"]


class LLMError(Exception):
    """A request refused or failed, with TGI's ``error_type``; each API module turns it into its container's
    status and body. ``message`` is safe to show to the client."""

    def __init__(self, message: str, error_type: ErrorType = "validation") -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
