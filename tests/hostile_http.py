"""A real HTTP server on 127.0.0.1 that answers the way a broken or hostile server would (tests).

Each connection's request is read (headers and Content-Length body), then the answer is what
``respond()`` yields, sent block by block until it ends, the client goes away, or ``cap`` bytes
were sent (so a test can never send a client more than that, whatever the client does). With
``stall=True`` the connection then stays open, without a terminating chunk, until ``release()``:
the client is still alive and waiting, and a test can read its memory from /proc.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

Respond = Callable[[], Iterator[bytes]]


def endless(block: bytes = b"0" * (1 << 20)) -> Iterator[bytes]:
    while True:
        yield block


def chunked(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Each block as one HTTP/1.1 chunk (no terminating chunk: the caller adds ``b"0\\r\\n\\r\\n"``)."""
    for block in blocks:
        yield b"%x\r\n" % len(block) + block + b"\r\n"


class HostileServer:
    def __init__(self, respond: Respond, *, cap: int = 256 << 20, stall: bool = False) -> None:
        self.respond, self.cap, self.stall = respond, cap, stall
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        self.sent = 0
        self.done = threading.Event()  # the answer was sent (or the client left)
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a close alone does not)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(10)

    def release(self) -> None:
        """End a stalled answer: the connection closes mid-body."""
        self._release.set()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by __exit__
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            block = conn.recv(65536)
            if not block:
                return
            data += block
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            block = conn.recv(65536)
            if not block:
                return
            body += block
        self.requests += 1
        try:
            for block in self.respond():
                if self.sent >= self.cap:
                    break
                conn.sendall(block)
                self.sent += len(block)
        except OSError:  # the client went away
            self.done.set()
            return
        self.done.set()
        if self.stall:
            self._release.wait(60)
