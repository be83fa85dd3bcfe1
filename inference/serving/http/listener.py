"""The workers' own accept loop, shared by the handler server and the LLM server: every pending
connection per wake-up (uvloop's server accepts one per loop iteration, so a burst of new clients
waited to be accepted) up to the worker's ``capacity`` of open connections, a 0.1 s back-off when
accepting fails (EMFILE) instead of spinning on a readable socket, and a close that first takes what
is already queued (closing resets those).

The capacity is what keeps accept() inside the open-file limit: a burst of clients is taken only as
far as there are descriptors for it; the rest wait in the kernel's listen queue until a connection
closes (:meth:`Listener.release`), instead of every accept past the limit failing, /ping's included.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("aiops.serve")

ACCEPTS_PER_WAKEUP = 1024
RETRY_SECONDS = 0.1


class Listener:
    """``protocol`` makes a connection's protocol given the callback it calls once its socket is
    closed; ``capacity``: the most connections open at once (None: no bound)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: Callable[[Callable[[], None]], asyncio.Protocol],
        capacity: int | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol = protocol
        self.capacity = capacity
        self.open = 0  # accepted and not yet closed
        self.listening = False
        self.reading = False

    def start(self) -> None:
        self.listening = True
        self._resume()

    def close(self) -> None:
        """Stop listening: the connections already queued are taken, then the socket closes."""
        self.listening = False
        self._pause()
        self.capacity = None  # closing resets what is left queued: take it all instead
        self._accept()
        self.sock.close()

    def release(self) -> None:
        """A connection's socket closed: there is room for one more."""
        self.open -= 1
        if self.listening and not self.reading:
            self._resume()

    def _pause(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def _resume(self) -> None:
        if self.listening and not self.reading:
            self.reading = True
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if self.capacity is not None and self.open >= self.capacity:
                self._pause()  # release() resumes
                return
            try:
                client, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. EMFILE: back off instead of spinning on a readable socket
                log.warning("accept failed (%s); retrying in %g s", err.strerror or err, RETRY_SECONDS)
                self._pause()
                self.loop.call_later(RETRY_SECONDS, self._resume)
                return
            self.open += 1
            client.setblocking(False)
            self.loop.create_task(self._adopt(client))

    async def _adopt(self, client: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: self.protocol(self.release), client)
        except OSError:
            client.close()
            self.release()
