"""Streamed responses from real `aiops serve` processes: chunked /invocations, the response-stream
route through an unmodified boto3 client, HTTP/1.0 and InvokeEndpoint answered whole, disconnects,
failures and timeouts mid-stream, a batched stream split per request.

The handler runs in the server process, so it and the test meet through files: a generator waits
for the file the test writes once it has the first chunk, and writes a file in its ``finally``.
"Chunks arrive before the generator finishes" is proven by that order, never by timing.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading

import pytest
from helpers import runtime_client, wait_until

from .conftest import NO_TORCH_MODEL_FN, write_script

STREAMER = (
    NO_TORCH_MODEL_FN
    + """
import json, os, time
from pathlib import Path
from aiops.inference.errors import InferenceError
aiops_stream = True
GATE = Path(os.environ["AIOPS_TEST_GATE"])

def input_fn(body, content_type, context):
    data = json.loads(body)
    seen = {"body": body, "content_type": content_type, "accept": context.accept}
    (GATE / (data.get("tag", "t") + ".seen")).write_text(json.dumps(seen))
    return data

def _wait(path):
    for _ in range(6000):  # bounded: 60 s
        if path.exists():
            return True
        time.sleep(0.01)
    return False

def gated(tag):
    saw = None
    try:
        yield b"first chunk;"
        saw = _wait(GATE / (tag + ".go"))
        yield b"second chunk;"
        yield "third (a str) \\u00e9"
    finally:
        (GATE / (tag + ".finished")).write_text(json.dumps(saw))

def endless(tag):
    n = 0
    try:
        while True:
            yield b"tick %d;" % n
            n += 1
    finally:
        (GATE / (tag + ".closed")).write_text(str(n))

def failing(tag, after):
    try:
        for i in range(after):
            yield b"part-%d;" % i
        raise RuntimeError("mid-stream-marker")
    finally:
        (GATE / (tag + ".finished")).write_text("1")

def stuck(tag):
    try:
        yield b"only part"
        _wait(GATE / (tag + ".release"))
        yield b"too late"
    finally:
        (GATE / (tag + ".closed")).write_text("1")

def early():
    raise InferenceError(422, "no tokens for that prompt")
    yield b"never"

def early_failure():
    raise RuntimeError("failed before the first chunk")
    yield b"never"

def exits():
    yield b"before "
    raise SystemExit(3)

def predict_fn(data, model):
    mode, tag = data["mode"], data.get("tag", "t")
    if mode == "gated":
        return gated(tag)
    if mode == "fixed":
        return iter([b"alpha;", b"beta;", "gamma \\u00e9"])
    if mode == "tokens":
        return (f"token-{i} ".encode() for i in range(50))
    if mode == "endless":
        return endless(tag)
    if mode == "failing":
        return failing(tag, data.get("after", 2))
    if mode == "stuck":
        return stuck(tag)
    if mode == "early":
        return early()
    if mode == "early-failure":
        return early_failure()
    if mode == "not-bytes":
        return iter([b"fine", 42])
    if mode == "exits":
        return exits()
    return "whole answer"  # not a stream

def output_fn(prediction, accept):
    return prediction, "text/plain"
"""
)

EXPECTED = b"first chunk;second chunk;third (a str) \xc3\xa9"
FIXED = b"alpha;beta;gamma \xc3\xa9"
TOKENS = b"".join(f"token-{i} ".encode() for i in range(50))


@pytest.fixture
def gate(tmp_path):
    folder = tmp_path / "gate"
    folder.mkdir()
    return folder


@pytest.fixture
def streamer_dir(tmp_path):
    folder = tmp_path / "streamer"
    folder.mkdir()
    write_script(folder, STREAMER)
    return folder


@pytest.fixture
def streamer(start_server, streamer_dir, gate):
    return start_server(
        streamer_dir, "--workers", "1", "--batch-size", "8", env={"AIOPS_TEST_GATE": str(gate)}
    )


def body(mode: str, tag: str = "t", **more) -> bytes:
    return json.dumps({"mode": mode, "tag": tag, **more}).encode()


def post(port: int, data: bytes, path: str = "/invocations", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    return conn, conn.getresponse()


def raw_exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send one raw request, read until the server closes: (head, body as sent on the wire)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    return head, payload


def chunks_of(wire: bytes) -> list[bytes] | None:
    """The chunks of a chunked body as framed on the wire, once it is complete (None before)."""
    chunks = []
    while True:
        size_line, crlf, wire = wire.partition(b"\r\n")
        if not crlf:
            return None
        size = int(size_line, 16)
        if size == 0:
            return chunks if wire == b"\r\n" else None
        if len(wire) < size + 2:
            return None
        chunks.append(wire[:size])
        assert wire[size : size + 2] == b"\r\n"
        wire = wire[size + 2 :]


def read_chunked(sock: socket.socket) -> tuple[bytes, list[bytes]]:
    """Read one chunked HTTP/1.1 answer off ``sock`` (the connection stays open): (head, chunks)."""
    raw = b""
    while True:
        data = sock.recv(65536)
        assert data, f"the server closed the connection mid-answer: {raw!r}"
        raw += data
        head, blank, wire = raw.partition(b"\r\n\r\n")
        if blank and (chunks := chunks_of(wire)) is not None:
            return head, chunks


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r"\] (WARNING|ERROR|CRITICAL) ", line)]


def test_invocations_streams_chunked_and_each_chunk_arrives_before_the_generator_ends(streamer, gate):
    conn, resp = post(
        streamer.port, body("gated", "a"), headers={"X-Amzn-SageMaker-Custom-Attributes": "k=v"}
    )
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked" and resp.getheader("Content-Length") is None
    assert resp.getheader("Content-Type") == "text/plain"
    assert resp.getheader("X-Amzn-SageMaker-Custom-Attributes") == "k=v"
    first = resp.read1()
    assert first == b"first chunk;"
    assert not (gate / "a.finished").exists()  # the generator waits for us: the chunk came first
    (gate / "a.go").write_text("1")
    assert first + resp.read() == EXPECTED
    assert json.loads((gate / "a.finished").read_text()) is True  # it went on because we had the chunk
    conn.request("GET", "/ping")  # the stream completed: the connection is kept alive
    assert conn.getresponse().status == 200
    assert "batch size 1" in streamer.log()  # a streamed handler is served unbatched (it did not declare it)


def test_boto3_invoke_endpoint_with_response_stream_iterates_the_parts(streamer, gate):
    client = runtime_client(streamer.url)
    response = client.invoke_endpoint_with_response_stream(
        EndpointName="lm",
        Body=body("gated", "b"),
        ContentType="application/json",
        Accept="text/plain",
        CustomAttributes="trace=1",
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["ContentType"] == "text/plain"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert response["CustomAttributes"] == "trace=1"
    events = iter(response["Body"])
    assert next(events) == {"PayloadPart": {"Bytes": b"first chunk;"}}
    assert not (gate / "b.finished").exists()
    (gate / "b.go").write_text("1")
    rest = b"".join(event["PayloadPart"]["Bytes"] for event in events)
    assert b"first chunk;" + rest == EXPECTED
    assert json.loads((gate / "b.finished").read_text()) is True
    # the handler got the body, its content type, and the Accept boto3 sends as X-Amzn-SageMaker-Accept
    assert json.loads((gate / "b.seen").read_text()) == {
        "body": body("gated", "b").decode(),
        "content_type": "application/json",
        "accept": "text/plain",
    }


def test_same_bytes_streamed_chunked_event_stream_and_whole(streamer):
    _, resp = post(streamer.port, body("fixed"))
    assert resp.getheader("Transfer-Encoding") == "chunked" and resp.read() == FIXED
    data = body("fixed")
    with socket.create_connection(("127.0.0.1", streamer.port), timeout=60) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: %d"
            b"\r\n\r\n%s" % (len(data), data)
        )
        _, chunks = read_chunked(sock)
    assert chunks == [b"alpha;", b"beta;", "gamma \u00e9".encode()]  # one HTTP chunk per item
    client = runtime_client(streamer.url)
    for mode, expected in (("fixed", FIXED), ("tokens", TOKENS)):
        parts = client.invoke_endpoint_with_response_stream(
            EndpointName="e", Body=body(mode), ContentType="application/json"
        )["Body"]
        assert b"".join(e["PayloadPart"]["Bytes"] for e in parts) == expected
        whole = client.invoke_endpoint(EndpointName="e", Body=body(mode), ContentType="application/json")
        assert whole["Body"].read() == expected and whole["ContentType"] == "text/plain"
        # a client that cannot stream (HTTP/1.0) gets the whole body with a Content-Length, no chunks
        data = body(mode)
        head, payload = raw_exchange(
            streamer.port,
            b"POST /invocations HTTP/1.0\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data),
        )
        assert b"chunked" not in head.lower()
        assert b"content-length: %d" % len(expected) in head.lower() and payload == expected
    # a handler answering whole bytes on the response-stream route: one PayloadPart
    parts = client.invoke_endpoint_with_response_stream(
        EndpointName="e", Body=body("whole"), ContentType="application/json"
    )["Body"]
    assert [e["PayloadPart"]["Bytes"] for e in parts] == [b"whole answer"]


def test_client_disconnect_stops_the_generator(streamer, gate):
    conn, resp = post(streamer.port, body("endless", "c"))
    assert resp.read1().startswith(b"tick 0;")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    count = wait_until(
        lambda: (gate / "c.closed").exists() and (gate / "c.closed").read_text(),
        "the endless generator closed after the client left",
    )
    assert int(count) >= 1
    wait_until(lambda: "generation stopped" in streamer.log(), "the disconnect log line")
    line = next(x for x in streamer.log().splitlines() if "generation stopped" in x)
    assert "client disconnected after" in line and "streamed chunks" in line
    # the same with boto3 closing its stream after the first event
    response = runtime_client(streamer.url).invoke_endpoint_with_response_stream(
        EndpointName="e", Body=body("endless", "d"), ContentType="application/json"
    )
    assert next(iter(response["Body"]))["PayloadPart"]["Bytes"].startswith(b"tick 0;")
    response["Body"].close()
    wait_until(lambda: (gate / "d.closed").exists(), "the generator closed after boto3 closed its stream")
    assert streamer.invoke(body("fixed")).body == FIXED  # the worker serves on


def test_a_generator_failing_mid_stream_truncates_chunked_with_one_log_line(streamer, gate):
    _, resp = post(streamer.port, body("failing", "f"))
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert info.value.partial == b"part-0;part-1;"
    wait_until(lambda: (gate / "f.finished").exists(), "the generator's finally")
    assert streamer.request("GET", "/ping").status == 200
    assert streamer.invoke(body("fixed")).body == FIXED  # and the server is still fine
    lines = error_lines(streamer.log())
    assert len(lines) == 1, lines  # one line: no traceback, nothing from a second layer
    assert "streamed response failed: RuntimeError: mid-stream-marker" in lines[0]
    assert "after 2 chunks" in lines[0] and "chunked body truncated" in lines[0]


def test_a_generator_failing_mid_stream_ends_the_event_stream_with_model_stream_error(streamer, gate):
    from botocore.exceptions import EventStreamError

    response = runtime_client(streamer.url).invoke_endpoint_with_response_stream(
        EndpointName="e", Body=body("failing", "g", after=3), ContentType="application/json"
    )
    got = []
    with pytest.raises(EventStreamError) as err:
        for event in response["Body"]:
            got.append(event["PayloadPart"]["Bytes"])
    assert got == [b"part-0;", b"part-1;", b"part-2;"]
    error = err.value.response["Error"]
    assert error["Code"] == "ModelStreamError"
    assert "RuntimeError" in error["Message"] and "server log" in error["Message"]
    wait_until(lambda: (gate / "g.finished").exists(), "the generator's finally")
    assert streamer.request("GET", "/ping").status == 200
    assert streamer.invoke(body("fixed")).body == FIXED


def test_a_generator_failing_before_its_first_chunk_is_an_ordinary_error(streamer):
    r = streamer.invoke(body("early"))
    assert r.status == 422 and r.json()["error"] == "no tokens for that prompt"
    assert r.headers.get("transfer-encoding") is None
    r = streamer.invoke(body("early-failure"))
    assert r.status == 500 and "RuntimeError" in r.json()["error"]
    assert r.headers.get("transfer-encoding") is None
    from botocore.exceptions import ClientError

    for mode, status in (("early", 422), ("early-failure", 500)):
        with pytest.raises(ClientError) as info:
            runtime_client(streamer.url).invoke_endpoint_with_response_stream(
                EndpointName="e", Body=body(mode), ContentType="application/json"
            )
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_items_that_are_not_bytes_or_str_fail_the_stream_clearly(streamer):
    _, resp = post(streamer.port, body("not-bytes"))
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert info.value.partial == b"fine"
    wait_until(lambda: "yielded int; each item must be bytes or str" in streamer.log(), "the log line")


def test_even_system_exit_from_a_generator_only_ends_its_own_stream(streamer):
    _, resp = post(streamer.port, body("exits"))
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    wait_until(lambda: "streamed response failed: SystemExit" in streamer.log(), "the stream's failure line")
    assert streamer.invoke(body("fixed")).body == FIXED  # still serving, the same worker
    assert streamer.proc.poll() is None


def test_a_stuck_generator_times_out_with_the_model_stream_error(start_server, streamer_dir, gate):
    from botocore.exceptions import EventStreamError

    server = start_server(
        streamer_dir, "--workers", "1", "--timeout", "1", env={"AIOPS_TEST_GATE": str(gate)}
    )
    response = runtime_client(server.url).invoke_endpoint_with_response_stream(
        EndpointName="e", Body=body("stuck", "s"), ContentType="application/json"
    )
    events = iter(response["Body"])
    assert next(events)["PayloadPart"]["Bytes"] == b"only part"
    with pytest.raises(EventStreamError) as info:
        next(events)
    assert info.value.response["Error"]["Code"] == "ModelStreamError"
    assert not (gate / "s.closed").exists()  # the generator is still blocked in its own code
    (gate / "s.release").write_text("1")
    wait_until(lambda: (gate / "s.closed").exists(), "the producer stopping at its next yield")
    wait_until(lambda: "streamed response timed out" in server.log(), "the timeout log line")


def test_a_ping_is_answered_while_a_stream_is_open(streamer, gate):
    conn, resp = post(streamer.port, body("gated", "p"))
    assert resp.read1() == b"first chunk;"
    assert streamer.request("GET", "/ping").status == 200  # one worker, one stream open and waiting
    assert streamer.invoke(body("fixed")).body == FIXED  # and another request is served meanwhile
    (gate / "p.go").write_text("1")
    assert resp.read() == EXPECTED[len(b"first chunk;") :]


BATCHED = (
    NO_TORCH_MODEL_FN
    + """
import json, os, time
from pathlib import Path
aiops_stream = True
aiops_batch = True
GATE = Path(os.environ["AIOPS_TEST_GATE"])

def predict_fn(data, model, context):
    rows = [int(row[0]) for row in data]
    if rows == [-1]:  # holds the inference thread until the test has both other requests queued
        (GATE / "holding").write_text("1")
        for _ in range(6000):
            if (GATE / "release").exists():
                break
            time.sleep(0.01)
        return iter([b"held"])
    with open(GATE / "calls", "a") as f:
        f.write(json.dumps(rows) + "\\n")
    return batched(rows)

def batched(rows):
    try:
        for step in range(20):  # one entry per request at each step
            yield [f"r{row}s{step};" for row in rows]
    finally:
        (GATE / "batch.closed").write_text("1")

def output_fn(prediction, accept):
    return prediction, "text/plain"
"""
)


def _unread_by_server(port: int, client_port: int) -> int | None:
    """Bytes the server's socket of this connection holds unread (/proc/net/tcp rx_queue)."""
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
            if int(local, 16) == port and int(remote, 16) == client_port:
                return int(fields[4].split(":")[1], 16)
    return None


def _read_response(sock: socket.socket) -> bytes:
    head, chunks = read_chunked(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    return b"".join(chunks)


def test_a_batched_stream_is_split_into_one_stream_per_request_by_a_real_server(start_server, tmp_path, gate):
    """Two requests run as one batch (one predict_fn generator), each answered by its own stream:
    one chunked, one as event-stream frames. A first request holds the inference thread until the
    server has read both (its kernel receive queues are empty), so they are queued together."""
    from botocore.eventstream import EventStreamBuffer

    folder = tmp_path / "batched"
    write_script(folder, BATCHED)
    server = start_server(
        folder,
        "--workers",
        "1",
        "--batch-size",
        "8",
        env={"AIOPS_TEST_GATE": str(gate), "AIOPS_SERVE__INLINE_CALL_MS": "0"},
    )
    assert "batch size 8" in server.log()
    held = {}
    holder = threading.Thread(target=lambda: held.update(r=server.invoke(b"[[-1]]")))
    holder.start()
    wait_until(lambda: (gate / "holding").exists(), "the first request inside the handler")
    socks = []
    for path, data in (("/invocations", b"[[0]]"), ("/endpoints/e/invocations-response-stream", b"[[1]]")):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        sock.sendall(
            b"POST %s HTTP/1.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data)
        )
        socks.append(sock)
    wait_until(
        lambda: all(_unread_by_server(server.port, s.getsockname()[1]) == 0 for s in socks),
        "both requests read by the server",
    )
    (gate / "release").write_text("1")
    chunked = _read_response(socks[0])
    buffer = EventStreamBuffer()
    buffer.add_data(_read_response(socks[1]))
    events = [message.payload for message in buffer]
    for sock in socks:
        sock.close()
    holder.join(60)
    assert held["r"].body == b"held"
    assert chunked == b"".join(f"r0s{i};".encode() for i in range(20))
    assert b"".join(events) == b"".join(f"r1s{i};".encode() for i in range(20))
    calls = [json.loads(line) for line in (gate / "calls").read_text().splitlines()]
    assert [sorted(rows) for rows in calls] == [[0, 1]]  # one predict_fn call for both requests
    assert (gate / "batch.closed").exists()
