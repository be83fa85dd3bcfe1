"""The LLM server's routes, per container, as :mod:`aiops.inference.serving.http.routes` is the handler
server's:

- ``GET|HEAD``: the container's health and information routes (TGI's router: ``/``, ``/health``, ``/info``,
  ``/metrics``, ``/v1/models``; djl-serving's ``/ping``), answered by the loop itself with no API key;
- ``POST``: the container's API routes, each parsed by its API adapter (:data:`protocols.POST_ROUTES
  <aiops.inference.llm.protocols.POST_ROUTES>`), and SageMaker's ``/endpoints/NAME/invocations[-response-
  stream]``, which are ``/invocations`` answered as InvokeEndpoint (whole) and
  InvokeEndpointWithResponseStream (event-stream frames) answer.

Everything a request's head must pass before its body is read is :func:`check_head`; a refusal on an
endpoint route reads as InvokeEndpoint's ModelError (:func:`endpoint_refusal`).
"""

from __future__ import annotations

from aiops.inference.llm import protocols
from aiops.inference.llm.calls import ApiError, Call, ModelContext, Reply, dumps
from aiops.inference.llm.protocols import Container
from aiops.inference.serving.http import admission, routes
from aiops.inference.serving.http.connection import Connection

GET_ROUTES: dict[Container, frozenset[str]] = {
    "tgi": frozenset({"/", "/health", "/ping", "/info", "/metrics", "/v1/models"}),
    "lmi": frozenset({"/ping", "/metrics"}),
}
HEAD_METHODS = (b"GET", b"HEAD")


def path_of(url: bytes) -> bytes:
    return url.split(b"?", 1)[0]


def check_head(
    conn: Connection, container: Container, api_key: bytes | None, max_payload: int, max_connections: int
):
    """Route, method, custom attributes, API key and declared length of the request whose headers ``conn``
    has read: None when acceptable, else ``(status, message, extra header pairs)``."""
    path = path_of(conn.url).decode("latin-1")
    get, post = GET_ROUTES[container], protocols.POST_ROUTES[container]
    is_post = path in post or routes.endpoint_route(path.encode("latin-1")) is not None
    if conn.method in HEAD_METHODS and path in get:
        return None  # health and information: no key, as the containers
    if conn.ping_only:  # taken past max_connections: the health routes only
        return admission.ping_only_refusal(max_connections, "a GET route (/ping, /health)")
    if conn.method == b"POST" and is_post:
        return routes.check_access(conn, api_key, max_payload)
    if is_post or path in get:
        return 405, f"use {'POST' if is_post else 'GET'} {path}", None
    hint = ", ".join(sorted(get | set(post)))
    return 404, f"no route {path[:200]!r}; this {container} server answers {hint}", None


def is_endpoint_route(url: bytes) -> bool:
    return routes.endpoint_route(path_of(url)) is not None


def parse(container: Container, url: bytes, body: bytes, context: ModelContext) -> Call:
    """The route's API adapter's parse of ``body``: the Call to run, or ApiError with the container's
    refusal. The endpoint routes are the container's ``/invocations``."""
    path = "/invocations" if is_endpoint_route(url) else path_of(url).decode("latin-1")
    call = protocols.parse(container, path, body, context)
    if call is None:  # check_head routed only the container's POST paths here
        raise ApiError(Reply(404, b""), f"no route {path}")
    return call


def get_reply(container: Container, path: str, context: ModelContext, healthy: bool) -> Reply:
    """The answer of a GET route other than ``/metrics`` (the app's counters)."""
    if container == "lmi" and path == "/ping":
        if healthy:
            return Reply(200, b'{"status":"Healthy"}\n')
        return Reply(503, b'{"status":"Unhealthy"}\n')
    if path in ("/", "/health", "/ping"):  # TGI's health: 200 and no body
        if healthy:
            return Reply(200, b"")
        return Reply(503, dumps({"error": "unhealthy", "error_type": "healthcheck"}))
    if path == "/v1/models":
        model = {"id": context.model_id, "object": "model", "created": 0}
        return Reply(200, dumps({"object": "list", "data": [{**model, "owned_by": context.model_id}]}))
    reply = protocols.get(container, path, context)
    return reply if reply is not None else Reply(404, b"")


def endpoint_refusal(reply: Reply) -> Reply:
    """What InvokeEndpoint answers when the container does not say 200: 424 and SageMaker's ModelError
    body, the container's status and message inside (boto3 raises ``ModelError`` with them)."""
    text = reply.body.decode("utf-8", "replace")
    body = dumps(
        {
            "Message": f"Received client error ({reply.status}) from primary with message "
            + dumps(text).decode(),
            "OriginalStatusCode": reply.status,
            "OriginalMessage": text,
        }
    )
    return Reply(424, body, "application/json", (("x-amzn-errortype", "ModelError"),))
