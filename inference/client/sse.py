"""The events of a streamed LLM answer, read as bytes arrive, and when each token came.

Two framings, told apart by the answer's Content-Type:

- ``text/event-stream`` (TGI's ``/generate_stream``, and ``/invocations`` or ``/`` with ``"stream": true``):
  server-sent events as the WHATWG spec reads them. Lines end with LF, CRLF or CR; ``data:`` lines
  (one leading space dropped) are joined with LF and dispatched at a blank line; ``:`` lines are
  comments; other fields (``event:``, ``id:``, ``retry:``) are ignored. TGI's axum writes
  ``data:{"index", "token": {"id", "text", "logprob", "special"}, "generated_text", "details"}`` and a
  blank line per token, and a refusal after the 200 as one ``data:{"error", "error_type"}`` event.
- JSON lines (``application/jsonlines``, LMI's rolling-batch stream): one JSON object a line,
  ``{"token": {...}, "generated_text", "details"}``.

A chunk may end anywhere (a PayloadPart of InvokeEndpointWithResponseStream splits the stream where the
endpoint's buffer did), so both readers keep the unfinished line for the next chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

MAX_EVENT_BYTES = 1 << 20  # an event (or line) longer than this is not a token: the stream is refused


class StreamFormatError(ValueError):
    """The stream is not what its Content-Type says (an event past MAX_EVENT_BYTES, not JSON)."""


def is_json_lines(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media in ("application/jsonlines", "application/json-lines", "application/x-ndjson")


class EventReader:
    """Bytes in, the JSON of each complete event out (``[DONE]`` and empty events are skipped)."""

    def __init__(self, content_type: str | None) -> None:
        self.json_lines = is_json_lines(content_type)
        self._rest = b""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> Iterator[dict]:
        data = self._rest + chunk
        # a CR at the end may be the first half of a CRLF: it waits for the next chunk
        held = b"\r" if data.endswith(b"\r") else b""
        lines = data[: len(data) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._rest = lines.pop() + held
        if len(self._rest) > MAX_EVENT_BYTES:
            raise StreamFormatError(f"a line of the stream is longer than {MAX_EVENT_BYTES} bytes")
        for line in lines:
            event = self._line(line)
            if event is not None:
                yield event

    def close(self) -> Iterator[dict]:
        """The end of the stream: a last JSON line with no line end is complete; an event with no
        blank line after it is not, and is dropped (the SSE spec's rule)."""
        rest, self._rest = self._rest.rstrip(b"\r"), b""
        self._data, self._size = [], 0
        if rest and self.json_lines:
            yield _decode(rest)

    def _line(self, line: bytes) -> dict | None:
        if self.json_lines:
            return _decode(line) if line.strip() else None
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None
        field, _, value = line.partition(b":")
        if field == b"data":
            value = value[1:] if value.startswith(b" ") else value
            self._size += len(value) + 1
            if self._size > MAX_EVENT_BYTES:
                raise StreamFormatError(f"an event of the stream is longer than {MAX_EVENT_BYTES} bytes")
            self._data.append(value)
        return None

    def _dispatch(self) -> dict | None:
        data, self._data, self._size = b"\n".join(self._data), [], 0
        if not data.strip() or data.strip() == b"[DONE]":  # OpenAI's end marker, an empty event
            return None
        return _decode(data)


def _decode(data: bytes) -> dict:
    try:
        event = json.loads(data)
    except ValueError:
        raise StreamFormatError(f"an event is not JSON: {data[:80]!r}") from None
    if not isinstance(event, dict):
        raise StreamFormatError(f"an event is not a JSON object: {data[:80]!r}")
    return event


class TokenTimes:
    """When each token of one streamed answer arrived, counted from ``start`` (seconds of ``clock``).

    A token is an event with a ``token`` object; an event with ``error`` ends the answer as failed.
    The time of a token is that of the chunk that completed its event: what a client can first act on.
    """

    def __init__(
        self, content_type: str | None, start: float, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.reader = EventReader(content_type)
        self.start = start
        self.clock = clock
        self.arrivals: list[float] = []  # seconds since start, one per token
        self.error: str | None = None

    def feed(self, chunk: bytes) -> None:
        self._take(self.reader.feed(chunk))

    def close(self) -> None:
        self._take(self.reader.close())

    def _take(self, events: Iterator[dict]) -> None:
        now = None
        for event in events:
            if self.error is not None:
                continue
            if event.get("error") is not None:
                kind = event.get("error_type")
                self.error = f"{event['error']}" + (f" ({kind})" if kind else "")
            elif isinstance(event.get("token"), dict):
                now = self.clock() if now is None else now
                self.arrivals.append(now - self.start)

    @property
    def tokens(self) -> int:
        return len(self.arrivals)

    @property
    def ttft(self) -> float | None:
        return self.arrivals[0] if self.arrivals else None

    @property
    def inter_token(self) -> float | None:
        """The mean gap between tokens after the first (TPOT), None below two tokens."""
        if len(self.arrivals) < 2:
            return None
        return (self.arrivals[-1] - self.arrivals[0]) / (len(self.arrivals) - 1)
