"""The streaming handler for the large-model example's LM (training/examples/lm), when it exists."""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from stream_servers import ProtocolStreamServer, runtime_client

torch = pytest.importorskip("torch")

from aiops.inference import streaming  # noqa: E402
from aiops.inference.handler import Context, Handler  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "training" / "examples" / "lm"
HANDLER = Path(__file__).with_name("lm_example_inference_stream.py")
if (EXAMPLE / "inference_stream.py").is_file():
    HANDLER = EXAMPLE / "inference_stream.py"

pytestmark = pytest.mark.skipif(not (EXAMPLE / "lm_model.py").is_file() or not (EXAMPLE / "inference.py").is_file(),
                                reason="training/examples/lm is not in this checkout yet")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-example")
    code = folder / "code"
    code.mkdir()
    for name in ("lm_model.py", "inference.py"):
        shutil.copy(EXAMPLE / name, code / name)
    shutil.copy(HANDLER, code / "inference_stream.py")
    spec = importlib.util.spec_from_file_location("lm_model_for_test", code / "lm_model.py")
    lm_model = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = lm_model  # dataclasses look their module up while the class is built
    spec.loader.exec_module(lm_model)
    torch.manual_seed(0)
    cfg = lm_model.ModelConfig(seq_len=64, d_model=32, n_layers=2, n_heads=4)
    model = lm_model.ByteLM(cfg)
    torch.save(model.state_dict(), folder / "model.pth")
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "weights": "model.pth"}))
    return folder, lm_model


@pytest.fixture
def served(model_dir):
    folder, _ = model_dir
    # The handler's sibling imports (`from inference import load_model`) must find this model's code/, not
    # an `inference` module another in-process test of this worker loaded: one model per process, as served.
    for name in ("inference", "lm_model"):
        sys.modules.pop(name, None)
    handler = Handler(folder, script=folder / "code" / "inference_stream.py", code_dir=folder / "code")
    handler.load()
    with ProtocolStreamServer(lambda path, body, ctype, accept: streaming.invoke(
            handler, body, ctype, accept, Context(model_dir=str(folder)))) as server:
        yield server, handler


def test_the_example_lm_streams_its_greedy_tokens(served, model_dir):
    (server, handler), (_, lm_model) = served, model_dir
    expected = bytes(t for t in lm_model.generate(handler.model, list(b"def "), 30))
    body = json.dumps({"inputs": "def ", "parameters": {"max_new_tokens": 30}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.read() == expected
    events = runtime_client(server.url).invoke_endpoint_with_response_stream(
        EndpointName="lm", Body=body, ContentType="application/json")["Body"]
    assert b"".join(e["PayloadPart"]["Bytes"] for e in events) == expected


def test_the_example_lm_samples_repeatably_and_caps_new_tokens(served, monkeypatch):
    server, _ = served

    def run(**parameters):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/invocations", body=json.dumps({"inputs": "x", "parameters": parameters}).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()

    a, b = run(max_new_tokens=20, temperature=1.0, seed=5), run(max_new_tokens=20, temperature=1.0, seed=5)
    assert a == b and a[0] == 200
    monkeypatch.setenv("AIOPS_LM_MAX_NEW_TOKENS", "4")
    status, body = run(max_new_tokens=5)
    assert status == 400 and b"limit of 4 (AIOPS_LM_MAX_NEW_TOKENS)" in body
