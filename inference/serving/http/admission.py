"""Who gets a connection at ``max_connections``: the rule both servers (the handler server's ``App``
and the LLM server's ``LLMApp``) apply when a client connects, and the reset of a connection whose
client reads nothing.

A new connection makes room by closing the one that costs a client least; when every connection is
busy with a request, a few more are taken that may only ask for the health check, so a worker
whose connections are all busy still answers it (a failing health check gets the container
replaced).
"""

from __future__ import annotations

from aiops.inference.serving.http.connection import CLOSED, HEADERS, IDLE, Connection
from aiops.inference.serving.http.responses import RETRY_AFTER

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
