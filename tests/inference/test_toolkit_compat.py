"""Handlers that work in the stock SageMaker PyTorch serving container work under `aiops serve`.

The oracle is the real toolkit: sagemaker-pytorch-inference's `HandlerService` (the container's
handler service: sagemaker-inference's `Transformer` with `DefaultPytorchInferenceHandler`), run in
a subprocess on the same model folder and handler script, fed each request as TorchServe feeds it
(the body as bytes, ``decode_input_request=false``, the request's headers as its properties). The
same requests go to a real `aiops serve` over HTTP. Where aiops answers differently on purpose (a
415/406 for a content type the codecs cannot handle, where the toolkit answers 500) the test says so.

The oracle answers every model folder of the file in one process, made once for every xdist worker
(the `oracle` fixture): each folder as a container of its own (a fresh handler service, its
SAGEMAKER_PROGRAM, its code/ first on the path), so torch and the toolkit are imported once.
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
from helpers import aiops_answers, built_once, launch_server, run_aiops, stop_all, wait_ready

from .conftest import NO_TORCH_MODEL_FN, save_double, write_script

ORACLE = textwrap.dedent(
    """
    import base64, importlib, inspect, json, os, sys
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

    results = []
    for case in json.load(sys.stdin):
        # each folder as a container of its own: its SAGEMAKER_PROGRAM, its code/ on the path (as the
        # toolkit starts TorchServe), its module imported afresh
        os.environ["SAGEMAKER_PROGRAM"] = case["program"]
        code = os.path.join(case["model_dir"], "code")
        sys.path.insert(0, code)
        sys.modules.pop(case["program"][:-3], None)
        importlib.invalidate_caches()
        service, answers = HandlerService(), []
        for headers, body in case["requests"]:
            context = Context(case["model_dir"], headers)
            if not answers:
                service.initialize(context)
            out = service.handle([{"body": base64.b64decode(body)}], context)[0]
            if inspect.isgenerator(out):  # what output_fn returned, handed on as the response: its chunks
                out = b"".join(c.encode() if isinstance(c, str) else c for c in out)
            out = out.encode() if isinstance(out, str) else bytes(out)
            answers.append({"status": context.status, "content_type": context.content_type,
                            "body": base64.b64encode(out).decode()})
        sys.path.remove(code)
        results.append(answers)
    json.dump(results, sys.stdout)
    """
)


def toolkit_answers(cases: list[dict], cwd: Path) -> list[list[dict]]:
    """What the stock container's handler service answers, per case ``{"model_dir", "program",
    "requests": [(headers, body)]}``, to each request: status, content type and body (base64)."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "OMP_NUM_THREADS": "1"}
    spec = [
        {**case, "requests": [(h, base64.b64encode(b).decode()) for h, b in case["requests"]]}
        for case in cases
    ]
    # cwd outside the repository: its inference/ folder must not shadow the handler module `inference`
    done = subprocess.run(
        [sys.executable, "-c", ORACLE],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        cwd=str(cwd),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def error_message(answer: dict) -> str:
    return json.loads(answer["body"])["error"]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict:
    """Every model folder of this file, and the toolkit's answers to its requests (ORACLE_CASES below),
    made once for every xdist worker (one oracle process): {case: {"model_dir", "answers"}}, and for the
    training run that copies itself, "home" and "code" (its code/ as the run left it). Read-only."""

    def build(root: Path) -> dict:
        folders = {}
        for name, (script, _, _) in ORACLE_CASES.items():
            if script is not None:
                write_script(root / name, script)
                folders[name] = root / name
        folders["defaults"] = save_double(root / "defaults")
        (root / "train.py").write_text(TRAIN_COPYING_ITSELF)
        home = root / "home"
        trained = run_aiops(
            home, root, "train", str(root / "train.py"), "--job-name", "copies-itself", "--json"
        )
        assert trained.returncode == 0, trained.output
        folders["copies-itself"] = Path(json.loads(trained.stdout)["run_dir"]) / "opt" / "ml" / "model"
        code = sorted(p.name for p in (folders["copies-itself"] / "code").iterdir())
        cases = [
            {"model_dir": str(folders[name]), "program": program, "requests": requests}
            for name, (_, program, requests) in ORACLE_CASES.items()
        ]
        answers = toolkit_answers(cases, cwd=root)
        built = {
            name: {"model_dir": str(folders[name]), "answers": answers[i]}
            for i, name in enumerate(ORACLE_CASES)
        }
        built["copies-itself"].update(home=str(home), code=code)
        return built

    built = built_once(tmp_path_factory, "toolkit-compat-oracle", build)
    for case in built.values():
        case["model_dir"] = Path(case["model_dir"])
        case["answers"] = [{**a, "body": base64.b64decode(a["body"])} for a in case["answers"]]
    return built


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


TOOLKIT_USER_REQUESTS = [
    ({"Content-Type": "application/json", "Accept": "application/json"}, b"[[1.5, 2]]"),
    ({"Content-Type": "text/csv", "Accept": "text/csv"}, b"1,2\n3,4\n"),
    ({"Content-Type": "application/x-teapot"}, b"tea"),  # GenericInferenceToolkitError(418)
    ({"Content-Type": "application/json", "Accept": "application/x-refused"}, b"[1]"),  # Base...(403)
    ({"Content-Type": "image/png"}, b"\x89PNG"),  # its decoder: UnsupportedFormatError
    ({"Content-Type": "application/json", "Accept": "image/png"}, b"[1]"),  # its encoder: the same
]


def test_a_handler_importing_the_toolkit_loads_and_its_errors_answer_as_the_toolkit(oracle, start_server):
    case = oracle["toolkit-user"]
    theirs = case["answers"]
    ours = aiops_answers(start_server(case["model_dir"]), TOOLKIT_USER_REQUESTS)

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


COPIES_ITSELF_REQUESTS = [({"Content-Type": "application/json"}, b"[[1.0, 1.0], [0.5, 3.0]]")]


def test_serve_run_of_a_training_script_with_model_fn_that_copies_itself_into_code(oracle, start_server):
    case = oracle["copies-itself"]  # `aiops train` of TRAIN_COPYING_ITSELF, run by the oracle fixture
    assert case["code"] == ["train.py"]
    theirs = case["answers"]
    server = start_server("copies-itself", env={"AIOPS_HOME": case["home"]})
    ours = aiops_answers(server, COPIES_ITSELF_REQUESTS)
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


NO_CONTENT_TYPE_REQUESTS = [
    ({}, b"\xff\x00 raw"),
    ({}, b"[1, 2]"),
    ({"Content-Type": "application/json"}, b"[1, 2]"),
]


@pytest.mark.parametrize("case", ["sees-transform", "sees-input"], ids=["transform_fn", "input_fn"])
def test_without_content_type_user_handlers_get_none_and_the_raw_bytes(oracle, start_server, case):
    theirs = oracle[case]["answers"]
    ours = aiops_answers(start_server(oracle[case]["model_dir"]), NO_CONTENT_TYPE_REQUESTS)
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
def defaults(oracle, tmp_path_factory):
    """A TorchScript model with every handler function the default: the toolkit's answers to
    DEFAULT_REQUESTS and a live `aiops serve` of it (batched workers, the default)."""
    root = tmp_path_factory.mktemp("defaults")
    server = launch_server(oracle["defaults"]["model_dir"], home=root / "home", cwd=root)
    try:
        wait_ready(server)
        yield server, oracle["defaults"]["answers"]
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


OUTPUT_FN_STREAMS_REQUESTS = [({"Content-Type": "application/json"}, b'[[1, 2], {"a": 3}]')]


def test_an_output_fn_returning_a_generator_for_a_whole_prediction_streams_it(oracle, start_server):
    # the toolkit hands whatever output_fn returns to the model server as the response; aiops sends a
    # generator as the response's chunks (chunked here), the same bytes once joined
    requests = OUTPUT_FN_STREAMS_REQUESTS
    theirs = oracle["output-fn-streams"]["answers"][0]
    server = start_server(oracle["output-fn-streams"]["model_dir"])
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


# ------------------------------------------------------------------ the oracle's cases

# case -> (code/inference.py, or None for a folder made otherwise; SAGEMAKER_PROGRAM; requests)
ORACLE_CASES = {
    "toolkit-user": (TOOLKIT_USER, "inference.py", TOOLKIT_USER_REQUESTS),
    # estimator.deploy() sets SAGEMAKER_PROGRAM to the training entry point
    "copies-itself": (None, "train.py", COPIES_ITSELF_REQUESTS),
    "sees-transform": (SEES_TRANSFORM, "inference.py", NO_CONTENT_TYPE_REQUESTS),
    "sees-input": (SEES_INPUT, "inference.py", NO_CONTENT_TYPE_REQUESTS),
    "defaults": (None, "inference.py", DEFAULT_REQUESTS),
    "output-fn-streams": (OUTPUT_FN_STREAMS, "inference.py", OUTPUT_FN_STREAMS_REQUESTS),
}
