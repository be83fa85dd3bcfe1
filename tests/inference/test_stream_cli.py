"""`aiops invoke --stream` (the real CLI in a subprocess) against a real streaming `aiops serve`.

The handler runs in the server process: what it saw (the Accept of each request) and the gate of
the last test go through files in the folder ``AIOPS_TEST_GATE`` names."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import NO_TORCH_MODEL_FN, write_script

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}

TOKENS = (
    NO_TORCH_MODEL_FN
    + """
import json, os, time
from pathlib import Path
from aiops.inference.errors import InferenceError
aiops_stream = True
GATE = Path(os.environ["AIOPS_TEST_GATE"])

def input_fn(body, content_type, context):
    with open(GATE / "seen.jsonl", "a") as f:
        f.write(json.dumps({"accept": context.accept}) + "\\n")
    return json.loads(body)

def tokens(n, fail):
    for i in range(n):
        yield f"tok{i} "
    if fail:
        raise RuntimeError("generation failed")

def gated():
    yield b"one"
    for _ in range(3000):  # bounded: 30 s
        if (GATE / "go").exists():
            break
        time.sleep(0.01)
    (GATE / "saw").write_text(json.dumps((GATE / "go").exists()))
    yield b"two"

def predict_fn(data, model):
    if "missing" in data:
        raise InferenceError(400, "inputs is missing")
    if data.get("gated"):
        return gated()
    return tokens(data.get("tokens", 5), data.get("fail", False))

def output_fn(prediction, accept):
    return prediction, "text/plain"
"""
)


@pytest.fixture
def gate(tmp_path):
    folder = tmp_path / "gate"
    folder.mkdir()
    return folder


@pytest.fixture
def server(start_server, tmp_path, gate):
    folder = tmp_path / "tokens"
    write_script(folder, TOKENS)
    return start_server(folder, "--workers", "1", env={"AIOPS_TEST_GATE": str(gate)})


def seen(gate) -> list:
    return [json.loads(line)["accept"] for line in (gate / "seen.jsonl").read_text().splitlines()]


def test_stream_from_a_local_server_prints_chunks_and_rates(run_cli, server, gate):
    result = run_cli("invoke", "--stream", "--url", server.url, "--data", '{"inputs": "hi"}')
    assert result.returncode == 0, result.output
    assert result.stdout == "tok0 tok1 tok2 tok3 tok4 \n"
    assert "HTTP 200 text/plain: 5 chunks, 25 bytes; first byte in" in result.stderr
    assert "chunks/s" in result.stderr
    assert seen(gate) == [None]  # no Accept sent


def test_stream_from_an_endpoint_uses_invoke_endpoint_with_response_stream(run_cli, server, gate):
    result = run_cli(
        "invoke",
        "--stream",
        "--endpoint",
        "my-lm",
        "--data",
        '{"inputs": "hi"}',
        "--accept",
        "text/plain",
        env={**AWS_ENV, "AWS_ENDPOINT_URL": server.url},
    )
    assert result.returncode == 0, result.output
    assert result.stdout == "tok0 tok1 tok2 tok3 tok4 \n"
    assert "5 chunks, 25 bytes" in result.stderr and "first byte in" in result.stderr
    assert seen(gate) == ["text/plain"]  # boto3's X-Amzn-SageMaker-Accept on the response-stream route


def test_a_stream_failing_mid_way_is_one_error_line_after_the_chunks(run_cli, server):
    failing = json.dumps({"tokens": 2, "fail": True})
    result = run_cli(
        "invoke",
        "--stream",
        "--endpoint",
        "my-lm",
        "--data",
        failing,
        env={**AWS_ENV, "AWS_ENDPOINT_URL": server.url},
    )
    assert result.returncode == 1
    assert result.stdout.startswith("tok0 tok1 ")
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: streaming from endpoint my-lm after 2 chunks:")
    assert "ModelStreamError" in errors[0] and "Traceback" not in result.stderr
    local = run_cli("invoke", "--stream", "--url", server.url, "--data", failing)
    assert local.returncode == 1
    assert "error: the stream from" in local.stderr and "broke after 2 chunks" in local.stderr


def test_output_file_is_replaced_only_by_a_complete_stream(run_cli, server, tmp_path):
    out = tmp_path / "answer.txt"
    out.write_text("keep me")
    failing = json.dumps({"tokens": 2, "fail": True})
    failed = run_cli("invoke", "--stream", "--url", server.url, "--data", failing, "--output", str(out))
    assert failed.returncode == 1
    assert out.read_text() == "keep me" and not (tmp_path / "answer.txt.part").exists()
    done = run_cli(
        "invoke", "--stream", "--url", server.url, "--data", json.dumps({"tokens": 3}), "--output", str(out)
    )
    assert done.returncode == 0, done.output
    assert out.read_text() == "tok0 tok1 tok2 " and f"wrote {out}" in done.stderr


def test_an_error_status_is_one_line(run_cli, server):
    result = run_cli("invoke", "--stream", "--url", server.url, "--data", '{"missing": true}')
    assert result.returncode == 1
    # one line: the status, the handler's message and the request id the server's JSON error names
    line = r"error: HTTP 400: inputs is missing \(request [0-9a-f]+-[0-9a-f]+\)"
    assert re.fullmatch(line, result.stderr.strip())


def test_the_first_chunk_is_printed_before_the_stream_ends(server, gate):
    """The CLI's own function: the callback sees chunk 1 while the generator is parked."""
    from aiops.inference.client.stream import stream_url

    received = []

    def on_chunk(chunk):
        received.append(chunk)
        (gate / "go").write_text("1")

    result = stream_url(server.url, b'{"gated": true}', content_type="application/json", on_chunk=on_chunk)
    assert received == [b"one", b"two"] and json.loads((gate / "saw").read_text()) is True
    assert result.chunks == 2 and result.ttfb_ms is not None and result.ttfb_ms <= result.total_ms
