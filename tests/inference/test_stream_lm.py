"""The LM streaming handler (streaming_lm.py) loaded by the real Handler, served over real sockets."""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from stream_servers import AsgiStreamServer, runtime_client

torch = pytest.importorskip("torch")

from aiops.inference import streaming  # noqa: E402
from aiops.inference.handler import Context, Handler  # noqa: E402

LM_SOURCE = Path(__file__).with_name("streaming_lm.py")


def _lm_module():
    spec = importlib.util.spec_from_file_location("streaming_lm_in_process", LM_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    lm = _lm_module()
    torch.manual_seed(0)
    model = lm.TinyCausalLM(d_model=32, n_layers=2, n_heads=4, context=64)
    folder = tmp_path_factory.mktemp("lm")
    torch.save(model.state_dict(), folder / "model.pth")
    (folder / "config.json").write_text(json.dumps(model.config))
    (folder / "code").mkdir()
    shutil.copy(LM_SOURCE, folder / "code" / "inference.py")
    return folder


@pytest.fixture(scope="module")
def lm_handler(lm_dir):
    handler = Handler(lm_dir, script=lm_dir / "code" / "inference.py", code_dir=lm_dir / "code")
    handler.load()
    return handler


@pytest.fixture
def served(lm_dir, lm_handler):
    handler = lm_handler

    def respond(path, body, ctype, accept):
        return streaming.invoke(handler, body, ctype, accept, Context(model_dir=str(lm_dir), accept=accept))

    with AsgiStreamServer(respond) as server:
        yield server


@pytest.fixture(scope="module")
def in_process(lm_dir):
    lm = _lm_module()
    return lm, lm.model_fn(str(lm_dir))


def request(prompt: str, **parameters) -> bytes:
    return json.dumps({"inputs": prompt, "parameters": parameters}).encode()


def post(server, body: bytes, accept: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Content-Type": "application/json", **({"Accept": accept} if accept else {})}
    conn.request("POST", "/invocations", body=body, headers=headers)
    resp = conn.getresponse()
    parts = []
    while chunk := resp.read1():
        parts.append(chunk)
    return resp, parts


def test_greedy_tokens_stream_one_per_chunk_and_match_the_in_process_generator(served, in_process):
    lm, model = in_process
    expected = bytes(lm.generate(model, b"Hello", 24))
    resp, parts = post(served, request("Hello", max_new_tokens=24))
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/plain"
    assert b"".join(parts) == expected
    assert served.next_outcome().chunks == 24  # one token per chunk, as generated
    events = runtime_client(served.url).invoke_endpoint_with_response_stream(
        EndpointName="lm", Body=request("Hello", max_new_tokens=24), ContentType="application/json")["Body"]
    assert b"".join(e["PayloadPart"]["Bytes"] for e in events) == expected


def test_temperature_sampling_is_repeatable_with_a_seed(served, in_process):
    lm, model = in_process
    seeded = [b"".join(post(served, request("abc", max_new_tokens=40, temperature=1.5, seed=s))[1]) for s in (7, 7, 8)]
    assert seeded[0] == seeded[1] == bytes(lm.generate(model, b"abc", 40, 1.5, 7))
    assert seeded[2] == bytes(lm.generate(model, b"abc", 40, 1.5, 8))
    assert seeded[0] != seeded[2]
    greedy = bytes(lm.generate(model, b"abc", 40))
    assert seeded[0] != greedy


def test_jsonlines_output_streams_token_ids_and_text(served, in_process):
    lm, model = in_process
    expected = list(lm.generate(model, b"Hi", 12))
    resp, parts = post(served, request("Hi", max_new_tokens=12), accept="application/jsonlines")
    assert resp.getheader("Content-Type") == "application/jsonlines"
    lines = [json.loads(line) for line in b"".join(parts).splitlines()]
    assert [d["token"]["id"] for d in lines] == expected
    assert "".join(d["token"]["text"] for d in lines) == bytes(expected).decode("utf-8", "replace")


def test_max_new_tokens_is_capped_by_configuration(served, monkeypatch):
    monkeypatch.setenv("AIOPS_LM_MAX_NEW_TOKENS", "8")
    resp, parts = post(served, request("x", max_new_tokens=9))
    assert resp.status == 400
    assert "max_new_tokens=9 is over this server's limit of 8 (AIOPS_LM_MAX_NEW_TOKENS)" in json.loads(
        b"".join(parts))["error"]
    resp, parts = post(served, request("x", max_new_tokens=8))
    assert resp.status == 200 and len(b"".join(parts)) == 8
    resp, parts = post(served, request("x"))  # the default (20, as TGI) is bounded too
    assert resp.status == 200 and len(b"".join(parts)) == 8


@pytest.mark.parametrize("body, message", [
    (b"not json", "not valid JSON"),
    (b'{"prompt": "x"}', 'expected {"inputs"'),
    (json.dumps({"inputs": "x", "parameters": {"top_k": 3}}).encode(), "unknown parameters ['top_k']"),
    (json.dumps({"inputs": "x", "parameters": {"temperature": -1}}).encode(), "temperature must be"),
    (json.dumps({"inputs": "x", "parameters": {"max_new_tokens": 0}}).encode(), "positive integer"),
])
def test_bad_requests_are_400_before_any_token(served, body, message):
    resp, parts = post(served, body)
    assert resp.status == 400
    assert message in json.loads(b"".join(parts))["error"]


def test_the_lm_handler_declares_itself_streamed_so_it_is_served_unbatched(lm_dir):
    handler = Handler(lm_dir, script=lm_dir / "code" / "inference.py", code_dir=lm_dir / "code")
    assert streaming.batchable(handler.module, handler.batchable) is False
