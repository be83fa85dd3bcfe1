"""What a parsed LLM request is to the HTTP layer: a :class:`Call` (the engine requests to submit, and how
to answer them), a finished :class:`Reply`, or an :class:`ApiError` carrying the container's refusal.

The HTTP layer's whole job, per request::

    call = protocols.parse(container, path, body, context)      # ApiError -> write err.reply
    handles = [engine.submit(r) for r in call.requests]        # LLMError -> write call.refuse(err)
    if not call.stream:
        write call.reply([h.result() for h in handles])        # LLMError -> write call.refuse(err)
    else:
        write headers (200, call.content_type), then call.head()
        for each event of handle i: write call.event(i, event)  # LLMError mid-stream -> call.fail(err)
        write call.end()
    on client disconnect: handle.cancel() for each

No torch, no sockets: each API module (``api_tgi``, ``api_openai``, ``api_lmi``) subclasses Call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
from aiops.inference.errors import HttpError
from aiops.inference.llm.chat_template import ChatTemplate
from aiops.inference.llm.generation import Event, Finished, GenerationRequest, Limits, LLMError


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class ApiError(HttpError):
    """A request refused while parsing: ``reply`` is the container's exact answer (status, body)."""

    def __init__(self, reply: Reply, message: str) -> None:
        super().__init__(message, reply.status)
        self.reply = reply


@dataclass(frozen=True)
class ModelContext:
    """What the APIs need to know of the served model."""

    model_id: str
    limits: Limits = field(default_factory=Limits)
    chat_template: ChatTemplate | None = None
    # TGI: a model with no pipeline tag (any local folder) or "text-generation" returns the full text on
    # its compat routes (/ and /invocations) unless the request says return_full_text: false
    pipeline_tag: str | None = None
    version: str = "3.3.6"  # the TGI router version twinned (Cargo.toml), in system_fingerprint and /info

    @property
    def compat_return_full_text(self) -> bool:
        return self.pipeline_tag is None or self.pipeline_tag == "text-generation"

    @property
    def system_fingerprint(self) -> str:
        return f"{self.version}-native"


class Call:
    """A parsed request: ``requests`` go to the engine; the methods render the answer in the container's
    format. Subclasses override what differs."""

    stream: bool = False
    content_type: str = "application/json"

    def __init__(self, requests: list[GenerationRequest], stream: bool = False) -> None:
        self.requests = requests
        self.stream = stream

    def reply(self, results: list[Finished]) -> Reply:
        raise NotImplementedError

    def refuse(self, error: LLMError) -> Reply:
        """The answer when the engine refused a request (budget, overload) or failed it before the end."""
        raise NotImplementedError

    # ---- streaming: a 200 with ``content_type``, then these bytes in order
    def head(self) -> bytes:
        return b""

    def event(self, index: int, event: Event) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        return b""

    def fail(self, error: LLMError) -> bytes:
        raise NotImplementedError


def dumps(value) -> bytes:
    """JSON as the containers write it: UTF-8, NaN as null (serde_json's f32 NaN)."""
    return orjson.dumps(value)


def sse(value) -> bytes:
    """One server-sent event as TGI's axum writes it: ``data:`` and the JSON, no space, a blank line."""
    return b"data:" + (value if isinstance(value, bytes) else dumps(value)) + b"\n\n"


def respond(call: Call, engine) -> Reply:
    """The loop above, blocking, with a stream's bytes joined into one Reply: what a client that reads the
    whole answer sees. For tests and in-process callers; ``engine`` must be stepping (``start()``)."""
    handles = []
    try:
        for request in call.requests:
            handles.append(engine.submit(request))
    except LLMError as error:
        for handle in handles:
            handle.cancel()
        return call.refuse(error)
    if not call.stream:
        try:
            return call.reply([handle.result() for handle in handles])
        except LLMError as error:
            return call.refuse(error)
    return Reply(200, b"".join(stream(call, handles)), call.content_type)


def stream(call: Call, handles) -> Iterator[bytes]:
    """A streamed call's bytes, request after request (the HTTP layer interleaves them as events arrive)."""
    yield call.head()
    try:
        for index, handle in enumerate(handles):
            for event in handle:
                yield call.event(index, event)
    except LLMError as error:
        yield call.fail(error)
        return
    yield call.end()
