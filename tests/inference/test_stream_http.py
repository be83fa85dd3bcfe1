"""Streamed responses over real sockets: http.client, raw HTTP/1.0, and an unmodified boto3 client.

Every test runs against both servers in stream_servers.py: uvicorn + ASGI (what ``aiops serve``
is) and a bare asyncio server. Generators share threading.Events with the test, so "the first
chunk arrived before the generator finished" is proven by ordering, never by timing.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading

import pytest
from stream_servers import SERVERS, runtime_client

from aiops.inference import streaming

WAIT = 3  # seconds; only ever reached when the behaviour under test is broken


@pytest.fixture(params=sorted(SERVERS))
def serve(request):
    """serve(respond) -> a started server; stopped after the test."""
    started = []

    def start(respond, **kwargs):
        server = SERVERS[request.param](respond, **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class Gated:
    """A generator that yields ``first``, then waits until the test has received it."""

    def __init__(self) -> None:
        self.client_has_first = threading.Event()
        self.saw_client = None
        self.finished = threading.Event()

    def __call__(self):
        try:
            yield b"first chunk;"
            self.saw_client = self.client_has_first.wait(WAIT)
            yield b"second chunk;"
            yield "third (a str) \u00e9"
        finally:
            self.finished.set()


def post(port: int, path: str, body: bytes = b"{}", headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    return conn.getresponse()


EXPECTED = b"first chunk;second chunk;third (a str) \xc3\xa9"


def test_chunked_invocations_flush_each_chunk_before_the_generator_finishes(serve):
    gen = Gated()
    server = serve(lambda *a: (gen(), "text/plain"))
    resp = post(server.port, "/invocations")
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Length") is None
    first = resp.read1()
    assert first == b"first chunk;"
    assert not gen.finished.is_set()  # the generator is parked until we say we have the chunk
    gen.client_has_first.set()
    rest = resp.read()
    assert first + rest == EXPECTED
    assert gen.saw_client is True
    assert gen.finished.wait(WAIT)
    assert (outcome := server.next_outcome()).completed and outcome.chunks == 3


def test_boto3_iterates_payload_parts_as_they_are_produced(serve):
    gen = Gated()
    seen = {}

    def respond(path, body, ctype, accept):
        seen.update(path=path, body=body, ctype=ctype, accept=accept)
        return gen(), "text/plain"

    server = serve(respond)
    response = runtime_client(server.url).invoke_endpoint_with_response_stream(
        EndpointName="my-endpoint", Body=b'{"inputs": "hi"}', ContentType="application/json", Accept="text/plain")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["ContentType"] == "text/plain"
    events = iter(response["Body"])
    assert next(events) == {"PayloadPart": {"Bytes": b"first chunk;"}}
    assert not gen.finished.is_set()
    gen.client_has_first.set()
    rest = [event["PayloadPart"]["Bytes"] for event in events]
    assert b"first chunk;" + b"".join(rest) == EXPECTED
    assert gen.saw_client is True
    assert seen == {"path": "/endpoints/my-endpoint/invocations-response-stream", "body": b'{"inputs": "hi"}',
                    "ctype": "application/json", "accept": "text/plain"}


def _http10(port: int, path: str = "/invocations", body: bytes = b"{}") -> tuple[str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(f"POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                     "\r\n\r\n".encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), payload


def test_same_bytes_streamed_chunked_event_stream_and_whole(serve):
    def tokens():
        for i in range(50):
            yield f"token-{i} ".encode()

    server = serve(lambda *a: (tokens(), "text/plain"))
    expected = b"".join(f"token-{i} ".encode() for i in range(50))
    chunked = post(server.port, "/invocations").read()
    client = runtime_client(server.url)
    streamed = b"".join(e["PayloadPart"]["Bytes"] for e in client.invoke_endpoint_with_response_stream(
        EndpointName="e", Body=b"{}", ContentType="application/json")["Body"])
    whole = client.invoke_endpoint(EndpointName="e", Body=b"{}", ContentType="application/json")
    head, http10 = _http10(server.port)
    assert chunked == streamed == whole["Body"].read() == http10 == expected
    assert whole["ContentType"] == "text/plain"
    # the client that cannot stream got a Content-Length, not chunks
    assert "chunked" not in head.lower() and f"content-length: {len(expected)}" in head.lower()


def failing(after: int, finished: threading.Event):
    try:
        for i in range(after):
            yield f"part-{i};".encode()
        raise RuntimeError("the model ran out of road")
    finally:
        finished.set()


def test_generator_failing_mid_stream_truncates_the_chunked_body_with_one_log_line(serve, caplog):
    finished = threading.Event()
    server = serve(lambda *a: (failing(2, finished), "text/plain"))
    caplog.set_level(logging.INFO)
    resp = post(server.port, "/invocations")
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert info.value.partial == b"part-0;part-1;"
    assert finished.wait(WAIT)
    lines = [r for r in caplog.records if r.name in ("aiops.serve", "uvicorn.error") and r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert "RuntimeError: the model ran out of road" in message and "after 2 chunks" in message
    assert "chunked body truncated" in message
    # and the server is still fine
    server.respond = lambda *a: (iter([b"ok"]), "text/plain")
    assert post(server.port, "/invocations").read() == b"ok"


def test_generator_failing_mid_stream_ends_the_event_stream_with_model_stream_error(serve):
    from botocore.exceptions import EventStreamError

    finished = threading.Event()
    server = serve(lambda *a: (failing(3, finished), "text/plain"))
    response = runtime_client(server.url).invoke_endpoint_with_response_stream(
        EndpointName="e", Body=b"{}", ContentType="application/json")
    got = []
    with pytest.raises(EventStreamError) as info:
        for event in response["Body"]:
            got.append(event["PayloadPart"]["Bytes"])
    assert got == [b"part-0;", b"part-1;", b"part-2;"]
    error = info.value.response["Error"]
    assert error["Code"] == "ModelStreamError"
    assert "RuntimeError" in error["Message"] and "server log" in error["Message"]
    assert finished.wait(WAIT)


def test_a_generator_failing_before_its_first_chunk_is_an_ordinary_error_status(serve):
    finished = threading.Event()
    server = serve(lambda *a: (failing(0, finished), "text/plain"))
    resp = post(server.port, "/invocations")
    assert resp.status == 500
    assert b"RuntimeError" in resp.read()
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        runtime_client(server.url).invoke_endpoint_with_response_stream(
            EndpointName="e", Body=b"{}", ContentType="application/json")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def endless(started: threading.Event, closed: threading.Event, counter: list):
    try:
        while True:
            counter[0] += 1
            started.set()
            yield b"x" * 100
    finally:
        closed.set()


def test_client_disconnect_closes_the_generator(serve):
    started, closed, counter = threading.Event(), threading.Event(), [0]
    server = serve(lambda *a: (endless(started, closed, counter), "application/octet-stream"))
    resp = post(server.port, "/invocations")
    assert resp.read1()
    resp.close()  # the client goes away mid-stream
    assert closed.wait(WAIT), "the generator was never closed after the client left"
    produced = counter[0]
    outcome = server.next_outcome()
    assert outcome.disconnected and not outcome.completed
    # closed means closed: it yields nothing more
    assert counter[0] == produced


def test_boto3_closing_the_stream_stops_generation(serve):
    started, closed, counter = threading.Event(), threading.Event(), [0]
    server = serve(lambda *a: (endless(started, closed, counter), "application/octet-stream"))
    response = runtime_client(server.url).invoke_endpoint_with_response_stream(
        EndpointName="e", Body=b"{}", ContentType="application/json")
    body = response["Body"]
    assert next(iter(body))["PayloadPart"]["Bytes"] == b"x" * 100
    body.close()
    assert closed.wait(WAIT)


def test_a_stuck_generator_times_out_with_the_timeout_error_code(serve):
    from botocore.exceptions import EventStreamError

    release, closed = threading.Event(), threading.Event()

    def stuck():
        try:
            yield b"only part"
            release.wait(WAIT)
            yield b"too late"
        finally:
            closed.set()

    server = serve(lambda *a: (stuck(), "text/plain"), timeout_s=0.5)
    response = runtime_client(server.url).invoke_endpoint_with_response_stream(
        EndpointName="e", Body=b"{}", ContentType="application/json")
    events = iter(response["Body"])
    assert next(events)["PayloadPart"]["Bytes"] == b"only part"
    with pytest.raises(EventStreamError) as info:
        next(events)
    assert info.value.response["Error"]["Code"] == "ModelStreamError"
    release.set()
    assert closed.wait(WAIT)  # the producer stopped at its next yield


def test_items_that_are_not_bytes_or_str_fail_the_stream_clearly(serve, caplog):
    server = serve(lambda *a: (iter([b"fine", 42]), "text/plain"))
    caplog.set_level(logging.INFO)
    resp = post(server.port, "/invocations")
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    assert any("yielded int; each item must be bytes or str" in r.getMessage() for r in caplog.records)


def test_what_counts_as_a_stream_and_the_batching_rule():
    import types

    import torch

    assert streaming.is_stream(iter([b"a"])) and streaming.is_stream(x for x in [1])
    for whole in (b"a", "a", bytearray(b"a"), [b"a"], {"a": 1}, torch.zeros(3)):
        assert not streaming.is_stream(whole)
    plain = types.SimpleNamespace()
    assert streaming.batchable(plain, True) is True and streaming.batchable(None, False) is False
    assert streaming.batchable(types.SimpleNamespace(aiops_stream=True), True) is False
    assert streaming.batchable(types.SimpleNamespace(aiops_stream=True, aiops_batch=True), True) is True
    assert streaming.mode_for({"path": "/invocations", "http_version": "1.1"}) == streaming.CHUNKED
    assert streaming.mode_for({"path": "/invocations", "http_version": "1.0"}) == streaming.BUFFERED
    assert streaming.mode_for({"path": "/endpoints/e/invocations"}) == streaming.BUFFERED
    assert streaming.mode_for({"path": "/endpoints/e/invocations-response-stream"}) == streaming.EVENTS


def batched(steps, closed: threading.Event):
    try:
        yield from steps
    finally:
        closed.set()


def test_a_batched_stream_splits_into_one_stream_per_request():
    closed = threading.Event()
    rows = streaming.split_batch(batched([(b"a0", b"b0"), (b"a1", None), (None, b"b1"), (b"a2", b"b2")], closed), 2)
    assert list(rows[1]) == [b"b0", b"b1", b"b2"]  # read one request's stream to its end first
    assert list(rows[0]) == [b"a0", b"a1", b"a2"]
    assert closed.is_set()


def test_a_batched_stream_stops_when_every_request_has_gone_and_keeps_going_for_the_rest():
    closed, made = threading.Event(), []

    def endless_rows():
        try:
            for i in range(10_000):
                made.append(i)
                yield (f"a{i}".encode(), f"b{i}".encode())
        finally:
            closed.set()

    a, b = streaming.split_batch(endless_rows(), 2)
    assert next(a) == b"a0" and next(b) == b"b0"
    a.close()  # the first client leaves; the second still gets its tokens
    assert [next(b) for _ in range(3)] == [b"b1", b"b2", b"b3"]
    assert not closed.is_set()
    b.close()
    assert closed.is_set() and len(made) == 4


def test_a_batched_stream_failure_reaches_every_request_and_bad_steps_are_named():
    def boom():
        yield (b"x", b"y")
        raise RuntimeError("batch failed")

    a, b = streaming.split_batch(boom(), 2)
    assert next(a) == b"x"
    with pytest.raises(RuntimeError, match="batch failed"):
        next(a)
    assert next(b) == b"y"
    with pytest.raises(RuntimeError, match="batch failed"):
        next(b)
    (only,) = streaming.split_batch(iter([(b"1", b"2")]), 1)
    with pytest.raises(ValueError, match="has 2 items for a batch of 1"):
        next(only)


def test_batched_rows_stream_concurrently_through_their_own_producer_threads(serve):
    """Two requests' rows, each sent by its own ChunkStream, from one shared batched generator."""
    closed = threading.Event()
    rows = streaming.split_batch(batched([(f"a{i};".encode(), f"b{i};".encode()) for i in range(20)], closed), 2)
    server = serve(lambda path, *a: (rows[0] if path == "/invocations" else rows[1], "text/plain"))
    first = post(server.port, "/invocations")
    client = runtime_client(server.url)
    second = client.invoke_endpoint_with_response_stream(EndpointName="e", Body=b"{}", ContentType="application/json")
    got_b = b"".join(e["PayloadPart"]["Bytes"] for e in second["Body"])
    got_a = first.read()
    assert got_a == b"".join(f"a{i};".encode() for i in range(20))
    assert got_b == b"".join(f"b{i};".encode() for i in range(20))
    assert closed.wait(WAIT)


def test_even_system_exit_from_a_generator_only_ends_its_own_stream(serve):
    def exits():
        yield b"before "
        raise SystemExit(3)

    server = serve(lambda *a: (exits(), "text/plain"))
    resp = post(server.port, "/invocations")
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    assert server.next_outcome().error.__class__ is SystemExit
    server.respond = lambda *a: (iter([b"still serving"]), "text/plain")
    assert post(server.port, "/invocations").read() == b"still serving"
