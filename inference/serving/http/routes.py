"""A worker's routes, as the SageMaker serving container answers them:

- ``GET|HEAD /ping``: 200 once the model is loaded, 503 while the worker drains (answered by the
  loop itself, never behind a handler call);
- ``POST /invocations``: the handler; a streamed answer is chunked (whole for HTTP/1.0);
- ``POST /endpoints/NAME/invocations``: the handler, answered whole (what InvokeEndpoint gets);
- ``POST /endpoints/NAME/invocations-response-stream``: the handler, answered as event-stream frames
  (InvokeEndpointWithResponseStream).

Everything a request's head must pass before its body is read (route, method, custom attributes,
API key, declared length) is :func:`check_head`.
"""

from __future__ import annotations

import hmac

from aiops.inference.serving.http.responses import status_line
from aiops.inference.serving.stream_sender import BUFFERED, CHUNKED, EVENTS

MAX_CUSTOM_ATTRIBUTES = 1024
PING_BODY = b'{"status":"Healthy"}\n'
UNHEALTHY_BODY = b'{"status":"Unhealthy"}\n'
ROUTES_HINT = "use /ping, /invocations or /endpoints/NAME/invocations[-response-stream]"


def is_ping(url: bytes) -> bool:
    return url == b"/ping" or url.startswith(b"/ping?")


def endpoint_route(path: bytes) -> str | None:
    """``/endpoints/NAME/invocations`` -> buffered, ``.../invocations-response-stream`` -> events."""
    if not path.startswith(b"/endpoints/") or path.count(b"/") != 3:
        return None
    name, _, action = path[len(b"/endpoints/") :].partition(b"/")
    if not name:
        return None
    if action == b"invocations":
        return BUFFERED
    if action == b"invocations-response-stream":
        return EVENTS
    return None


def answer_mode(path: bytes, http_version: str) -> str | None:
    """How an invocation route answers a response that streams: ``chunked`` on ``/invocations``
    (``buffered``, the whole body, for an HTTP/1.0 client), ``buffered`` on the InvokeEndpoint route,
    ``events`` on the response-stream route; None for a path that is no invocation route."""
    if path == b"/invocations":
        return CHUNKED if http_version != "1.0" else BUFFERED
    return endpoint_route(path)


def check_head(conn, api_key: bytes | None, max_payload: int):
    """Route, method, custom attributes, API key and declared length of the request whose headers
    ``conn`` has read: None when acceptable, else ``(status, message, extra header pairs)``."""
    url = conn.url.split(b"?", 1)[0]
    method = conn.method
    if url == b"/ping":
        if method not in (b"GET", b"HEAD"):
            return 405, "use GET /ping", None
        return None
    if not (url == b"/invocations" or endpoint_route(url) is not None):
        return 404, f"no route {url.decode('latin-1')[:200]!r}; {ROUTES_HINT}", None
    if method != b"POST":
        return 405, "use POST", None
    return check_access(conn, api_key, max_payload)


def check_access(conn, api_key: bytes | None, max_payload: int):
    """Custom attributes, API key and declared length of a routed request (every route but /ping):
    None when acceptable, else ``(status, message, extra header pairs)``."""
    if conn.attrs is not None and len(conn.attrs) > MAX_CUSTOM_ATTRIBUTES:
        return (
            400,
            (f"X-Amzn-SageMaker-Custom-Attributes is longer than {MAX_CUSTOM_ATTRIBUTES} characters"),
            None,
        )
    if api_key is not None:
        given = conn.api_key
        if given is None and conn.auth is not None and conn.auth[:7].lower() == b"bearer ":
            given = conn.auth[7:].strip()
        if given is None or not hmac.compare_digest(given, api_key):
            return 401, "missing or wrong API key (X-Api-Key header)", [(b"www-authenticate", b"Bearer")]
    if conn.length is not None:
        try:
            declared = int(conn.length)
        except ValueError:
            return 400, "bad Content-Length", None
        if declared > max_payload:
            return 413, too_large_message(max_payload), None
    return None


def too_large_message(max_payload: int) -> str:
    mb = max_payload / (1024 * 1024)
    return f"the request body is larger than {mb:g} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)"


def ping_answer(healthy: bool, keep_alive: bool, with_body: bool) -> bytes:
    body = PING_BODY if healthy else UNHEALTHY_BODY
    head = b"%scontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n" % (
        status_line(200 if healthy else 503),
        len(body),
        b"" if keep_alive else b"connection: close\r\n",
    )
    return head + (body if with_body else b"")
