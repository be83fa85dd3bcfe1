"""The OpenAI-compatible routes as the TGI container serves them (router/src/server.rs ``chat_completions``,
``completions``; router/src/lib.rs ``ChatRequest``, ``CompletionRequest``; router/src/chat.rs).

- ``POST /v1/chat/completions`` (and the chat variant of ``/invocations``): ``messages`` are rendered with
  the model's chat template and tokenized without special tokens; ``chat.completion`` back, or
  ``chat.completion.chunk`` events ended by ``data:[DONE]`` when ``stream`` is true.
- ``POST /v1/completions``: ``prompt`` (a string or up to ``max_client_batch_size`` strings) ->
  ``text_completion``.

TGI's mapping, kept as is: ``temperature: 0`` is greedy and anything else samples (no temperature samples
at 1.0); ``presence_penalty`` p becomes ``repetition_penalty`` p + 2; ``top_p`` must lie in (0, 1);
``max_tokens`` (alias ``max_completion_tokens``) missing takes the rest of the token budget. The finish
reason of a chat answer is ``stop`` for EOS, else ``length`` or ``stop_sequence``; a streamed completion's
last chunk carries TGI's raw reason (``eos_token``).

Errors: non-streamed, TGI's ``{"error", "error_type"}`` with its status (a missing chat template is 422
``template_error``); streamed, a 200 whose event is ``{"error": {"message", "http_status_code": 422}}``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from aiops.inference.llm import api_tgi
from aiops.inference.llm.api_tgi import U32, U64, _Serde, error_reply, parse_model
from aiops.inference.llm.calls import ApiError, Call, ModelContext, Reply, dumps, sse
from aiops.inference.llm.generation import Event, Finished, GenerationRequest, LLMError, Token
from pydantic import Field, model_validator


class TextChunk(_Serde):
    type: Literal["text"]
    text: str


class ImageUrl(_Serde):
    url: str


class ImageChunk(_Serde):
    type: Literal["image_url"]
    image_url: ImageUrl


class Message(_Serde):
    role: str
    content: str | list[Annotated[TextChunk | ImageChunk, Field(discriminator="type")]] | None = None
    tool_calls: list[dict] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _body(self) -> Message:
        if self.content is None and self.tool_calls is None:
            raise ValueError("a message needs `content` or `tool_calls`")
        return self

    def text(self) -> str:
        """TGI's TextMessage: chunks joined, an image as ``![](url)``, tool calls as their JSON."""
        if self.content is None:
            return dumps(self.tool_calls).decode()
        if isinstance(self.content, str):
            return self.content
        return "".join(
            c.text if isinstance(c, TextChunk) else f"![]({c.image_url.url})" for c in self.content
        )


class StreamOptions(_Serde):
    include_usage: bool = False


class ChatRequest(_Serde):
    model: str | None = None
    messages: list[Message]
    frequency_penalty: float | None = None
    logit_bias: Any = None  # unused by TGI
    logprobs: bool | None = None
    top_logprobs: U32 | None = None
    max_tokens: U32 | None = None
    max_completion_tokens: U32 | None = None  # TGI: an alias of max_tokens
    n: U32 | None = None  # unused by TGI
    presence_penalty: float | None = None
    stop: list[str] | None = None
    stream: bool = False
    seed: U64 | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict] | None = None
    tool_prompt: str | None = None
    tool_choice: Any = None
    response_format: dict | None = None
    stream_options: StreamOptions = StreamOptions()

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens


class CompletionRequest(_Serde):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: U32 | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    seed: U64 | None = None
    suffix: str | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None

    @model_validator(mode="after")
    def _prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("Empty array detected. Do not use an empty array for the prompt.")
        return self


def parse_chat(body: bytes, context: ModelContext) -> TgiChat:
    return TgiChat.build(parse_model(ChatRequest, api_tgi.load_json(body)), context)


def parse_completions(body: bytes, context: ModelContext) -> TgiCompletion:
    return TgiCompletion.build(parse_model(CompletionRequest, api_tgi.load_json(body)), context)


def openai_error_event(error: LLMError) -> bytes:
    """TGI's ``InferError::into_openai_event``."""
    return sse({"error": {"message": api_tgi.error_json(error)["error"], "http_status_code": 422}})


def greedy_unless_temperature(temperature: float | None) -> tuple[bool, float | None]:
    """TGI: ``temperature: 0`` is greedy, anything else (nothing included) samples."""
    return (False, None) if temperature == 0.0 else (True, temperature)


def _validate(parameters: api_tgi.GenerateParameters, context: ModelContext, stream: bool, inputs: list[str]):
    """The generate validation; a refusal of a streamed request is TGI's 200 with one error event."""
    try:
        params = api_tgi.sampling_params(parameters, context, stream=stream)
        for text in inputs:
            api_tgi.check_inputs(text)
        return params
    except LLMError as error:
        if stream:
            raise ApiError(
                Reply(200, openai_error_event(error) + sse(b"[DONE]"), "text/event-stream"), error.message
            ) from None
        raise ApiError(error_reply(error), error.message) from None


def render_chat_prompt(messages: list[Message], context: ModelContext) -> str:
    if context.chat_template is None:  # TGI: minijinja's TemplateNotFound
        error = LLMError("Template error: template not found", "template_error")
        raise ApiError(error_reply(error), error.message)
    try:
        return context.chat_template.render([{"role": m.role, "content": m.text()} for m in messages])
    except LLMError as error:
        raise ApiError(error_reply(error), error.message) from None


def logprobs_json(tokens: tuple[Token, ...], top_tokens: tuple[tuple[Token, ...], ...]) -> dict:
    """TGI's ChatCompletionLogprobs: each token with its top alternatives."""
    content = []
    for i, token in enumerate(tokens):
        top = top_tokens[i] if i < len(top_tokens) else ()
        content.append(
            {
                "token": token.text,
                "logprob": token.logprob,
                "top_logprobs": [{"token": t.text, "logprob": t.logprob} for t in top],
            }
        )
    return {"content": content}


def chat_finish_reason(reason: str) -> str:
    """TGI's ``FinishReason::format(true)``: EOS is OpenAI's "stop"."""
    return "stop" if reason == "eos_token" else reason


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class TgiChat(Call):
    content_type = "text/event-stream"

    def __init__(
        self,
        request: GenerationRequest,
        *,
        stream: bool,
        model: str,
        context: ModelContext,
        logprobs: bool,
        include_usage: bool,
        clock=time.time,
    ) -> None:
        super().__init__([request], stream)
        self.model = model
        self.context = context
        self.logprobs = logprobs
        self.include_usage = include_usage
        self.clock = clock

    @classmethod
    def build(cls, chat: ChatRequest, context: ModelContext) -> TgiChat:
        if chat.tools is not None or chat.response_format is not None:
            error = LLMError(
                "Tool error: tools and response_format are not supported by this server", "validation"
            )
            raise ApiError(
                Reply(422, dumps({"error": error.message, "error_type": "tool_error"})), error.message
            )
        prompt = render_chat_prompt(chat.messages, context)
        do_sample, temperature = greedy_unless_temperature(chat.temperature)
        parameters = api_tgi.GenerateParameters(
            temperature=temperature,
            do_sample=do_sample,
            max_new_tokens=chat.max_new_tokens,
            repetition_penalty=None if chat.presence_penalty is None else chat.presence_penalty + 2.0,
            frequency_penalty=chat.frequency_penalty,
            top_p=chat.top_p,
            stop=chat.stop or [],
            seed=chat.seed,
            top_n_tokens=chat.top_logprobs,
            details=True,
        )
        params = _validate(parameters, context, chat.stream, [prompt])
        model = context.model_id if chat.model in (None, "tgi") else chat.model
        return cls(
            GenerationRequest(prompt, params, add_special_tokens=False),
            stream=chat.stream,
            model=model,
            context=context,
            logprobs=bool(chat.logprobs),
            include_usage=chat.stream_options.include_usage,
        )

    def _envelope(self, obj: str, choices: list, usage_value) -> dict:
        return {
            "object": obj,
            "id": "",
            "created": int(self.clock()),
            "model": self.model,
            "system_fingerprint": self.context.system_fingerprint,
            "choices": choices,
            "usage": usage_value,
        }

    def reply(self, results: list[Finished]) -> Reply:
        done = results[0]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": done.generated_text},
            "logprobs": logprobs_json(done.tokens, done.all_top_tokens) if self.logprobs else None,
            "finish_reason": chat_finish_reason(done.reason),
        }
        return Reply(
            200,
            dumps(
                self._envelope("chat.completion", [choice], usage(done.input_length, done.generated_tokens))
            ),
        )

    def refuse(self, error: LLMError) -> Reply:
        if self.stream:
            return Reply(200, self.fail(error), self.content_type)
        return error_reply(error)

    def event(self, index: int, event: Event) -> bytes:
        token = event.token
        if token is None:
            return b""
        end = event if isinstance(event, Finished) else None
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": "" if token.special else token.text},
            "logprobs": logprobs_json((token,), (event.top_tokens,)) if self.logprobs else None,
            "finish_reason": chat_finish_reason(end.reason) if end else None,
        }
        out = sse(self._envelope("chat.completion.chunk", [choice], None))
        if end and self.include_usage:
            out += sse(
                self._envelope("chat.completion.chunk", [], usage(end.input_length, end.generated_tokens))
            )
        return out

    def end(self) -> bytes:
        return sse(b"[DONE]")

    def fail(self, error: LLMError) -> bytes:
        return openai_error_event(error) + sse(b"[DONE]")


class TgiCompletion(Call):
    content_type = "text/event-stream"

    def __init__(
        self, requests: list[GenerationRequest], *, stream: bool, context: ModelContext, clock=time.time
    ) -> None:
        super().__init__(requests, stream)
        self.context = context
        self.clock = clock

    @classmethod
    def build(cls, request: CompletionRequest, context: ModelContext) -> TgiCompletion:
        if request.suffix is not None:
            text = "Suffix is not supported and can be achieved by preprocessing the prompt."
            raise ApiError(Reply(422, dumps({"error": text, "error_type": "suffix not supported"})), text)
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        limit = context.limits.max_client_batch_size
        if len(prompts) > limit:
            text = f"Number of prompts exceeds the maximum allowed batch size of {limit}"
            raise ApiError(Reply(422, dumps({"error": text, "error_type": "batch size exceeded"})), text)
        do_sample, temperature = greedy_unless_temperature(request.temperature)
        parameters = api_tgi.GenerateParameters(
            temperature=temperature,
            do_sample=do_sample,
            max_new_tokens=request.max_tokens,
            repetition_penalty=request.repetition_penalty,
            frequency_penalty=request.frequency_penalty,
            top_p=request.top_p,
            stop=request.stop or [],
            seed=request.seed,
            details=True,
        )
        params = _validate(parameters, context, request.stream, prompts)
        return cls([GenerationRequest(p, params) for p in prompts], stream=request.stream, context=context)

    def _envelope(self, choices: list, **extra) -> dict:
        return {
            "object": "text_completion",
            "id": "",
            "created": int(self.clock()),
            "model": self.context.model_id,
            "system_fingerprint": self.context.system_fingerprint,
            "choices": choices,
            **extra,
        }

    def reply(self, results: list[Finished]) -> Reply:
        choices = [
            {
                "index": i,
                "text": done.generated_text,
                "logprobs": None,
                "finish_reason": chat_finish_reason(done.reason),
            }
            for i, done in enumerate(results)
        ]
        total = usage(sum(d.input_length for d in results), sum(d.generated_tokens for d in results))
        return Reply(200, dumps(self._envelope(choices, usage=total)))

    def refuse(self, error: LLMError) -> Reply:
        if self.stream:
            return Reply(200, self.fail(error), self.content_type)
        return error_reply(error)

    def event(self, index: int, event: Event) -> bytes:
        if event.token is None:
            return b""
        if isinstance(event, Finished):  # TGI's CompletionFinal: the raw finish reason and the usage
            choice = {
                "finish_reason": event.reason,
                "index": index,
                "logprobs": None,
                "text": event.token.text,
            }
            return sse(self._envelope([choice], usage=usage(event.input_length, event.generated_tokens)))
        choice = {"finish_reason": "", "index": index, "logprobs": None, "text": event.token.text}
        return sse(self._envelope([choice]))

    def end(self) -> bytes:
        return sse(b"[DONE]")

    def fail(self, error: LLMError) -> bytes:
        return openai_error_event(error)
