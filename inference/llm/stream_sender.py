"""A streamed LLM answer, as :mod:`aiops.inference.serving.stream_sender` is a handler's: the bytes of the
container's stream as the engine makes them (server-sent events on TGI's routes, JSON lines on LMI's; the
events of several generations interleaved), sent chunked on the container's routes and as PayloadPart
frames on InvokeEndpointWithResponseStream's route; a stream that cannot complete is cut short (a
ModelStreamError frame there, which boto3 raises).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiops.inference.llm.calls import Call
from aiops.inference.llm.generation import LLMError
from aiops.inference.serving.http import eventstream
from aiops.inference.serving.http.responses import (
    LAST_CHUNK,
    TransportSink,
    answer_head,
    chunk,
    stream_head_lines,
)
from aiops.inference.serving.stream_sender import EVENTS

if TYPE_CHECKING:
    from aiops.inference.llm.app import LLMApp
    from aiops.inference.llm.work import LLMRequest


async def events(app: LLMApp, req: LLMRequest, call: Call, direct: bool = False) -> AsyncIterator[bytes]:
    """The stream's bytes after its head, as the engine makes them (one piece per wake-up); a generation
    that fails ends it with the container's error event. ``direct``: between wake-ups the engine thread
    writes the tokens to the socket itself (``LLMApp.hand_over``), so only what it cannot comes here."""
    handles = req.handles
    while True:
        out = []
        failed = None
        for index, handle in enumerate(handles):
            try:
                for event in handle.poll():
                    out.append(call.event(index, event))
            except LLMError as error:
                failed = error
                break
        if failed is not None:
            out.append(call.fail(failed))
        data = b"".join(out)
        if data:
            yield data
        if failed is not None:
            return
        if all(handle.done for handle in handles):
            tail = call.end()
            if tail:
                yield tail
            return
        if direct:
            app.hand_over(req)
        await app.next(req)


async def collect(app: LLMApp, req: LLMRequest, call: Call) -> bytes:
    """The whole stream in one body (HTTP/1.0, InvokeEndpoint's route): the bytes a streamed answer
    sends, its end included once."""
    data = [call.head()]
    async for part in events(app, req, call):
        data.append(part)
    return b"".join(data)


async def send(app: LLMApp, req: LLMRequest, call: Call) -> None:
    """The 200 head, then the stream as it comes, chunked or as event-stream frames; the connection then
    reads its next request (or closes)."""
    conn = req.conn
    framed = req.mode == EVENTS
    head = answer_head(req, app.variant)
    head.append(stream_head_lines(req.mode, call.content_type) + b"\r\n")
    conn.sink = sink = TransportSink(conn.transport)  # type: ignore[assignment]
    req.streaming = True
    sink.start(b"".join(head))
    try:
        first = call.head()
        if first:
            await sink.send(eventstream.payload_part(first) if framed else first)
        async for data in events(app, req, call, direct=True):
            await sink.send(eventstream.payload_part(data) if framed else data)
        await sink.finish()
    finally:
        conn.sink = None
    app.counts["success"] += 1
    app.settle(req)
    if req.keep_alive and not app.draining:
        conn.resume()
    else:
        conn.close()


def cut(app: LLMApp, req: LLMRequest, code: str = eventstream.STREAM_BROKEN) -> None:
    """A started stream that cannot complete: a ModelStreamError frame on the response-stream route, a
    chunked body with no last chunk elsewhere (the client sees an incomplete body); the connection closes."""
    conn = req.conn
    transport = conn.transport
    app.settle(req)
    if req.mode == EVENTS and not transport.is_closing():
        frame = eventstream.model_stream_error(f"the model's stream ended early ({code})", code)
        transport.write(chunk(frame) + LAST_CHUNK)
    conn.close()
