"""Who gets a connection at ``max_connections``: the rule both servers (the handler server's ``App``
and the LLM server's ``LLMApp``) apply when a client connects, and the reset of a connection whose
client reads nothing.

The sweep's rule for the connections' own deadlines (:func:`expire`) is here too: both servers run it
every tick. A new connection makes room by closing the one that costs a client least; when every connection is
busy with a request, a few more are taken that may only ask for the health check, so a worker
whose connections are all busy still answers it (a failing health check gets the container
replaced).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiops.inference.serving.http.connection import BODY, CLOSED, HEADERS, IDLE, LINGER, Connection
from aiops.inference.serving.http.responses import RETRY_AFTER

log = logging.getLogger("aiops.serve")

# Connections taken past max_connections that may only ask for the health check (anything else: 503)
PING_ONLY_CONNECTIONS = 32


def evictable(conns: set[Connection]) -> Connection | None:
    """At max_connections, the connection to close for a new one, costing a client least: the one
    idle the longest, else one closing with unsent data, else the one whose client has read nothing
    for the longest, else the one sending its headers the longest (a slow or stalled client); None
    when every connection is busy with a request."""
    idle = closing = stalled = slow = None
    for c in conns:
        state = c.state
        if state == IDLE:
            if idle is None or c.deadline < idle.deadline:
                idle = c
        elif state == CLOSED:
            closing = c
        elif c.write_stalled:
            if stalled is None or c.write_stalled < stalled.write_stalled:
                stalled = c
        elif state == HEADERS and (slow is None or c.deadline < slow.deadline):
            slow = c
    return idle or closing or stalled or slow


def drop(conns: set[Connection], conn: Connection) -> None:
    """Close ``conn`` and forget it; what it still has buffered is dropped (its client reads
    nothing, or it would be gone)."""
    if conn.state != CLOSED and not conn.transport.get_write_buffer_size():
        conn.close()
    else:
        conn.abort()
    conns.discard(conn)


def accept(conns: set[Connection], conn: Connection, max_connections: int) -> None:
    """Take a new connection into ``conns``, making room as above; past every option a 503."""
    if len(conns) >= max_connections:
        victim = evictable(conns)
        if victim is not None:
            drop(conns, victim)
        elif len(conns) < max_connections + PING_ONLY_CONNECTIONS:
            conn.ping_only = True
        else:
            conn.fail(
                503,
                f"this worker has {max_connections} open connections (max_connections)",
                extra=[RETRY_AFTER],
                close=True,
                etype="ServiceUnavailable",
            )
            return
    conns.add(conn)


def ping_only_refusal(max_connections: int, health_route: str) -> tuple[int, str, list]:
    """The answer to anything but the health check on a connection taken past max_connections."""
    return (
        503,
        f"this worker has {max_connections} open connections (max_connections); "
        f"only {health_route} is answered on this one",
        [RETRY_AFTER],
    )


def refuse_overloaded(conn: Connection, max_queue: int, keep: bool, held: str) -> None:
    """The 503 for a request past the worker's ``max_queue`` (``held``: what the queue counts)."""
    conn.fail(
        503,
        f"the model server is overloaded: this worker has {max_queue} requests {held} (max_queue); "
        "retry shortly",
        extra=[RETRY_AFTER],
        close=not keep,
        etype="ServiceUnavailable",
    )


def expire(
    conns: set[Connection], now: float, write_timeout: float, resumed: Callable[[Connection], None]
) -> None:
    """The connections' deadlines, every sweep: a reset for one whose client has read nothing for
    ``write_timeout`` (a stream, a large answer) or that closed with data its client never took; a
    quiet close past the keep-alive (or a refusal's linger); a 408 for headers or a body that did not
    arrive in time (forgotten once it is gone, reset by a later sweep if it lingers). ``resumed`` takes
    back a connection another thread answered (the handler server's inference thread)."""
    stalled_before = now - write_timeout
    for conn in list(conns):
        if conn.answered:  # answered by another thread and no next request yet: idle now
            resumed(conn)
        state = conn.state
        if 0.0 < conn.write_stalled < stalled_before or (state == CLOSED and now > conn.deadline):
            log.info(
                "a client read nothing for %g s (write_timeout_seconds); connection aborted", write_timeout
            )
            drop(conns, conn)
        elif state in (IDLE, HEADERS, BODY, LINGER) and now > conn.deadline:
            if state in (IDLE, LINGER):
                drop(conns, conn)
            else:
                what, setting = ("headers", "header") if state == HEADERS else ("body", "body")
                conn.fail(
                    408, f"the request {what} did not arrive in time ({setting}_timeout_seconds)", close=True
                )


def close_idle(conns: set[Connection]) -> None:
    """Draining: close every connection between requests."""
    for conn in list(conns):
        if conn.state == IDLE:
            drop(conns, conn)
