"""The LM example's streaming handler (training/examples/lm/inference_stream.py) served by a real
`aiops serve` process: tokens one per chunk, equal to the in-process generator, through chunked
HTTP and an unmodified boto3 response stream; sampling, the token cap and bad requests."""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import runtime_client

torch = pytest.importorskip("torch")

from aiops.inference import streaming  # noqa: E402
from aiops.inference.handler import Handler  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "training" / "examples" / "lm"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A model folder as the example's train.py writes it, with the streaming handler in code/."""
    lm_model = _load("lm_model_for_stream_test", EXAMPLE / "lm_model.py")
    folder = tmp_path_factory.mktemp("lm-example")
    code = folder / "code"
    code.mkdir()
    for name in ("lm_model.py", "inference.py", "inference_stream.py"):
        shutil.copy(EXAMPLE / name, code / name)
    torch.manual_seed(0)
    cfg = lm_model.ModelConfig(seq_len=64, d_model=32, n_layers=2, n_heads=4)
    model = lm_model.ByteLM(cfg).eval()
    torch.save(model.state_dict(), folder / "model.pth")
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "weights": "model.pth"}))
    return folder, lm_model, model


@pytest.fixture(scope="module")
def stream_fns(lm_dir):
    """The handler's own sampling, in this process (the reference for the served tokens)."""
    folder, _, _ = lm_dir
    for name in ("inference", "lm_model"):  # the handler's sibling imports must find this code/
        sys.modules.pop(name, None)
    return _load("lm_inference_stream_for_test", folder / "code" / "inference_stream.py")


@pytest.fixture
def served(start_server, lm_dir):
    folder, _, _ = lm_dir
    return start_server(
        folder,
        "--workers",
        "1",
        "--batch-size",
        "4",
        env={"SAGEMAKER_PROGRAM": "inference_stream.py", "AIOPS_LM_MAX_NEW_TOKENS": "40"},
    )


def request(prompt: str, **parameters) -> bytes:
    return json.dumps({"inputs": prompt, "parameters": parameters}).encode()


def post(server, body: bytes, accept: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    headers = {"Content-Type": "application/json", **({"Accept": accept} if accept else {})}
    conn.request("POST", "/invocations", body=body, headers=headers)
    resp = conn.getresponse()
    parts = []
    while chunk := resp.read1():
        parts.append(chunk)
    return resp, parts


def test_greedy_tokens_stream_and_match_the_in_process_generator(served, lm_dir):
    _, lm_model, model = lm_dir
    expected = bytes(t for t in lm_model.generate(model, list(b"def "), 30))
    resp, parts = post(served, request("def ", max_new_tokens=30))
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Type") == "text/plain"
    assert b"".join(parts) == expected
    events = runtime_client(served.url).invoke_endpoint_with_response_stream(
        EndpointName="lm", Body=request("def ", max_new_tokens=30), ContentType="application/json"
    )["Body"]
    payloads = [e["PayloadPart"]["Bytes"] for e in events]
    assert b"".join(payloads) == expected
    assert len(payloads) == len(expected)  # one token per event, as generated
    assert "batch size 1" in served.log()  # declared aiops_stream, not aiops_batch: unbatched


def test_sampling_is_repeatable_with_a_seed_and_jsonlines_names_each_token(served, lm_dir, stream_fns):
    _, _, model = lm_dir
    seeded = [
        b"".join(post(served, request("abc", max_new_tokens=40, temperature=1.5, seed=s))[1])
        for s in (7, 7, 8)
    ]
    assert seeded[0] == seeded[1] == bytes(stream_fns.sample(model, list(b"abc"), 40, 1.5, 7))
    assert seeded[2] == bytes(stream_fns.sample(model, list(b"abc"), 40, 1.5, 8))
    assert seeded[0] != seeded[2]
    resp, parts = post(served, request("Hi", max_new_tokens=12), accept="application/jsonlines")
    assert resp.getheader("Content-Type") == "application/jsonlines"
    lines = [json.loads(line) for line in b"".join(parts).splitlines()]
    assert [d["token"]["id"] for d in lines] == list(stream_fns.sample(model, list(b"Hi"), 12, 0.0))


BAD = [
    (
        request("x", max_new_tokens=41),
        "max_new_tokens=41 is over this server's limit of 40 (AIOPS_LM_MAX_NEW_TOKENS)",
    ),
    (b"not json", "not valid JSON"),
    (b'{"parameters": {}}', 'expected {"inputs"'),
    (request("x", top_k=3), "unknown parameters ['top_k']"),
    (request("x", temperature=-1), "temperature must be"),
    (request("x", max_new_tokens=0), "positive integer"),
]


def test_bad_requests_are_400_before_any_token(served):
    for body, message in BAD:
        r = served.invoke(body)
        assert r.status == 400 and message in r.json()["error"], (body, r.body)
        assert r.headers.get("transfer-encoding") is None
    assert served.request("GET", "/ping").status == 200


def test_the_handler_declares_itself_streamed_so_it_is_served_unbatched(lm_dir):
    folder, _, _ = lm_dir
    for name in ("inference", "lm_model"):
        sys.modules.pop(name, None)
    handler = Handler(folder, script=folder / "code" / "inference_stream.py", code_dir=folder / "code")
    assert handler.batchable is False and streaming.batchable(handler.module, True) is False
