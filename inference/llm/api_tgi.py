"""TGI's generate API (text-generation-inference's router, router/src/{lib,server,validation,sagemaker}.rs):
request schemas in, response bytes out.

Routes and their shapes:
- ``POST /`` (what ``text_generation.Client`` calls) and the generate variant of ``POST /invocations``:
  ``{"inputs", "parameters", "stream"}`` -> ``[{"generated_text", "details"?}]``, or server-sent events
  when ``stream`` is true; ``return_full_text`` defaults to true for a model with no pipeline tag;
- ``POST /generate`` -> ``{"generated_text", "details"?}``; ``POST /generate_stream`` -> events;
  ``return_full_text`` defaults to false there.

Defaults are TGI's serde defaults: with no ``parameters`` at all the request samples (``do_sample`` true);
with ``parameters`` it is greedy unless ``do_sample`` or a warper (temperature != 1, top_k, top_p < 1,
typical_p < 1) is set. A missing ``max_new_tokens`` takes the rest of ``max_total_tokens``.

Errors: a body that is not JSON is 400 and one of the wrong shape 422, with axum's plain-text messages;
a refused parameter or budget is 422 ``{"error": "Input validation error: ...", "error_type": "validation"}``;
an overloaded server 429 ``{"error": "Model is overloaded", "error_type": "overloaded"}``; a failure while
generating 424 ``"error_type": "generation"``. A streamed request is answered 200 and its refusal comes as
one event ``data:{"error", "error_type"}``, as TGI's stream does.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from aiops.inference.llm.calls import ApiError, Call, ModelContext, Reply, dumps, sse
from aiops.inference.llm.generation import (
    Event,
    Finished,
    GenerationRequest,
    LLMError,
    SamplingParams,
    Token,
    TokenEvent,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

U32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
U64 = Annotated[int, Field(ge=0, le=2**64 - 1)]
I32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]

# statuses of TGI's InferError (router/src/server.rs)
STATUS = {
    "validation": 422,
    "overloaded": 429,
    "generation": 424,
    "template_error": 422,
    "incomplete_generation": 500,
}


class _Serde(BaseModel):
    """serde's behaviour: unknown fields ignored, no coercion (a string is no number, 1 is no bool)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


SerdeModel = TypeVar("SerdeModel", bound=_Serde)


class Grammar(_Serde):
    type: str
    value: Any = None


class GenerateParameters(_Serde):
    best_of: U64 | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: I32 | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: U32 | None = None
    return_full_text: bool | None = None
    stop: list[str] = []
    truncate: U64 | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: U64 | None = None
    top_n_tokens: U32 | None = None
    grammar: Grammar | None = None
    adapter_id: str | None = None


def _default_parameters() -> GenerateParameters:
    return GenerateParameters(do_sample=True)  # TGI's default_parameters(): no parameters at all samples


class GenerateRequest(_Serde):
    inputs: str
    parameters: GenerateParameters = Field(default_factory=_default_parameters)


class CompatGenerateRequest(GenerateRequest):
    stream: bool = False


# ---------------------------------------------------------------------- parsing
def load_json(body: bytes) -> Any:
    """The body as JSON, or axum's 400 (not JSON, invalid UTF-8)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            Reply(
                400, f"Failed to parse the request body as JSON: {exc}".encode(), "text/plain; charset=utf-8"
            ),
            "the body is not JSON",
        ) from None


def data_error(detail: str) -> ApiError:
    """axum's 422 for JSON of the wrong shape."""
    text = f"Failed to deserialize the JSON body into the target type: {detail}"
    return ApiError(Reply(422, text.encode(), "text/plain; charset=utf-8"), text)


def describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def parse_model(model: type[SerdeModel], value: Any) -> SerdeModel:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise data_error(describe(exc)) from None


def parse_compat(body: bytes, context: ModelContext) -> TgiGenerate:
    """``POST /``: text_generation.Client's route."""
    return TgiGenerate.build(parse_model(CompatGenerateRequest, load_json(body)), context, compat=True)


def parse_generate(body: bytes, context: ModelContext, *, stream: bool) -> TgiGenerate:
    """``POST /generate`` (stream False) and ``POST /generate_stream`` (stream True)."""
    request = parse_model(GenerateRequest, load_json(body))
    return TgiGenerate.build(request, context, compat=False, stream=stream)


def parse_invocations(body: bytes, context: ModelContext) -> Call:
    """``POST /invocations``: TGI's SagemakerRequest, an untagged union tried in order: generate, chat,
    completion."""
    from aiops.inference.llm import api_openai

    value = load_json(body)
    for model, build in (
        (CompatGenerateRequest, lambda r: TgiGenerate.build(r, context, compat=True)),
        (api_openai.ChatRequest, lambda r: api_openai.TgiChat.build(r, context)),
        (api_openai.CompletionRequest, lambda r: api_openai.TgiCompletion.build(r, context)),
    ):
        try:
            request = model.model_validate(value)
        except ValidationError:
            continue
        return build(request)
    raise data_error("data did not match any variant of untagged enum SagemakerRequest")


# ---------------------------------------------------------------------- validation (router/src/validation.rs)
def validation_error(message: str) -> LLMError:
    return LLMError(message, "validation")


def sampling_params(p: GenerateParameters, context: ModelContext, *, stream: bool) -> SamplingParams:
    """TGI's ``Validation::validate`` of the parameters, in its order, into the engine's SamplingParams;
    LLMError("validation") with TGI's message."""
    limits = context.limits
    best_of = 1 if p.best_of is None else p.best_of
    if stream and best_of != 1:
        raise validation_error("`best_of` != 1 is not supported when streaming tokens")
    if best_of > 1:  # this server keeps TGI's max_best_of at 1
        raise validation_error("`best_of` != 1 is not allowed for this endpoint")
    if stream and p.decoder_input_details:
        raise validation_error("`decoder_input_details` == true is not supported when streaming tokens")
    temperature = 1.0 if p.temperature is None else p.temperature
    if temperature <= 0:
        raise validation_error("`temperature` must be strictly positive")
    repetition_penalty = 1.0 if p.repetition_penalty is None else p.repetition_penalty
    if repetition_penalty <= 0:
        raise validation_error("`repetition_penalty` must be strictly positive")
    frequency_penalty = 0.0 if p.frequency_penalty is None else p.frequency_penalty
    if not -2.0 <= frequency_penalty <= 2.0:
        raise validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.top_p is not None and not 0.0 < p.top_p < 1.0:
        raise validation_error("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0.0 < p.typical_p < 1.0:
        raise validation_error("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise validation_error("`top_k` must be strictly positive")
    if p.max_new_tokens == 0:
        raise validation_error("`max_new_tokens` must be strictly positive")
    if len(p.stop) > limits.max_stop_sequences:
        raise validation_error(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p.stop)}"
        )
    if p.top_n_tokens is not None and p.top_n_tokens > limits.max_top_n_tokens:
        raise validation_error(
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {p.top_n_tokens}"
        )
    if p.truncate is not None and not 0 < p.truncate <= limits.input_tokens:
        raise validation_error(
            f"`truncate` must be strictly positive and less than {limits.input_tokens}. Given: {p.truncate}"
        )
    if p.grammar is not None:
        raise validation_error("grammar is not supported")
    if p.watermark:
        raise validation_error("`watermark` is not supported by this server")
    if p.adapter_id is not None:
        raise validation_error(f"adapter `{p.adapter_id}` is not loaded: this server serves no LoRA adapters")
    # server/text_generation_server/utils/tokens.py NextTokenChooser: any warper turns sampling on
    has_warpers = (
        temperature != 1.0
        or (p.top_k is not None and p.top_k != 0)
        or (p.top_p is not None and p.top_p < 1.0)
        or (p.typical_p is not None and p.typical_p < 1.0)
    )
    do_sample = p.do_sample or has_warpers
    return SamplingParams(
        max_new_tokens=p.max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=p.top_k or 0,
        top_p=1.0 if p.top_p is None else p.top_p,
        typical_p=1.0 if p.typical_p is None else p.typical_p,
        repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty,
        stop=tuple(p.stop),
        seed=p.seed if do_sample else None,
        top_n_tokens=p.top_n_tokens or 0,
        prefill_details=p.decoder_input_details,
    )


def check_inputs(inputs: str) -> None:
    """TGI refuses an empty text before tokenizing it (a tokenizer may still give it a BOS token)."""
    if not inputs:
        raise validation_error("`inputs` cannot be empty")


# ---------------------------------------------------------------------- rendering
def token_json(token: Token) -> dict:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def prefill_json(token: Token) -> dict:
    return {"id": token.id, "text": token.text, "logprob": token.logprob}  # NaN -> null, as serde writes it


def error_json(error: LLMError) -> dict:
    """TGI's ErrorResponse: the message as InferError displays it."""
    prefix = "Input validation error: " if error.error_type == "validation" else ""
    return {"error": prefix + error.message, "error_type": error.error_type}


def error_reply(error: LLMError) -> Reply:
    return Reply(STATUS.get(error.error_type, 500), dumps(error_json(error)))


class TgiGenerate(Call):
    content_type = "text/event-stream"

    def __init__(
        self, request: GenerationRequest, *, stream: bool, compat: bool, return_full_text: bool, details: bool
    ) -> None:
        super().__init__([request], stream)
        self.compat = compat
        self.return_full_text = return_full_text
        self.details = details
        self.prompt = request.prompt

    @classmethod
    def build(
        cls, request: GenerateRequest, context: ModelContext, *, compat: bool, stream: bool | None = None
    ) -> TgiGenerate:
        if stream is None:  # the compat route's body says; the /generate routes are fixed
            stream = isinstance(request, CompatGenerateRequest) and request.stream
        p = request.parameters
        try:
            params = sampling_params(p, context, stream=stream)
            check_inputs(request.inputs)
        except LLMError as error:
            reply = Reply(200, sse(error_json(error)), cls.content_type) if stream else error_reply(error)
            raise ApiError(reply, error.message) from None
        full = (
            p.return_full_text
            if p.return_full_text is not None
            else (compat and context.compat_return_full_text)
        )
        details = p.details or (p.decoder_input_details and not stream)
        generation = GenerationRequest(request.inputs, params, truncate=p.truncate)
        return cls(generation, stream=stream, compat=compat, return_full_text=full, details=details)

    def text(self, finished: Finished) -> str:
        return self.prompt + finished.generated_text if self.return_full_text else finished.generated_text

    def reply(self, results: list[Finished]) -> Reply:
        finished = results[0]
        answer: dict = {"generated_text": self.text(finished)}
        if self.details:
            details: dict[str, Any] = {
                "finish_reason": finished.reason,
                "generated_tokens": finished.generated_tokens,
                "seed": finished.seed,
                "prefill": [prefill_json(t) for t in finished.prefill],
                "tokens": [token_json(t) for t in finished.tokens],
            }
            if finished.all_top_tokens:
                details["top_tokens"] = [[token_json(t) for t in step] for step in finished.all_top_tokens]
            answer["details"] = details
        headers = (
            ("x-prompt-tokens", str(finished.input_length)),
            ("x-generated-tokens", str(finished.generated_tokens)),
        )
        return Reply(200, dumps([answer] if self.compat else answer), headers=headers)

    def refuse(self, error: LLMError) -> Reply:
        if self.stream:  # TGI has already answered 200: the refusal is the stream's one event
            return Reply(200, self.fail(error), self.content_type)
        return error_reply(error)

    def event(self, index: int, event: Event) -> bytes:
        if event.token is None:  # cancelled before its first token: nothing to say
            return b""
        answer: dict = {"index": event.index, "token": token_json(event.token)}
        if event.top_tokens:
            answer["top_tokens"] = [token_json(t) for t in event.top_tokens]
        if isinstance(event, TokenEvent):
            answer.update(generated_text=None, details=None)
        else:
            answer["generated_text"] = self.text(event)
            answer["details"] = (
                {
                    "finish_reason": event.reason,
                    "generated_tokens": event.generated_tokens,
                    "seed": event.seed,
                    "input_length": event.input_length,
                }
                if self.details
                else None
            )
        return sse(answer)

    def fail(self, error: LLMError) -> bytes:
        return sse(error_json(error))


def info(context: ModelContext) -> dict:
    """``GET /info`` (router/src/lib.rs ``Info``)."""
    limits = context.limits
    return {
        "model_id": context.model_id,
        "model_sha": None,
        "model_pipeline_tag": context.pipeline_tag,
        "max_concurrent_requests": limits.max_batch_size + limits.max_queue,
        "max_best_of": 1,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_input_tokens": limits.input_tokens,
        "max_total_tokens": limits.max_total_tokens,
        "validation_workers": 1,
        "max_client_batch_size": limits.max_client_batch_size,
        "router": "text-generation-router",
        "version": context.version,
        "sha": None,
        "docker_label": None,
    }
