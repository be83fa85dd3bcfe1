"""LMI's API (djl-serving's ``djl_python/lmi_vllm``: the vLLM rolling batch, the stack's default), on
``POST /invocations``:

- ``{"inputs", "parameters", "stream"}`` (LMI's schema, which LMI maps onto a vLLM completion):
  ``{"generated_text"}`` (with ``details`` when asked), or JSON lines
  ``{"index", "token": {"id", "text", "logprob"}, "generated_text": null, "details": null}`` whose last line
  carries ``generated_text`` when ``stream`` is true. Defaults: ``max_new_tokens`` 30,
  ``return_full_text`` false, sampling at temperature 1 unless ``do_sample: false`` (greedy) or a
  ``temperature`` is given (0: greedy), vLLM's stop strings (cut from the text);
- ``{"messages", ...}``: a vLLM chat completion (``chat.completion``; streamed as JSON lines of
  ``chat.completion.chunk``, LMI's framing of vLLM's events); the template renders as transformers does;
- ``{"prompt", ...}``: a vLLM completion (``text_completion``).

Errors have djl-serving's shape ``{"code", "error"}`` with the code as the HTTP status: 424 when the body
cannot be parsed ("Input parsing failed: ..."), 400 for what vLLM refuses (the context length).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, TypeVar

import orjson
from aiops.inference.llm.api_tgi import describe
from aiops.inference.llm.calls import ApiError, Call, ModelContext, Reply, dumps
from aiops.inference.llm.generation import Event, Finished, GenerationRequest, LLMError, SamplingParams, Token
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

JSONLINES = "application/jsonlines"
STATUS = {"validation": 400, "overloaded": 503, "generation": 424, "template_error": 400}


def error_reply(code: int, message: str) -> Reply:
    return Reply(code, dumps({"code": code, "error": message}))


def parsing_failed(message: str) -> ApiError:
    return ApiError(error_reply(424, f"Input parsing failed: {message}"), message)


class _Vllm(BaseModel):
    """vLLM's request models: pydantic's lax types, unknown fields allowed (vLLM logs and ignores them)."""

    model_config = ConfigDict(extra="allow")


class VllmSampling(_Vllm):
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    stream: bool = False

    def params(self) -> SamplingParams:
        temperature = 1.0 if self.temperature is None else self.temperature
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        greedy = temperature == 0.0
        return SamplingParams(
            max_new_tokens=self.max_tokens,
            do_sample=not greedy,
            temperature=1.0 if greedy else temperature,
            top_k=max(self.top_k or 0, 0),
            top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            stop=stop,
            stop_rule="contains",
            seed=self.seed if not greedy else None,
            ignore_eos=self.ignore_eos,
        )


class ChatMessage(_Vllm):
    role: str
    content: str | list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class VllmChatRequest(VllmSampling):
    model: str | None = None
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _alias(self) -> VllmChatRequest:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class VllmCompletionRequest(VllmSampling):
    model: str | None = None
    prompt: str
    echo: bool = False


VllmModel = TypeVar("VllmModel", bound=_Vllm)


def _validate(model: type[VllmModel], value: Any) -> VllmModel:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise parsing_failed(describe(exc)) from None


def parse_invocations(body: bytes, context: ModelContext) -> Call:
    """LMI's ``/invocations``: the payload's keys pick the API, as ``VLLMHandler.preprocess_request`` does."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise parsing_failed(f"the body is not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise parsing_failed("the body must be a JSON object")
    if "prompt" in payload:
        return LmiCompletion.build(_validate(VllmCompletionRequest, payload), context)
    if "inputs" in payload:
        return LmiGenerate.build(payload, context)
    if "messages" in payload:
        return LmiChat.build(_validate(VllmChatRequest, payload), context)
    raise parsing_failed("invalid payload. must contain prompt, inputs, or messages")


def refusal(error: LLMError, context: ModelContext) -> Reply:
    """A budget refusal is vLLM's 400 (opening with vLLM's sentence, then the engine's numbers)."""
    if error.error_type == "validation":
        return error_reply(
            400,
            f"This model's maximum context length is {context.limits.max_total_tokens} "
            f"tokens: {error.message}",
        )
    return error_reply(STATUS.get(error.error_type, 500), error.message)


def finish_reason(reason: str) -> str:
    """vLLM's: EOS and stop strings are "stop"."""
    return "length" if reason == "length" else "stop"


class _LmiCall(Call):
    content_type = JSONLINES

    def __init__(self, requests: list[GenerationRequest], *, stream: bool, context: ModelContext) -> None:
        super().__init__(requests, stream)
        self.context = context

    def refuse(self, error: LLMError) -> Reply:
        return refusal(error, self.context)

    def fail(self, error: LLMError) -> bytes:
        return dumps({"code": STATUS.get(error.error_type, 500), "error": error.message}) + b"\n"


class LmiGenerate(_LmiCall):
    def __init__(
        self,
        request: GenerationRequest,
        *,
        stream: bool,
        context: ModelContext,
        details: bool,
        return_full_text: bool,
    ) -> None:
        super().__init__([request], stream=stream, context=context)
        self.details = details
        self.return_full_text = return_full_text
        self.texts: list[str] = []

    @classmethod
    def build(cls, payload: dict, context: ModelContext) -> LmiGenerate:
        inputs, parameters = payload.get("inputs"), payload.get("parameters", {})
        if not isinstance(inputs, str):
            raise parsing_failed(
                f"The 'inputs' field must be a string. Received type {type(inputs).__name__}"
            )
        if not isinstance(parameters, dict):
            raise parsing_failed("'parameters' must be provided as an object of key-value pairs")
        parameters = dict(parameters)
        do_sample = parameters.pop("do_sample", None)
        sampling = {
            "max_tokens": parameters.pop("max_new_tokens", 30),
            "ignore_eos": parameters.pop("ignore_eos_token", False),
            "stream": payload.get("stream", False),
            **parameters,
        }
        if do_sample is not None and not do_sample:  # LMI: do_sample false is greedy
            sampling["temperature"] = 0.0
        request = _validate(VllmSampling, sampling)
        if not inputs:
            raise parsing_failed("Invalid request payload. The 'inputs' field does not contain any content.")
        truncate = parameters.get("truncate")
        if truncate is not None and (type(truncate) is not int or truncate <= 0):
            raise parsing_failed(f"'truncate' must be a positive integer. Received {truncate!r:.40}")
        generation = GenerationRequest(inputs, request.params(), truncate=truncate)
        return cls(
            generation,
            stream=request.stream,
            context=context,
            details=bool(parameters.get("details")),
            return_full_text=bool(parameters.get("return_full_text")),
        )

    def _text(self, done: Finished) -> str:
        return (self.requests[0].prompt if self.return_full_text else "") + done.generated_text

    def reply(self, results: list[Finished]) -> Reply:
        done = results[0]
        answer: dict = {"generated_text": self._text(done)}
        if self.details:
            answer["details"] = {
                "finish_reason": finish_reason(done.reason),
                "generated_tokens": done.generated_tokens,
                "seed": done.seed,
                "prefill": [],
                "tokens": [_token(t) for t in done.tokens],
            }
        return Reply(200, dumps(answer))

    def event(self, index: int, event: Event) -> bytes:
        if event.token is None:
            return b""
        line: dict = {"index": 0, "token": _token(event.token), "generated_text": None, "details": None}
        if isinstance(event, Finished):
            line["generated_text"] = self._text(event)
            if self.details:
                line["details"] = {
                    "finish_reason": finish_reason(event.reason),
                    "seed": event.seed,
                    "generated_tokens": event.generated_tokens,
                    "input_length": event.input_length,
                }
        return dumps(line) + b"\n"


def _token(token: Token) -> dict:
    return {"id": token.id, "text": token.text, "logprob": token.logprob}


class LmiChat(_LmiCall):
    def __init__(
        self, request: GenerationRequest, *, stream: bool, context: ModelContext, model: str, clock=time.time
    ) -> None:
        super().__init__([request], stream=stream, context=context)
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.clock = clock

    @classmethod
    def build(cls, chat: VllmChatRequest, context: ModelContext) -> LmiChat:
        if context.chat_template is None:
            message = (
                "As of transformers v4.44, default chat template is no longer allowed, so you must "
                "provide a chat template if the tokenizer does not define one."
            )
            raise ApiError(error_reply(400, message), message)
        try:
            prompt = context.chat_template.render(
                [{"role": m.role, "content": m.text()} for m in chat.messages]
            )
        except LLMError as error:
            raise ApiError(error_reply(400, error.message), error.message) from None
        generation = GenerationRequest(prompt, chat.params(), add_special_tokens=False)
        return cls(generation, stream=chat.stream, context=context, model=chat.model or context.model_id)

    def _envelope(self, obj: str, choices: list, **extra) -> dict:
        return {
            "id": self.id,
            "object": obj,
            "created": int(self.clock()),
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def reply(self, results: list[Finished]) -> Reply:
        done = results[0]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": done.generated_text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": finish_reason(done.reason),
            "stop_reason": done.stop,
        }
        usage = {
            "prompt_tokens": done.input_length,
            "total_tokens": done.input_length + done.generated_tokens,
            "completion_tokens": done.generated_tokens,
        }
        return Reply(200, dumps(self._envelope("chat.completion", [choice], usage=usage)))

    def event(self, index: int, event: Event) -> bytes:
        if event.token is None:
            return b""
        out = b""
        if event.index == 1:  # vLLM opens with the role and no content
            first = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            out += dumps(self._envelope("chat.completion.chunk", [first])) + b"\n"
        end = event if isinstance(event, Finished) else None
        text = event.token.text
        if end and end.stop and end.reason == "stop_sequence":
            text = text[: max(text.find(end.stop), 0)] if end.stop in text else text
        choice = {
            "index": 0,
            "delta": {"content": text},
            "logprobs": None,
            "finish_reason": finish_reason(end.reason) if end else None,
        }
        if end:
            choice["stop_reason"] = end.stop
        return out + dumps(self._envelope("chat.completion.chunk", [choice])) + b"\n"


class LmiCompletion(_LmiCall):
    def __init__(
        self,
        request: GenerationRequest,
        *,
        stream: bool,
        context: ModelContext,
        model: str,
        echo: bool,
        clock=time.time,
    ) -> None:
        super().__init__([request], stream=stream, context=context)
        self.model = model
        self.echo = echo
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.clock = clock

    @classmethod
    def build(cls, request: VllmCompletionRequest, context: ModelContext) -> LmiCompletion:
        generation = GenerationRequest(request.prompt, request.params())
        return cls(
            generation,
            stream=request.stream,
            context=context,
            model=request.model or context.model_id,
            echo=request.echo,
        )

    def reply(self, results: list[Finished]) -> Reply:
        done = results[0]
        text = (self.requests[0].prompt if self.echo else "") + done.generated_text
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason(done.reason),
            "stop_reason": done.stop,
        }
        usage = {
            "prompt_tokens": done.input_length,
            "total_tokens": done.input_length + done.generated_tokens,
            "completion_tokens": done.generated_tokens,
        }
        return Reply(
            200,
            dumps(
                {
                    "id": self.id,
                    "object": "text_completion",
                    "created": int(self.clock()),
                    "model": self.model,
                    "choices": [choice],
                    "usage": usage,
                }
            ),
        )

    def event(self, index: int, event: Event) -> bytes:
        if event.token is None:
            return b""
        end = event if isinstance(event, Finished) else None
        choice = {
            "index": 0,
            "text": event.token.text,
            "logprobs": None,
            "finish_reason": finish_reason(end.reason) if end else None,
            "stop_reason": end.stop if end else None,
        }
        return (
            dumps(
                {
                    "id": self.id,
                    "object": "text_completion",
                    "created": int(self.clock()),
                    "model": self.model,
                    "choices": [choice],
                }
            )
            + b"\n"
        )
