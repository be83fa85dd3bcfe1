"""A worker's unit of work: a request read off a connection, and what the handler made of it."""

from __future__ import annotations

import time
import uuid

_RID_PREFIX = uuid.uuid4().hex[:12]
_rid_counter = iter(range(1, 1 << 62))


def request_id() -> str:
    """A request id unique to this worker process (``x-amzn-requestid``)."""
    return f"{_RID_PREFIX}-{next(_rid_counter):08x}"


class Request:
    """A complete request, waiting for (or getting) its answer."""

    __slots__ = (
        "conn",
        "body",
        "ctype",
        "accept",
        "attrs",
        "rid",
        "inference_id",
        "t0",
        "keep_alive",
        "mode",
        "done",
        "late",
    )

    def __init__(self, conn, body, ctype, accept, attrs, rid, inference_id, keep_alive, mode):
        self.conn, self.body, self.ctype, self.accept, self.attrs = conn, body, ctype, accept, attrs
        self.rid, self.inference_id, self.keep_alive, self.mode = rid, inference_id, keep_alive, mode
        self.t0 = time.monotonic()
        self.done = False  # answered (or abandoned: the client left); set on the loop thread only
        self.late = None  # the watchdog answered it 504 during an inline call: what it could not write yet


class Rest:
    """What is left of an answer the inference thread could only partly write (socket full)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Streamed:
    """An inference result that streams: its first chunk is already made (inside the handler call)."""

    __slots__ = ("stream", "ctype")

    def __init__(self, stream, ctype: str) -> None:
        self.stream, self.ctype = stream, ctype


STOP = None  # what the loop puts on the work queue to end the inference thread
