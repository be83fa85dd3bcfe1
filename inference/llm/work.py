"""One request the LLM server is answering, as :mod:`aiops.inference.serving.work` is the handler server's:
its head fields (what the HTTP layer's answer builders read), its generations' handles, and the event the
engine's wake-ups set."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiops.inference.serving.work import request_id

if TYPE_CHECKING:
    from aiops.inference.llm.engine import Generation
    from aiops.inference.serving.http.connection import Connection


class LLMRequest:
    __slots__ = (
        "conn",
        "rid",
        "attrs",
        "keep_alive",
        "mode",
        "t0",
        "done",
        "timed_out",
        "handles",
        "wake",
        "streaming",
        "cancelled",
        "direct",
        "rest",
    )

    def __init__(self, conn: Connection, keep_alive: bool, mode: str) -> None:
        self.conn = conn
        self.rid = request_id()
        self.attrs = conn.attrs
        self.keep_alive = keep_alive
        self.mode = mode  # how a stream is answered: chunked, event-stream frames, or whole (stream_sender)
        self.t0 = time.monotonic()
        self.done = False  # answered, or its client left
        self.timed_out = 0  # sweeps that found it past the timeout
        self.handles: list[Generation] = []
        self.wake = asyncio.Event()
        self.streaming = False  # the 200 head is out
        self.cancelled = False  # its generations were told to stop
        # the loop has handed the stream to the engine thread, which writes its tokens to the socket itself
        # (LLMApp.hand_over); under LLMApp.lock
        self.direct = False
        self.rest = b""  # what the engine thread could not write: the loop writes it first


class Stop(Exception):
    """The request ends without an answer of its own: its client left, or it timed out."""
