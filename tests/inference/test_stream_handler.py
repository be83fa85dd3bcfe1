"""Handler.invoke: the SageMaker handler contract with iterator responses, through the real Handler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import runtime_client

torch = pytest.importorskip("torch")

from aiops.inference import streaming  # noqa: E402
from aiops.inference.handler import Context, Handler  # noqa: E402
from aiops.inference.serving.stream_sender import ChunkStream  # noqa: E402


def handler_for(tmp_path: Path, source: str, model: str | None = None) -> Handler:
    code = tmp_path / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "inference.py").write_text(source)
    handler = Handler(tmp_path, script=code / "inference.py", code_dir=code)
    handler.load()
    return handler


def call(handler: Handler, body: bytes, accept: str | None = None, ctype: str = "application/json"):
    return handler.invoke(body, ctype, accept, Context(model_dir=handler.model_dir, accept=accept))


MODEL_FN = "def model_fn(model_dir):\n    return 3\n"


def test_a_predict_fn_generator_goes_through_the_default_output_fn_item_by_item(tmp_path):
    handler = handler_for(
        tmp_path,
        MODEL_FN
        + """
import torch
aiops_stream = True

def predict_fn(data, model):
    for i in range(3):
        yield data * (i + model)
""",
    )
    out, ctype = call(handler, b"[1, 2]")
    assert streaming.is_stream(out) and ctype == "application/json"
    assert [json.loads(c) for c in out] == [[3.0, 6.0], [4.0, 8.0], [5.0, 10.0]]
    out, ctype = call(handler, b"[1, 2]", accept="text/csv")
    assert ctype == "text/csv" and b"".join(out).decode().split() == [
        "3.0",
        "6.0",
        "4.0",
        "8.0",
        "5.0",
        "10.0",
    ]
    assert streaming.batchable(handler.module, handler.batchable) is False


def test_output_fn_and_transform_fn_may_return_streams_or_whole_bodies(tmp_path):
    streamed = handler_for(
        tmp_path / "a",
        MODEL_FN
        + """
def predict_fn(data, model):
    return (f"word{i} " for i in range(model))

def output_fn(prediction, accept):
    return (p.upper() for p in prediction), "text/event-stream"
""",
    )
    out, ctype = call(streamed, b"[0]")
    assert ctype == "text/event-stream" and list(out) == ["WORD0 ", "WORD1 ", "WORD2 "]
    whole = handler_for(
        tmp_path / "b",
        MODEL_FN
        + """
def predict_fn(data, model):
    return (f"word{i} " for i in range(model))

def output_fn(prediction, accept):
    return "".join(prediction)
""",
    )
    out, ctype = call(whole, b"[0]", accept="text/plain")
    assert out == b"word0 word1 word2 " and ctype == "text/plain"


def test_a_transform_fn_stream_is_served_end_to_end(tmp_path, start_server):
    folder = tmp_path / "transform"
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "inference.py").write_text(
        MODEL_FN
        + """
def transform_fn(model, body, content_type, accept):
    return (f"{i}:{body}\\n" for i in range(model)), "text/plain"
"""
    )
    server = start_server(folder, "--workers", "1")
    response = runtime_client(server.url).invoke_endpoint_with_response_stream(
        EndpointName="e", Body=b'{"x": 1}', ContentType="application/json"
    )
    parts = [e["PayloadPart"]["Bytes"] for e in response["Body"]]
    assert parts == [b'0:{"x": 1}\n', b'1:{"x": 1}\n', b'2:{"x": 1}\n']
    assert response["ContentType"] == "text/plain"


def test_a_whole_prediction_is_still_a_whole_response(tmp_path):
    handler = handler_for(
        tmp_path,
        MODEL_FN
        + """
def predict_fn(data, model):
    return data * model
""",
    )
    out, ctype = call(handler, b"[1]")
    assert out == b"[3.0]" and ctype == "application/json"


def test_a_declared_batched_stream_is_split_into_one_stream_per_request_by_invoke_batch(tmp_path):
    handler = handler_for(
        tmp_path,
        MODEL_FN
        + """
aiops_stream = True
aiops_batch = True
CALLS = []

def predict_fn(data, model, context):
    CALLS.append(context.batch_size)
    for step in range(3):  # one entry per request per step; None: nothing for that request
        yield [f"r{int(row[0])}s{step};" if step < 2 or int(row[0]) != 1 else None for row in data]

def output_fn(prediction, accept):
    return prediction, "text/plain"
""",
    )
    assert handler.batchable
    requests = [
        (f"[[{i}]]".encode(), "application/json", None, Context(model_dir=handler.model_dir))
        for i in range(3)
    ]
    results = handler.invoke_batch(requests)
    streams = [ChunkStream(out) for out, ctype in results]
    assert all(ctype == "text/plain" for _, ctype in results)
    for stream in streams:
        stream.prime()  # the server makes each first chunk inside the handler call
    import asyncio

    async def collect_all():
        for stream in streams:
            await stream.start()
        return [await stream.collect() for stream in streams]

    assert asyncio.run(collect_all()) == [b"r0s0;r0s1;r0s2;", b"r1s0;r1s1;", b"r2s0;r2s1;r2s2;"]
    assert handler.module.CALLS == [3]  # one predict_fn generator for the three requests


def test_an_undeclared_handler_whose_batched_predict_streams_runs_request_by_request(tmp_path):
    handler = handler_for(
        tmp_path,
        MODEL_FN
        + """
aiops_batch = True
CALLS = []

def predict_fn(data, model):
    CALLS.append(len(data))
    return (f"{float(row[0])};" for row in data)

def output_fn(prediction, accept):
    return prediction, "text/plain"
""",
    )
    requests = [
        (f"[[{i}]]".encode(), "application/json", None, Context(model_dir=handler.model_dir))
        for i in range(2)
    ]
    results = handler.invoke_batch(requests)
    assert ["".join(out) for out, _ in results] == ["0.0;", "1.0;"]
    assert handler.module.CALLS == [2, 1, 1]  # the batched stream was dropped, then each request ran alone
