"""The workers' accept loop on its own (in-process, a real socket): it takes a burst of clients only up
to its capacity, leaves the rest in the kernel's listen queue, and takes one more for each that closes."""

from __future__ import annotations

import asyncio
import socket

from aiops.inference.serving.http.listener import Listener


class Held(asyncio.Protocol):
    taken = 0

    def __init__(self, release, held: list) -> None:
        self.release = release
        self.held = held

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.held.append(self)
        Held.taken += 1

    def connection_lost(self, exc) -> None:
        self.held.remove(self)
        self.release()


async def _until(condition, what: str) -> None:
    for _ in range(1000):  # loop iterations, not seconds: each accept and close takes a few
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def test_a_burst_is_taken_up_to_capacity_and_one_more_per_close():
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]  # queued in the kernel
    held: list[Held] = []
    Held.taken = 0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = Listener(loop, server, lambda release: Held(release, held), capacity=3)
        listener.start()
        await _until(lambda: Held.taken == 3, "three connections taken")
        await _settle()
        assert Held.taken == 3 and listener.open == 3  # the other five still wait in the listen queue
        held[0].transport.close()
        await _until(lambda: Held.taken == 4, "a fourth taken for the one closed")
        await _settle()
        assert Held.taken == 4 and len(held) == 3
        for conn in list(held):
            conn.transport.close()
        await _until(lambda: Held.taken == 7, "the next three taken")
        await _settle()
        assert Held.taken == 7 and listener.open == 3
        listener.close()  # closing takes what is still queued (one client) instead of resetting it
        await _until(lambda: Held.taken == 8, "the queued one taken on close")

    try:
        asyncio.run(main())
    finally:
        for c in clients:
            c.close()
