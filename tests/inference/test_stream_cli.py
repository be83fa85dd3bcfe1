"""`aiops invoke --stream` (the real CLI in a subprocess) against a real streaming server."""

from __future__ import annotations

import threading

import pytest
from stream_servers import AsgiStreamServer

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


def tokens(n: int, fail: bool = False):
    for i in range(n):
        yield f"tok{i} "
    if fail:
        raise RuntimeError("generation failed")


@pytest.fixture
def server():
    state = {"respond": lambda *a: (tokens(5), "text/plain"), "seen": []}

    def respond(path, body, ctype, accept):
        state["seen"].append((path, accept))
        return state["respond"](path, body, ctype, accept)

    with AsgiStreamServer(respond) as srv:
        srv.state = state
        yield srv


def test_stream_from_a_local_server_prints_chunks_and_rates(run_cli, server):
    result = run_cli("invoke", "--stream", "--url", server.url, "--data", '{"inputs": "hi"}')
    assert result.returncode == 0, result.output
    assert result.stdout == "tok0 tok1 tok2 tok3 tok4 \n"
    assert "HTTP 200 text/plain: 5 chunks, 25 bytes; first byte in" in result.stderr
    assert "chunks/s" in result.stderr
    assert server.state["seen"] == [("/invocations", "")]


def test_stream_from_an_endpoint_uses_invoke_endpoint_with_response_stream(run_cli, server):
    result = run_cli("invoke", "--stream", "--endpoint", "my-lm", "--data", '{"inputs": "hi"}',
                     "--accept", "text/plain", env={**AWS_ENV, "AWS_ENDPOINT_URL": server.url})
    assert result.returncode == 0, result.output
    assert result.stdout == "tok0 tok1 tok2 tok3 tok4 \n"
    assert "5 chunks, 25 bytes" in result.stderr and "first byte in" in result.stderr
    assert server.state["seen"] == [("/endpoints/my-lm/invocations-response-stream", "text/plain")]


def test_a_stream_failing_mid_way_is_one_error_line_after_the_chunks(run_cli, server):
    server.state["respond"] = lambda *a: (tokens(2, fail=True), "text/plain")
    result = run_cli("invoke", "--stream", "--endpoint", "my-lm", "--data", "{}",
                     env={**AWS_ENV, "AWS_ENDPOINT_URL": server.url})
    assert result.returncode == 1
    assert result.stdout.startswith("tok0 tok1 ")
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: streaming from endpoint my-lm after 2 chunks:")
    assert "ModelStreamError" in errors[0] and "Traceback" not in result.stderr
    local = run_cli("invoke", "--stream", "--url", server.url, "--data", "{}")
    assert local.returncode == 1
    assert "error: the stream from" in local.stderr and "broke after 2 chunks" in local.stderr


def test_output_file_is_replaced_only_by_a_complete_stream(run_cli, server, tmp_path):
    out = tmp_path / "answer.txt"
    out.write_text("keep me")
    server.state["respond"] = lambda *a: (tokens(2, fail=True), "text/plain")
    failed = run_cli("invoke", "--stream", "--url", server.url, "--data", "{}", "--output", str(out))
    assert failed.returncode == 1
    assert out.read_text() == "keep me" and not (tmp_path / "answer.txt.part").exists()
    server.state["respond"] = lambda *a: (tokens(3), "text/plain")
    done = run_cli("invoke", "--stream", "--url", server.url, "--data", "{}", "--output", str(out))
    assert done.returncode == 0, done.output
    assert out.read_text() == "tok0 tok1 tok2 " and f"wrote {out}" in done.stderr


def test_an_error_status_is_one_line(run_cli, server):
    class Bad(ValueError):
        status_code = 400

    def respond(*a):
        raise Bad("inputs is missing")

    server.state["respond"] = respond
    result = run_cli("invoke", "--stream", "--url", server.url, "--data", "{}")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: HTTP 400: inputs is missing"


def test_the_first_chunk_is_printed_before_the_stream_ends(server, tmp_path):
    """The CLI's own function: the callback sees chunk 1 while the generator is parked."""
    from aiops.inference.stream_client import stream_url

    gate, saw = threading.Event(), []

    def gated():
        yield b"one"
        saw.append(gate.wait(30))
        yield b"two"

    server.state["respond"] = lambda *a: (gated(), "text/plain")
    received = []

    def on_chunk(chunk):
        received.append(chunk)
        gate.set()

    result = stream_url(server.url, b"{}", content_type="application/json", on_chunk=on_chunk)
    assert received == [b"one", b"two"] and saw == [True]
    assert result.chunks == 2 and result.ttfb_ms is not None and result.ttfb_ms <= result.total_ms
