"""The workers' own accept loop, shared by the handler server and the LLM server: every pending
connection per wake-up (uvloop's server accepts one per loop iteration, so a burst of new clients
waited to be accepted), a 0.1 s back-off when accepting fails (EMFILE) instead of spinning on a
readable socket, and a close that first takes what is already queued (closing resets those).
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
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: Callable[[], asyncio.Protocol],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol = protocol
        self.listening = False

    def start(self) -> None:
        self.listening = True
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop listening: the connections already queued are taken, then the socket closes."""
        self.listening = False
        self.loop.remove_reader(self.sock.fileno())
        self._accept()
        self.sock.close()

    def _resume(self) -> None:
        if self.listening:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                client, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. EMFILE: back off instead of spinning on a readable socket
                log.warning("accept failed (%s); retrying in %g s", err.strerror or err, RETRY_SECONDS)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(RETRY_SECONDS, self._resume)
                return
            client.setblocking(False)
            self.loop.create_task(self._adopt(client))

    async def _adopt(self, client: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol, client)
        except OSError:
            client.close()
