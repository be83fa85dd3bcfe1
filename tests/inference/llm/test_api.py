"""The containers' APIs over the real engine, checked with the real clients' own types: `text_generation`'s
pydantic models and SSE parsing for TGI, `openai`'s models for the OpenAI routes and LMI's chat.

Each test builds the body a client sends, parses it as the server would (`protocols.parse`), runs it on the
engine (`calls.respond`: the HTTP layer's loop, blocking) and reads the answer back as the client does."""

from __future__ import annotations

import json

import pytest
import torch
from aiops.inference.llm import api_tgi, protocols
from aiops.inference.llm.calls import ApiError, Reply, respond
from aiops.inference.llm.engine import LLMEngine
from aiops.inference.llm.generation import Limits
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from text_generation.errors import OverloadedError, ValidationError, parse_error
from text_generation.types import Parameters, Request, Response, StreamResponse

PROMPT = "def parse(text):\n    "
MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Parse a date."}]


@pytest.fixture(scope="module")
def engine(tiny_llm):
    model, tokenizer = tiny_llm
    engine = LLMEngine(model, tokenizer, Limits(max_total_tokens=128, max_batch_size=4, max_queue=8)).start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def contexts(tiny_llm_dir):
    limits = Limits(max_total_tokens=128, max_batch_size=4, max_queue=8)
    return {
        name: protocols.model_context(tiny_llm_dir, name, limits, model_id="tiny") for name in ("tgi", "lmi")
    }


def greedy_text(tiny_llm, prompt: str, max_new_tokens: int, *, special_tokens: bool = True) -> str:
    model, tokenizer = tiny_llm
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=special_tokens)
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def call(container: str, path: str, body, contexts, engine) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        parsed = protocols.parse(container, path, raw, contexts[container])
    except ApiError as error:
        return error.reply
    return respond(parsed, engine)


def sse_events(reply: Reply) -> list[dict]:
    """text_generation.Client.generate_stream's own reading of the byte stream."""
    assert reply.status == 200 and reply.content_type == "text/event-stream"
    events = []
    for line in reply.body.decode().split("\n"):
        if line.startswith("data:"):
            payload = line.lstrip("data:").rstrip("\n")  # noqa: B005 - the client's own parsing
            events.append("[DONE]" if payload.strip() == "[DONE]" else json.loads(payload))
    return events


# ---------------------------------------------------------------------- TGI generate
def test_tgi_client_generate_is_greedy_parity(tiny_llm, contexts, engine):
    body = Request(
        inputs=PROMPT, stream=False, parameters=Parameters(details=True, max_new_tokens=12)
    ).model_dump()
    reply = call("tgi", "/", body, contexts, engine)
    assert reply.status == 200
    response = Response(**json.loads(reply.body)[0])  # what text_generation.Client.generate returns
    assert response.generated_text == greedy_text(tiny_llm, PROMPT, 12)
    assert response.details.generated_tokens == 12 and response.details.finish_reason == "length"
    assert response.details.seed is None and response.details.prefill == []


@pytest.mark.parametrize(
    ("path", "parameters", "full_text", "wrapped"),
    [
        (
            "/",
            {"max_new_tokens": 6},
            True,
            True,
        ),  # a local model has no pipeline tag: TGI returns the prompt too
        ("/", {"max_new_tokens": 6, "return_full_text": False}, False, True),
        ("/invocations", {"max_new_tokens": 6}, True, True),
        ("/generate", {"max_new_tokens": 6}, False, False),
        ("/generate", {"max_new_tokens": 6, "return_full_text": True}, True, False),
    ],
)
def test_tgi_return_full_text_defaults_per_route(
    tiny_llm, contexts, engine, path, parameters, full_text, wrapped
):
    reply = call("tgi", path, {"inputs": PROMPT, "parameters": parameters}, contexts, engine)
    answer = json.loads(reply.body)
    assert isinstance(answer, list) is wrapped
    answer = answer[0] if wrapped else answer
    assert answer == {"generated_text": (PROMPT if full_text else "") + greedy_text(tiny_llm, PROMPT, 6)}


def test_tgi_stream_as_the_client_reads_it(tiny_llm, contexts, engine):
    body = Request(
        inputs=PROMPT, stream=True, parameters=Parameters(details=True, max_new_tokens=10)
    ).model_dump()
    events = sse_events(call("tgi", "/", body, contexts, engine))
    responses = [StreamResponse(**event) for event in events]
    assert [r.generated_text is None for r in responses] == [True] * 9 + [False]
    assert responses[-1].details.finish_reason == "length" and responses[-1].details.generated_tokens == 10
    assert "".join(r.token.text for r in responses) == greedy_text(tiny_llm, PROMPT, 10)
    assert responses[-1].generated_text == greedy_text(
        tiny_llm, PROMPT, 10
    )  # the client sent return_full_text false
    assert [event["index"] for event in events] == list(range(1, 11))
    assert all(event["details"] is None for event in events[:-1])


def test_tgi_seeded_sampling_reports_and_reproduces_its_seed(contexts, engine):
    body = {
        "inputs": PROMPT,
        "parameters": {
            "max_new_tokens": 8,
            "do_sample": True,
            "seed": 7,
            "details": True,
            "top_k": 20,
            "temperature": 0.8,
        },
    }
    first = json.loads(call("tgi", "/generate", body, contexts, engine).body)
    again = json.loads(call("tgi", "/generate", body, contexts, engine).body)
    assert first["details"]["seed"] == 7 and first == again
    no_parameters = json.loads(call("tgi", "/generate", {"inputs": PROMPT}, contexts, engine).body)
    assert "details" not in no_parameters  # TGI's default_parameters(): details off, and it samples


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"repetition_penalty": -1.0}, "`repetition_penalty` must be strictly positive"),
        ({"truncate": 0}, "`truncate` must be strictly positive and less than 127. Given: 0"),
        ({"best_of": 2, "do_sample": True}, "`best_of` != 1 is not allowed for this endpoint"),
        (
            {"decoder_input_details": True, "grammar": {"type": "regex", "value": "a+"}},
            "grammar is not supported",
        ),
        ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
        (
            {"max_new_tokens": 500},
            (
                "`inputs` tokens + `max_new_tokens` must be <= 128. "
                "Given: {n} `inputs` tokens and 500 `max_new_tokens`"
            ),
        ),
    ],
)
def test_tgi_validation_errors_have_tgi_shape_and_the_client_reads_them(
    tiny_llm, contexts, engine, parameters, message
):
    n = len(tiny_llm[1](PROMPT)["input_ids"])
    reply = call("tgi", "/generate", {"inputs": PROMPT, "parameters": parameters}, contexts, engine)
    payload = json.loads(reply.body)
    assert (reply.status, payload) == (
        422,
        {"error": "Input validation error: " + message.format(n=n), "error_type": "validation"},
    )
    assert isinstance(parse_error(reply.status, payload), ValidationError)
    # streamed, TGI has already said 200: the refusal is the stream's only event (best_of and prefill details
    # are refused for streams with their own words)
    events = sse_events(
        call("tgi", "/generate_stream", {"inputs": PROMPT, "parameters": parameters}, contexts, engine)
    )
    stream_message = {
        "best_of": "`best_of` != 1 is not supported when streaming tokens",
        "decoder_input_details": "`decoder_input_details` == true is not supported when streaming tokens",
    }
    first = next((stream_message[key] for key in stream_message if key in parameters), None)
    assert events == [{**payload, "error": "Input validation error: " + first} if first else payload]


def test_tgi_overloaded_is_429(contexts, tiny_llm):
    model, tokenizer = tiny_llm
    busy = LLMEngine(
        model, tokenizer, Limits(max_total_tokens=128, max_batch_size=1, max_queue=1)
    )  # not stepping
    busy.submit(api_tgi.parse_generate(b'{"inputs": "a"}', contexts["tgi"], stream=False).requests[0])
    parsed = api_tgi.parse_generate(b'{"inputs": "b"}', contexts["tgi"], stream=False)
    reply = respond(parsed, busy)
    payload = json.loads(reply.body)
    assert (reply.status, payload) == (429, {"error": "Model is overloaded", "error_type": "overloaded"})
    assert isinstance(parse_error(reply.status, payload), OverloadedError)


@pytest.mark.parametrize(
    ("body", "status", "starts"),
    [
        (b"{not json", 400, "Failed to parse the request body as JSON"),
        (b'{"inputs": "\xff\xfe"}', 400, "Failed to parse the request body as JSON"),
        (b'{"inputs": 3}', 422, "Failed to deserialize the JSON body into the target type: inputs"),
        (
            b'{"inputs": "x", "parameters": {"max_new_tokens": "5"}}',
            422,
            "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens",
        ),
        (
            b'{"inputs": "x", "parameters": {"do_sample": 1}}',
            422,
            "Failed to deserialize the JSON body into the target type: parameters.do_sample",
        ),
        (b"[]", 422, "Failed to deserialize the JSON body into the target type"),
    ],
)
def test_tgi_bodies_of_the_wrong_shape_get_axums_answers(contexts, engine, body, status, starts):
    reply = call("tgi", "/generate", body, contexts, engine)
    assert reply.status == status and reply.content_type.startswith("text/plain")
    assert reply.body.decode().startswith(starts)


def test_tgi_ignores_unknown_fields_as_serde_does(contexts, engine):
    reply = call(
        "tgi",
        "/generate",
        {"inputs": PROMPT, "parameters": {"max_new_tokens": 2, "frobnicate": 1}, "extra": True},
        contexts,
        engine,
    )
    assert reply.status == 200


def test_tgi_info(contexts):
    info = json.loads(protocols.get("tgi", "/info", contexts["tgi"]).body)
    assert (info["model_id"], info["max_total_tokens"], info["max_input_tokens"]) == ("tiny", 128, 127)
    assert info["model_pipeline_tag"] is None and info["router"] == "text-generation-router"


# ---------------------------------------------------------------------- OpenAI routes on TGI
def test_chat_template_renders_as_transformers_does(tiny_llm, contexts):
    _, tokenizer = tiny_llm
    rendered = contexts["tgi"].chat_template.render(MESSAGES)
    assert rendered == tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert contexts["tgi"].chat_template.origin == "chat_template.jinja"  # where transformers 4.57 saved it


def test_chat_completion_is_greedy_at_temperature_0(tiny_llm, contexts, engine):
    _, tokenizer = tiny_llm
    body = {"model": "tgi", "messages": MESSAGES, "max_tokens": 5, "temperature": 0}
    reply = call("tgi", "/v1/chat/completions", body, contexts, engine)
    completion = ChatCompletion.model_validate(json.loads(reply.body))
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert completion.choices[0].message.content == greedy_text(tiny_llm, prompt, 5, special_tokens=False)
    assert completion.choices[0].finish_reason == "length" and completion.model == "tiny"
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt_tokens, 5)
    longer = ChatCompletion.model_validate(
        json.loads(call("tgi", "/v1/chat/completions", {**body, "max_tokens": 40}, contexts, engine).body)
    )
    # TGI's FinishReason::format(true): an EOS (here <|im_end|>, in generation_config) is OpenAI's "stop"
    assert longer.choices[0].finish_reason == ("stop" if longer.usage.completion_tokens < 40 else "length")
    # the same through /invocations (TGI's SagemakerRequest picks the chat variant)
    same = ChatCompletion.model_validate(json.loads(call("tgi", "/invocations", body, contexts, engine).body))
    assert same.choices[0].message.content == completion.choices[0].message.content


def test_chat_stream_chunks_then_done(tiny_llm, contexts, engine):
    body = {
        "messages": MESSAGES,
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": 2,
    }
    events = sse_events(call("tgi", "/v1/chat/completions", body, contexts, engine))
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(event) for event in events[:-1]]
    assert [c.choices[0].finish_reason if c.choices else "usage" for c in chunks] == [None] * 4 + [
        "length",
        "usage",
    ]
    assert chunks[-1].usage.completion_tokens == 5
    assert all(len(c.choices[0].logprobs.content[0].top_logprobs) == 2 for c in chunks[:-1])
    whole = json.loads(call("tgi", "/v1/chat/completions", {**body, "stream": False}, contexts, engine).body)
    assert (
        "".join(c.choices[0].delta.content for c in chunks[:-1]) == whole["choices"][0]["message"]["content"]
    )


def test_chat_without_a_template_is_422(tiny_llm, contexts, engine):
    bare = contexts["tgi"].__class__(model_id="tiny", limits=contexts["tgi"].limits, chat_template=None)
    with pytest.raises(ApiError) as refused:
        protocols.parse("tgi", "/v1/chat/completions", json.dumps({"messages": MESSAGES}).encode(), bare)
    assert refused.value.reply.status == 422
    assert json.loads(refused.value.reply.body) == {
        "error": "Template error: template not found",
        "error_type": "template_error",
    }


def test_completions_several_prompts(tiny_llm, contexts, engine):
    body = {"model": "tgi", "prompt": [PROMPT, "import"], "max_tokens": 5, "temperature": 0}
    completion = Completion.model_validate(
        json.loads(call("tgi", "/v1/completions", body, contexts, engine).body)
    )
    assert [c.text for c in completion.choices] == [greedy_text(tiny_llm, p, 5) for p in (PROMPT, "import")]
    assert completion.usage.completion_tokens == 10
    too_many = call("tgi", "/v1/completions", {**body, "prompt": ["a"] * 5}, contexts, engine)
    assert (too_many.status, json.loads(too_many.body)["error_type"]) == (422, "batch size exceeded")
    events = sse_events(call("tgi", "/v1/completions", {**body, "stream": True}, contexts, engine))
    assert events[-1] == "[DONE]"
    assert [e["choices"][0]["index"] for e in events[:-1]] == [0] * 5 + [1] * 5
    assert events[4]["choices"][0]["finish_reason"] == "length" and "usage" in events[4]


def test_invocations_matching_no_variant_is_422(contexts, engine):
    reply = call("tgi", "/invocations", {"question": "?"}, contexts, engine)
    assert reply.status == 422
    assert b"data did not match any variant of untagged enum SagemakerRequest" in reply.body


# ---------------------------------------------------------------------- LMI
def test_lmi_generate_defaults_and_greedy(tiny_llm, contexts, engine):
    greedy = {"inputs": PROMPT, "parameters": {"do_sample": False, "details": True}}
    answer = json.loads(call("lmi", "/invocations", greedy, contexts, engine).body)
    assert answer["generated_text"] == greedy_text(tiny_llm, PROMPT, 30)  # LMI's max_new_tokens: 30
    assert answer["details"]["generated_tokens"] == 30 and answer["details"]["finish_reason"] == "length"
    full = json.loads(
        call(
            "lmi",
            "/invocations",
            {
                "inputs": PROMPT,
                "parameters": {"do_sample": False, "max_new_tokens": 4, "return_full_text": True},
            },
            contexts,
            engine,
        ).body
    )
    assert full == {"generated_text": PROMPT + greedy_text(tiny_llm, PROMPT, 4)}


def test_lmi_stream_is_json_lines(tiny_llm, contexts, engine):
    body = {"inputs": PROMPT, "parameters": {"do_sample": False, "max_new_tokens": 6}, "stream": True}
    reply = call("lmi", "/invocations", body, contexts, engine)
    assert reply.content_type == "application/jsonlines"
    lines = [json.loads(line) for line in reply.body.decode().splitlines()]
    assert [line["generated_text"] is None for line in lines] == [True] * 5 + [False]
    assert lines[-1]["generated_text"] == greedy_text(tiny_llm, PROMPT, 6)
    assert set(lines[0]["token"]) == {"id", "text", "logprob"}


def test_lmi_chat_is_vllms_chat_completion(tiny_llm, contexts, engine):
    body = {"messages": MESSAGES, "max_tokens": 5, "temperature": 0}
    completion = ChatCompletion.model_validate(
        json.loads(call("lmi", "/invocations", body, contexts, engine).body)
    )
    assert completion.id.startswith("chatcmpl-") and completion.choices[0].finish_reason == "length"
    lines = call("lmi", "/invocations", {**body, "stream": True}, contexts, engine).body.decode().splitlines()
    chunks = [ChatCompletionChunk.model_validate(json.loads(line)) for line in lines]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content for c in chunks) == completion.choices[0].message.content


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{oops", 424, "Input parsing failed: the body is not JSON"),
        (
            b'{"inputs": 5}',
            424,
            "Input parsing failed: The 'inputs' field must be a string. Received type int",
        ),
        (
            b'{"inputs": ""}',
            424,
            "Input parsing failed: Invalid request payload. The 'inputs' field does not",
        ),
        (
            b'{"nothing": 1}',
            424,
            "Input parsing failed: invalid payload. must contain prompt, inputs, or messages",
        ),
        (
            b'{"inputs": "x", "parameters": {"max_new_tokens": 1000}}',
            400,
            "This model's maximum context length is 128 tokens",
        ),
    ],
)
def test_lmi_errors_have_djl_serving_shape(contexts, engine, body, status, error):
    reply = call("lmi", "/invocations", body, contexts, engine)
    payload = json.loads(reply.body)
    assert reply.status == payload["code"] == status
    assert payload["error"].startswith(error)
