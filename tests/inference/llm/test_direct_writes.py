"""The engine thread's direct writes of a stream's tokens (``LLMApp._deliverer``) against a real socket
whose client reads nothing: once the socket takes no more, what it could not take is kept whole for the
loop (``req.rest``), the stream is the loop's again, the loop is woken once, and every later event goes to
the queue, so no byte is lost or reordered."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

from aiops.inference.llm.app import LLMApp
from aiops.inference.llm.generation import Token, TokenEvent
from aiops.inference.serving.stream_sender import CHUNKED


class _Queue:
    def __init__(self) -> None:
        self.events: list = []

    def enqueue(self, event) -> None:
        self.events.append(event)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def test_a_full_socket_hands_the_rest_and_every_later_event_to_the_loop():
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.setblocking(False)
    wakes = []
    conn = SimpleNamespace(wfd=server.fileno(), transport=SimpleNamespace(get_write_buffer_size=lambda: 0))
    req = SimpleNamespace(direct=True, conn=conn, mode=CHUNKED, rest=b"")
    call = SimpleNamespace(event=lambda index, event: b"data: %d %s\n\n" % (event.index, b"x" * 300))
    deliver = LLMApp._deliverer(SimpleNamespace(lock=threading.Lock()), req, call, 0, lambda: wakes.append(1))
    handle = _Queue()
    sent = []
    try:
        index = 0
        while req.direct:
            index += 1
            assert index < 100_000, "the socket never filled"
            event = TokenEvent(Token(index, "x", 0.0, False), index)
            sent.append(_chunk(call.event(0, event)))
            deliver(handle, event)
        assert wakes == [1] and req.rest and not handle.events
        later = [TokenEvent(Token(i, "x", 0.0, False), i) for i in (index + 1, index + 2)]
        for event in later:
            deliver(handle, event)
        assert handle.events == later and wakes == [1]  # queued for the loop, in order, after the rest
        client.setblocking(False)
        received = b""
        while True:
            try:
                data = client.recv(1 << 20)
            except BlockingIOError:
                break
            received += data
        assert received + req.rest == b"".join(sent)  # written, then kept for the loop: every byte, in order
    finally:
        server.close()
        client.close()
