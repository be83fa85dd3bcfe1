"""streaming.invoke: the SageMaker handler contract with iterator responses, through the real Handler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stream_servers import AsgiStreamServer, runtime_client

torch = pytest.importorskip("torch")

from aiops.inference import streaming  # noqa: E402
from aiops.inference.handler import Context, Handler  # noqa: E402


def handler_for(tmp_path: Path, source: str, model: str | None = None) -> Handler:
    code = tmp_path / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "inference.py").write_text(source)
    handler = Handler(tmp_path, script=code / "inference.py", code_dir=code)
    handler.load()
    return handler


def call(handler: Handler, body: bytes, accept: str | None = None, ctype: str = "application/json"):
    return streaming.invoke(handler, body, ctype, accept, Context(model_dir=handler.model_dir, accept=accept))


MODEL_FN = "def model_fn(model_dir):\n    return 3\n"


def test_a_predict_fn_generator_goes_through_the_default_output_fn_item_by_item(tmp_path):
    handler = handler_for(tmp_path, MODEL_FN + """
import torch
aiops_stream = True

def predict_fn(data, model):
    for i in range(3):
        yield data * (i + model)
""")
    out, ctype = call(handler, b"[1, 2]")
    assert streaming.is_stream(out) and ctype == "application/json"
    assert [json.loads(c) for c in out] == [[3.0, 6.0], [4.0, 8.0], [5.0, 10.0]]
    out, ctype = call(handler, b"[1, 2]", accept="text/csv")
    assert ctype == "text/csv" and b"".join(out).decode().split() == ["3.0", "6.0", "4.0", "8.0", "5.0", "10.0"]
    assert streaming.batchable(handler.module, handler.batchable) is False


def test_output_fn_and_transform_fn_may_return_streams_or_whole_bodies(tmp_path):
    streamed = handler_for(tmp_path / "a", MODEL_FN + """
def predict_fn(data, model):
    return (f"word{i} " for i in range(model))

def output_fn(prediction, accept):
    return (p.upper() for p in prediction), "text/event-stream"
""")
    out, ctype = call(streamed, b"[0]")
    assert ctype == "text/event-stream" and list(out) == ["WORD0 ", "WORD1 ", "WORD2 "]
    whole = handler_for(tmp_path / "b", MODEL_FN + """
def predict_fn(data, model):
    return (f"word{i} " for i in range(model))

def output_fn(prediction, accept):
    return "".join(prediction)
""")
    out, ctype = call(whole, b"[0]", accept="text/plain")
    assert out == b"word0 word1 word2 " and ctype == "text/plain"


def test_a_transform_fn_stream_is_served_end_to_end(tmp_path):
    handler = handler_for(tmp_path, MODEL_FN + """
def transform_fn(model, body, content_type, accept):
    return (f"{i}:{body}\\n" for i in range(model)), "text/plain"
""")

    def respond(path, body, ctype, accept):
        return call(handler, body, accept=accept, ctype=ctype)

    with AsgiStreamServer(respond) as server:
        response = runtime_client(server.url).invoke_endpoint_with_response_stream(
            EndpointName="e", Body=b'{"x": 1}', ContentType="application/json")
        parts = [e["PayloadPart"]["Bytes"] for e in response["Body"]]
    assert parts == [b'0:{"x": 1}\n', b'1:{"x": 1}\n', b'2:{"x": 1}\n']
    assert response["ContentType"] == "text/plain"


def test_a_whole_prediction_is_still_a_whole_response(tmp_path):
    handler = handler_for(tmp_path, MODEL_FN + """
def predict_fn(data, model):
    return data * model
""")
    out, ctype = call(handler, b"[1]")
    assert out == b"[3.0]" and ctype == "application/json"
