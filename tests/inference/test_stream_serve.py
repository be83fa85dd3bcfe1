"""Streamed responses from real `aiops serve` processes: chunked /invocations, the response-stream
route through an unmodified boto3 client, disconnects, failures mid-stream.

The handler runs in the server process, so it and the test meet through files: a generator waits
for the file the test writes once it has the first chunk, and writes a file in its ``finally``.
"Chunks arrive before the generator finishes" is proven by that order, never by timing.
"""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from helpers import wait_until
from stream_servers import runtime_client

from .conftest import save_double, write_script

STREAMER = '''
import json, os, time
from pathlib import Path
from aiops.inference.errors import InferenceError
aiops_stream = True
GATE = Path(os.environ["AIOPS_TEST_GATE"])

def model_fn(model_dir):
    return "no model"

def input_fn(body, content_type):
    return json.loads(body)

def _wait(path):
    for _ in range(6000):  # bounded: 60 s
        if path.exists():
            return True
        time.sleep(0.01)
    return False

def gated(tag):
    try:
        yield b"first chunk;"
        _wait(GATE / (tag + ".go"))
        yield b"second chunk;"
        yield "third (a str) \\u00e9"
    finally:
        (GATE / (tag + ".finished")).write_text("1")

def endless(tag):
    n = 0
    try:
        while True:
            yield b"tick %d;" % n
            n += 1
    finally:
        (GATE / (tag + ".closed")).write_text(str(n))

def failing(tag):
    yield b"part-0;"
    yield b"part-1;"
    raise RuntimeError("mid-stream-marker")

def early():
    raise InferenceError(422, "no tokens for that prompt")
    yield b"never"

def predict_fn(data, model):
    mode, tag = data["mode"], data.get("tag", "t")
    if mode == "gated":
        return gated(tag)
    if mode == "fixed":
        return iter([b"alpha;", b"beta;", "gamma \\u00e9"])
    if mode == "endless":
        return endless(tag)
    if mode == "failing":
        return failing(tag)
    if mode == "early":
        return early()
    return "whole answer"  # not a stream

def output_fn(prediction, accept):
    return prediction, "text/plain"
'''

EXPECTED = b"first chunk;second chunk;third (a str) \xc3\xa9"
FIXED = b"alpha;beta;gamma \xc3\xa9"


@pytest.fixture
def gate(tmp_path):
    folder = tmp_path / "gate"
    folder.mkdir()
    return folder


@pytest.fixture
def streamer(start_server, tmp_path, gate):
    folder = save_double(tmp_path / "streamer")
    write_script(folder, STREAMER)
    return start_server(folder, "--workers", "1", "--batch-size", "8", env={"AIOPS_TEST_GATE": str(gate)})


def body(mode: str, tag: str = "t") -> bytes:
    return json.dumps({"mode": mode, "tag": tag}).encode()


def post(port: int, data: bytes, path: str = "/invocations", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    return conn, conn.getresponse()


def test_invocations_streams_chunked_and_each_chunk_arrives_before_the_generator_ends(streamer, gate):
    conn, resp = post(streamer.port, body("gated", "a"), headers={"X-Amzn-SageMaker-Custom-Attributes": "k=v"})
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked" and resp.getheader("Content-Length") is None
    assert resp.getheader("Content-Type") == "text/plain"
    assert resp.getheader("X-Amzn-SageMaker-Custom-Attributes") == "k=v"
    first = resp.read1()
    assert first == b"first chunk;"
    assert not (gate / "a.finished").exists()  # the generator waits for us: the chunk came first
    (gate / "a.go").write_text("1")
    assert first + resp.read() == EXPECTED
    assert (gate / "a.finished").exists()
    conn.request("GET", "/ping")  # the connection is kept alive after a complete stream
    assert conn.getresponse().status == 200
    assert "batch size 1" in streamer.log()  # a streamed handler is served unbatched (it did not declare it)


def test_boto3_invoke_endpoint_with_response_stream_iterates_the_parts(streamer, gate):
    client = runtime_client(streamer.url)
    response = client.invoke_endpoint_with_response_stream(
        EndpointName="lm", Body=body("gated", "b"), ContentType="application/json", Accept="text/plain",
        CustomAttributes="trace=1")
    assert response["ContentType"] == "text/plain"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert response["CustomAttributes"] == "trace=1"
    events = iter(response["Body"])
    assert next(events) == {"PayloadPart": {"Bytes": b"first chunk;"}}
    assert not (gate / "b.finished").exists()
    (gate / "b.go").write_text("1")
    rest = b"".join(event["PayloadPart"]["Bytes"] for event in events)
    assert b"first chunk;" + rest == EXPECTED


def test_same_bytes_streamed_as_event_stream_and_whole(streamer):
    _, resp = post(streamer.port, body("fixed"))
    assert resp.getheader("Transfer-Encoding") == "chunked" and resp.read() == FIXED
    client = runtime_client(streamer.url)
    parts = client.invoke_endpoint_with_response_stream(EndpointName="e", Body=body("fixed"),
                                                        ContentType="application/json")["Body"]
    assert b"".join(e["PayloadPart"]["Bytes"] for e in parts) == FIXED
    whole = client.invoke_endpoint(EndpointName="e", Body=body("fixed"), ContentType="application/json")
    assert whole["Body"].read() == FIXED and whole["ContentType"] == "text/plain"
    with socket.create_connection(("127.0.0.1", streamer.port), timeout=60) as sock:  # HTTP/1.0: no chunking
        data = body("fixed")
        sock.sendall(b"POST /invocations HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(data), data))
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(FIXED) in head.lower() and payload == FIXED
    # a handler answering whole bytes on the response-stream route: one PayloadPart
    parts = client.invoke_endpoint_with_response_stream(EndpointName="e", Body=body("whole"),
                                                        ContentType="application/json")["Body"]
    assert [e["PayloadPart"]["Bytes"] for e in parts] == [b"whole answer"]


def test_client_disconnect_stops_the_generator(streamer, gate):
    conn, resp = post(streamer.port, body("endless", "c"))
    assert resp.read1().startswith(b"tick 0;")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    count = wait_until(lambda: (gate / "c.closed").exists() and (gate / "c.closed").read_text(),
                       "the endless generator closed after the client left")
    assert int(count) >= 1
    wait_until(lambda: "generation stopped" in streamer.log(), "the disconnect log line")
    # the same with boto3 closing its stream after the first event
    response = runtime_client(streamer.url).invoke_endpoint_with_response_stream(
        EndpointName="e", Body=body("endless", "d"), ContentType="application/json")
    assert next(iter(response["Body"]))["PayloadPart"]["Bytes"].startswith(b"tick 0;")
    response["Body"].close()
    wait_until(lambda: (gate / "d.closed").exists(), "the generator closed after boto3 closed its stream")
    assert streamer.invoke(body("fixed")).body == FIXED  # the worker serves on


def test_a_generator_failing_mid_stream_truncates_chunked_and_sends_the_error_event(streamer):
    from botocore.exceptions import EventStreamError

    _, resp = post(streamer.port, body("failing"))
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert info.value.partial == b"part-0;part-1;"
    wait_until(lambda: "mid-stream-marker" in streamer.log(), "the log line naming the failure")
    line = next(x for x in streamer.log().splitlines() if "mid-stream-marker" in x)
    assert "streamed response failed: RuntimeError" in line and "chunked body truncated" in line
    response = runtime_client(streamer.url).invoke_endpoint_with_response_stream(
        EndpointName="e", Body=body("failing"), ContentType="application/json")
    got = []
    with pytest.raises(EventStreamError) as err:
        for event in response["Body"]:
            got.append(event["PayloadPart"]["Bytes"])
    assert got == [b"part-0;", b"part-1;"]
    assert err.value.response["Error"]["Code"] == "ModelStreamError"
    assert "RuntimeError" in err.value.response["Error"]["Message"]
    assert streamer.request("GET", "/ping").status == 200
    assert streamer.invoke(body("fixed")).body == FIXED


def test_a_generator_failing_before_its_first_chunk_is_an_ordinary_error(streamer):
    r = streamer.invoke(body("early"))
    assert r.status == 422 and r.json()["error"] == "no tokens for that prompt"
    assert r.headers.get("transfer-encoding") is None
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        runtime_client(streamer.url).invoke_endpoint_with_response_stream(
            EndpointName="e", Body=body("early"), ContentType="application/json")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 422


def test_a_ping_is_answered_while_a_stream_is_open(streamer, gate):
    conn, resp = post(streamer.port, body("gated", "p"))
    assert resp.read1() == b"first chunk;"
    assert streamer.request("GET", "/ping").status == 200  # one worker, one stream open and waiting
    assert streamer.invoke(body("fixed")).body == FIXED  # and another request is served meanwhile
    (gate / "p.go").write_text("1")
    assert resp.read() == EXPECTED[len(b"first chunk;"):]
