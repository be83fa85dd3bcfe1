"""Handlers that work in the stock SageMaker PyTorch serving container work under `aiops serve`.

The oracle is the real toolkit: sagemaker-pytorch-inference's `HandlerService` (the container's
handler service: sagemaker-inference's `Transformer` with `DefaultPytorchInferenceHandler`), run in
a subprocess on the same model folder and handler script, fed each request as TorchServe feeds it
(the body as bytes, ``decode_input_request=false``, the request's headers as its properties). The
same requests go to a real `aiops serve` over HTTP. Where aiops answers differently on purpose (a
415/406 for a content type the codecs cannot handle, where the toolkit answers 500) the test says so.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import launch_server, stop_all, wait_ready

from .conftest import NO_TORCH_MODEL_FN, save_double, write_script

ORACLE = textwrap.dedent(
    """
    import base64, inspect, json, sys
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    class RequestProcessor:  # TorchServe's, as the toolkit reads it
        def __init__(self, headers):
            self.headers = headers

        def get_request_properties(self):
            return self.headers

    class Context:  # what the toolkit uses of TorchServe's Context
        def __init__(self, model_dir, headers):
            self.system_properties = {"model_dir": model_dir, "gpu_id": None}
            self.request_processor = [RequestProcessor(headers)]
            self.model_name = "model"
            self.status, self.content_type = 200, None

        def set_response_status(self, code, phrase):
            self.status = code

        def set_response_content_type(self, index, value):
            self.content_type = value

    spec = json.load(sys.stdin)
    service, answers = HandlerService(), []
    for headers, body in spec["requests"]:
        context = Context(spec["model_dir"], headers)
        if not answers:
            service.initialize(context)
        out = service.handle([{"body": base64.b64decode(body)}], context)[0]
        if inspect.isgenerator(out):  # what output_fn returned, handed on as the response: its chunks
            out = b"".join(c.encode() if isinstance(c, str) else c for c in out)
        out = out.encode() if isinstance(out, str) else bytes(out)
        answers.append({"status": context.status, "content_type": context.content_type,
                        "body": base64.b64encode(out).decode()})
    json.dump(answers, sys.stdout)
    """
)


def toolkit_answers(
    model_dir: Path,
    requests: list[tuple[dict, bytes]],
    program: str = "inference.py",
    cwd: Path | None = None,
) -> list[dict]:
    """What the stock container's handler service answers to each ``(headers, body)``: status,
    content type and body. Its environment is the container's: SAGEMAKER_PROGRAM, and the model's
    code/ on PYTHONPATH (as the toolkit starts TorchServe)."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "OMP_NUM_THREADS": "1",
        "SAGEMAKER_PROGRAM": program,
        "PYTHONPATH": str(model_dir / "code"),
    }
    spec = {"model_dir": str(model_dir), "requests": [(h, base64.b64encode(b).decode()) for h, b in requests]}
    # cwd outside the repository: its inference/ folder must not shadow the handler module `inference`
    done = subprocess.run(
        [sys.executable, "-c", ORACLE],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        cwd=str(cwd or model_dir.parent),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [{**a, "body": base64.b64decode(a["body"])} for a in json.loads(done.stdout)]


def aiops_answers(server, requests: list[tuple[dict, bytes]]) -> list[dict]:
    answers = []
    for headers, body in requests:
        resp = server.request("POST", "/invocations", body, headers)
        answers.append(
            {"status": resp.status, "content_type": resp.headers.get("content-type"), "body": resp.body}
        )
    return answers


def error_message(answer: dict) -> str:
    return json.loads(answer["body"])["error"]


# ------------------------------------------------------------------ 1. `from sagemaker_inference import ...`

TOOLKIT_USER = (
    NO_TORCH_MODEL_FN
    + """
from sagemaker_inference import content_types, decoder, encoder, errors

def input_fn(body, content_type):
    if content_type == "application/x-teapot":
        raise errors.GenericInferenceToolkitError(418, "short and stout")
    return decoder.decode(body, content_type)

def predict_fn(data, model):
    return data * 2

def output_fn(prediction, accept):
    if accept == "application/x-refused":
        raise errors.BaseInferenceToolkitError(403, "not for you", "Forbidden")
    return encoder.encode(prediction, accept)
"""
)


def test_a_handler_importing_the_toolkit_loads_and_its_errors_answer_as_the_toolkit(tmp_path, start_server):
    model = tmp_path / "model"
    write_script(model, TOOLKIT_USER)
    requests = [
        ({"Content-Type": "application/json", "Accept": "application/json"}, b"[[1.5, 2]]"),
        ({"Content-Type": "text/csv", "Accept": "text/csv"}, b"1,2\n3,4\n"),
        ({"Content-Type": "application/x-teapot"}, b"tea"),  # GenericInferenceToolkitError(418)
        ({"Content-Type": "application/json", "Accept": "application/x-refused"}, b"[1]"),  # Base...(403)
        ({"Content-Type": "image/png"}, b"\x89PNG"),  # its decoder: UnsupportedFormatError
        ({"Content-Type": "application/json", "Accept": "image/png"}, b"[1]"),  # its encoder: the same
    ]
    theirs = toolkit_answers(model, requests)
    ours = aiops_answers(start_server(model), requests)

    for mine, toolkit in zip(ours[:2], theirs[:2], strict=True):  # the script's own encoding, byte for byte
        assert mine["status"] == 200
        assert (mine["body"], mine["content_type"]) == (toolkit["body"], toolkit["content_type"])
    assert ours[0]["body"] == b"[[3.0, 4.0]]"
    for mine, toolkit, (status, message) in zip(
        ours[2:4], theirs[2:4], [(418, "short and stout"), (403, "not for you")], strict=True
    ):
        assert mine["status"] == toolkit["status"] == status
        assert error_message(mine) == message and toolkit["body"].decode().startswith(message)
    # UnsupportedFormatError: the toolkit answers 500 with its message; aiops the status its own codecs
    # give (415 for the request's type, 406 for the response's), with the same message
    for mine, toolkit, status, media in zip(
        ours[4:], theirs[4:], (415, 406), ("image/png", "image/png"), strict=True
    ):
        assert toolkit["status"] == 500 and mine["status"] == status
        message = " ".join(toolkit["body"].decode().split("\n", 1)[0].split())
        assert message.startswith(f"Content type {media} is not supported")
        assert error_message(mine).startswith(message)


# ------------------------------------------------------------------ 2. model_fn in a script copied into code/

TRAIN_COPYING_ITSELF = textwrap.dedent(
    """
    import os, shutil
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1, bias=False)

        def forward(self, x):
            return self.linear(x)

    def model_fn(model_dir):
        model = Net()
        model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth")))
        return model.eval()

    if __name__ == "__main__":
        model_dir = os.environ["SM_MODEL_DIR"]
        net = Net()
        with torch.no_grad():
            net.linear.weight.copy_(torch.tensor([[2.0, -1.0]]))
        torch.save(net.state_dict(), os.path.join(model_dir, "model.pth"))  # a state dict, not TorchScript
        os.makedirs(os.path.join(model_dir, "code"), exist_ok=True)
        shutil.copy(__file__, os.path.join(model_dir, "code", os.path.basename(__file__)))
    """
)


def test_serve_run_of_a_training_script_with_model_fn_that_copies_itself_into_code(
    run_cli, tmp_path, start_server
):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_COPYING_ITSELF)
    trained = run_cli("train", str(script), "--job-name", "copies-itself", "--json")
    assert trained.returncode == 0, trained.output
    model_dir = Path(json.loads(trained.stdout)["run_dir"]) / "opt" / "ml" / "model"
    assert sorted(p.name for p in (model_dir / "code").iterdir()) == ["train.py"]

    requests = [({"Content-Type": "application/json"}, b"[[1.0, 1.0], [0.5, 3.0]]")]
    # estimator.deploy() sets SAGEMAKER_PROGRAM to the training entry point
    theirs = toolkit_answers(model_dir, requests, program="train.py", cwd=tmp_path)
    server = start_server("copies-itself")
    ours = aiops_answers(server, requests)
    assert theirs[0]["status"] == ours[0]["status"] == 200, server.log()
    assert json.loads(ours[0]["body"]) == json.loads(theirs[0]["body"]) == [[1.0], [-2.0]]
    assert "train.py (model_fn)" in server.log()


# ------------------------------------------------------------------ 3. no Content-Type

SEES_TRANSFORM = (
    NO_TORCH_MODEL_FN
    + """
import json
def transform_fn(model, body, content_type, accept):
    return json.dumps({"type": type(body).__name__, "content_type": content_type,
                       "body": body if isinstance(body, str) else bytes(body).decode("latin-1")})
"""
)

SEES_INPUT = (
    NO_TORCH_MODEL_FN
    + """
import json
def input_fn(body, content_type):
    return {"type": type(body).__name__, "content_type": content_type,
            "body": body if isinstance(body, str) else bytes(body).decode("latin-1")}
def predict_fn(data, model):
    return data
def output_fn(prediction, accept):
    return json.dumps(prediction)
"""
)


@pytest.mark.parametrize("script", [SEES_TRANSFORM, SEES_INPUT], ids=["transform_fn", "input_fn"])
def test_without_content_type_user_handlers_get_none_and_the_raw_bytes(tmp_path, start_server, script):
    model = tmp_path / "model"
    write_script(model, script)
    requests = [({}, b"\xff\x00 raw"), ({}, b"[1, 2]"), ({"Content-Type": "application/json"}, b"[1, 2]")]
    theirs = toolkit_answers(model, requests)
    ours = aiops_answers(start_server(model), requests)
    seen = [json.loads(a["body"]) for a in ours]
    assert [a["status"] for a in ours] == [a["status"] for a in theirs] == [200, 200, 200]
    assert seen == [json.loads(a["body"]) for a in theirs]
    assert seen[0] == {"type": "bytes", "content_type": None, "body": "\xff\x00 raw"}
    assert seen[2] == {"type": "str", "content_type": "application/json", "body": "[1, 2]"}


ACCEPTS = [
    "text/csv, application/json",
    "application/json, text/csv",
    "application/x-npy, text/csv",
    "image/png, text/csv, application/json",
    "*/*, text/csv",
]
# what the default handlers are asked: no Content-Type, then JSON, then JSON with each Accept
DEFAULT_REQUESTS = [({}, b"[1, 2]"), ({"Content-Type": "application/json"}, b"[1, 2]")] + [
    ({"Content-Type": "application/json", "Accept": accept}, b"[[1.5, 2], [3, 4]]") for accept in ACCEPTS
]


@pytest.fixture(scope="module")
def defaults(tmp_path_factory):
    """A TorchScript model with every handler function the default: the toolkit's answers to
    DEFAULT_REQUESTS (one oracle run) and a live `aiops serve` of it (batched workers, the default)."""
    root = tmp_path_factory.mktemp("defaults")
    model = save_double(root / "model")
    server = launch_server(model, home=root / "home", cwd=root)
    try:
        theirs = toolkit_answers(model, DEFAULT_REQUESTS, cwd=root)
        wait_ready(server)
        yield server, theirs
    finally:
        stop_all([server])


def test_without_content_type_the_default_decoders_answer_415_naming_the_header(defaults):
    server, toolkit = defaults
    ours = aiops_answers(server, DEFAULT_REQUESTS[:2])
    theirs = toolkit[:2]
    # the toolkit's decoder refuses a missing type too (UnsupportedFormatError(None), a 500); aiops
    # answers 415 naming the header
    assert theirs[0]["status"] == 500 and "Content type None is not supported" in theirs[0]["body"].decode()
    assert ours[0]["status"] == 415
    assert error_message(ours[0]).startswith("the request has no Content-Type header; send one of")
    assert ours[1]["status"] == theirs[1]["status"] == 200
    assert json.loads(ours[1]["body"]) == json.loads(theirs[1]["body"]) == [2.0, 4.0]


def test_batched_requests_without_content_type_are_refused_each(tmp_path):
    from aiops.inference.codecs import UnsupportedMediaType
    from aiops.inference.handler import Context, Handler

    handler = Handler(save_double(tmp_path / "model"))
    handler.load()
    ctx = Context(model_dir=handler.model_dir)
    results = handler.invoke_batch(
        [
            (b"[1, 2]", None, None, ctx),
            (b"[3, 4]", None, None, ctx),
            (b"[5, 6]", "application/json", None, ctx),
        ]
    )
    assert [type(r) for r in results[:2]] == [UnsupportedMediaType, UnsupportedMediaType]
    assert results[2] == (b"[10.0,12.0]", "application/json")


# ------------------------------------------------------------------ 4. Accept with several types


@pytest.mark.parametrize("index", range(len(ACCEPTS)), ids=ACCEPTS)
def test_accept_answers_in_the_clients_first_listed_type_as_the_toolkit(defaults, index):
    from sagemaker_inference import content_types, decoder, encoder, utils

    server, toolkit = defaults
    request, theirs = DEFAULT_REQUESTS[2 + index], toolkit[2 + index]
    expected = next(t for t in utils.parse_accept(ACCEPTS[index]) if t in encoder.SUPPORTED_CONTENT_TYPES)
    ours = aiops_answers(server, [request])[0]
    assert ours["status"] == theirs["status"] == 200
    assert ours["content_type"] == expected  # the toolkit labels it with the whole Accept value
    utf8 = expected in content_types.UTF8_TYPES
    values = [decoder.decode(a["body"].decode() if utf8 else a["body"], expected) for a in (ours, theirs)]
    assert values[0].tolist() == values[1].tolist() == [[3.0, 4.0], [6.0, 8.0]]


# ------------------------------------------------------------------ 5. a streamed predict_fn yielding bytes

STREAMS_BYTES = (
    NO_TORCH_MODEL_FN
    + """
def input_fn(body, content_type):
    return None
def predict_fn(data, model):
    yield b"already "
    yield "encoded, "
    yield [1, 2]
"""
)


def test_a_streamed_predict_fn_yielding_bytes_passes_them_through_the_default_output_fn(
    tmp_path, start_server
):
    model = tmp_path / "model"
    write_script(model, STREAMS_BYTES)
    server = start_server(model)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/invocations", body=b"{}", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, server.log()
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert body == b"already encoded, [1,2]"  # bytes and str as they are; anything else JSON-encoded


# ------------------------------------------------------------------ 6. output_fn returning a generator

OUTPUT_FN_STREAMS = (
    NO_TORCH_MODEL_FN
    + """
import json
def input_fn(body, content_type):
    return json.loads(body)
def predict_fn(data, model):
    return data  # a whole prediction
def output_fn(prediction, accept):
    def lines():
        for row in prediction:
            yield json.dumps(row) + "\\n"
    return lines(), "application/jsonlines"
"""
)


def test_an_output_fn_returning_a_generator_for_a_whole_prediction_streams_it(tmp_path, start_server):
    # the toolkit hands whatever output_fn returns to the model server as the response; aiops sends a
    # generator as the response's chunks (chunked here), the same bytes once joined
    model = tmp_path / "model"
    write_script(model, OUTPUT_FN_STREAMS)
    requests = [({"Content-Type": "application/json"}, b'[[1, 2], {"a": 3}]')]
    theirs = toolkit_answers(model, requests)[0]
    server = start_server(model)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/invocations", body=requests[0][1], headers=requests[0][0])
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == theirs["status"] == 200, server.log()
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Type") == theirs["content_type"] == "application/jsonlines"
    assert body == theirs["body"] == b'[1, 2]\n{"a": 3}\n'
    whole = server.request("POST", "/endpoints/model/invocations", requests[0][1], requests[0][0])
    assert whole.status == 200 and whole.body == theirs["body"]  # InvokeEndpoint's route: joined
    assert whole.headers["content-length"] == str(len(theirs["body"]))
