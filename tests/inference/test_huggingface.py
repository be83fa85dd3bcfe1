"""`aiops serve --container huggingface` answers as the Hugging Face inference container.

The oracle is the container's own handler service: sagemaker-huggingface-inference-toolkit's
`HuggingFaceHandlerService` (2.6.0, from requirements/oracles.lock, installed without its dependencies:
its pyctcdecode pins numpy<2, and the modules run here import none of its audio dependencies), with
multi-model-server's own
`Context`. It runs in a subprocess on each model folder, fed every request as MMS feeds it (the body as
bytes, decode_input_request=false, the headers as the request's properties). The same requests go over
HTTP to a real `aiops serve --container huggingface` on the same folder. Answers are compared status,
content type and body, byte for byte; where aiops answers differently on purpose (415 / 406 for a
content type the default input_fn / output_fn cannot handle, where the toolkit answers 400 to
everything) the test says so.

The models are tiny and made offline: a random-weight BERT classifier with a byte-level BPE tokenizer
trained here (`aiops example tiny-llm`'s tokenizer trainer), and `aiops example tiny-llm` itself.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import aiops_answers, built_once, launch_server, runtime_client, stop_all, wait_ready
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")

TOOLKIT = "sagemaker-huggingface-inference-toolkit"

ORACLE = textwrap.dedent(
    """
    import base64, json, os, sys
    from mms.context import Context, RequestProcessor
    from mms.metrics.metrics_store import MetricsStore
    from mms.service import PredictionException
    from sagemaker_huggingface_inference_toolkit.handler_service import HuggingFaceHandlerService

    results = []
    for case in json.load(sys.stdin):
        # each folder as a container of its own: its environment, its code/ module
        for name in ("HF_TASK", "SAGEMAKER_PROGRAM"):
            os.environ.pop(name, None)
        os.environ.update(case["env"])
        sys.modules.pop(os.environ.get("SAGEMAKER_PROGRAM", "inference.py")[:-3], None)
        context = Context("model", case["model_dir"], {}, 1, None, "1.1.11")
        service, answers = HuggingFaceHandlerService(), []
        for headers, body in case["requests"]:
            context.request_processor = [RequestProcessor(headers)]
            context.metrics = MetricsStore({0: "request"}, "model")
            if not service.initialized:
                service.initialize(context)
            try:
                out = service.handle([{"body": base64.b64decode(body)}], context)[0]
            except PredictionException as err:
                answers.append({"status": err.error_code, "message": err.message})
                continue
            out = out.encode() if isinstance(out, str) else bytes(out)
            answers.append({"status": 200, "content_type": context.get_response_content_type(0),
                            "body": base64.b64encode(out).decode()})
        sys.path.remove(os.path.join(case["model_dir"], "code"))
        results.append(answers)
    json.dump(results, sys.stdout)
    """
)


def toolkit_answers(cases: list[dict], cwd: Path) -> list[list[dict]]:
    """Per case ``{"model_dir", "env", "requests": [(headers, body)]}``: what the container's handler
    service answers to each request (status, content type, body; a failure's message)."""
    spec = [
        {**case, "requests": [(h, base64.b64encode(b).decode()) for h, b in case["requests"]]}
        for case in cases
    ]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "OMP_NUM_THREADS": "1"}
    # cwd outside the repository: its inference/ folder must not shadow the handler module `inference`
    done = subprocess.run(
        [sys.executable, "-c", ORACLE],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        cwd=str(cwd),
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        [{**a, "body": base64.b64decode(a["body"])} if "body" in a else a for a in answers]
        for answers in json.loads(done.stdout)
    ]


# ------------------------------------------------------------------ the models


def make_classifier(folder: Path) -> Path:
    """A random-weight BERT sequence classifier (2 labels) with a byte-level BPE tokenizer trained here."""
    import torch
    from aiops.training.examples.finetune.tiny_llm import train_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = train_tokenizer(vocab=300, max_positions=64)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# the four functions, with and without the context; no transformers import, so its worker starts fast
CUSTOM = """
import json, os

def model_fn(model_dir, context):
    folder = os.path.basename(context.system_properties["model_dir"])
    return lambda text, repeat=1: {"text": text * repeat, "folder": folder}

def input_fn(input_data, content_type):
    data = json.loads(input_data)
    return {"inputs": data["sentence"], "parameters": data.get("options") or {}}

def predict_fn(data, model, context):
    return model(data["inputs"], **data["parameters"])

def output_fn(prediction, accept):
    return json.dumps({**prediction, "accept": accept})
"""

TRANSFORM = """
import json

def model_fn(model_dir):
    return {"greeting": "hello"}

def transform_fn(model, input_data, content_type, accept):
    return json.dumps({"said": model["greeting"], "got": input_data, "type": content_type})
"""


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The served folders, made once for every xdist worker; read-only."""

    def build(root: Path) -> dict:
        folders = {"classifier": make_classifier(root / "classifier")}
        for name, script in (("custom", CUSTOM), ("transform", TRANSFORM)):
            folders[name] = root / name  # code only: no config.json is needed with a model_fn
            (folders[name] / "code").mkdir(parents=True)
            (folders[name] / "code" / "inference.py").write_text(script)
        return {name: str(folder) for name, folder in folders.items()}

    return {k: Path(v) for k, v in built_once(tmp_path_factory, "hf-container-models", build).items()}


def test_the_oracle_is_the_published_toolkit():
    # the version requirements/oracles.lock pins (pip checked its PyPI hash at install)
    assert importlib.metadata.version(TOOLKIT) == "2.6.0"


JSON_H = {"Content-Type": "application/json"}

CASES = {
    # text-classification, inferred from BertForSequenceClassification
    "classifier": (
        {},
        [
            (JSON_H, json.dumps({"inputs": "def main(): return 1"}).encode()),
            (
                {**JSON_H, "Accept": "application/json"},
                b'{"inputs": ["import os", "x = 1"], "parameters": {"top_k": 2}}',
            ),
            ({**JSON_H, "Accept": "*/*"}, b'{"text": "import sys", "text_pair": "print(sys.argv)"}'),
            (
                {"Content-Type": "text/csv", "Accept": "text/csv"},
                b"inputs\nhello world\nfor i in range(3): pass\n",
            ),
            (JSON_H, b'{"inputs": '),  # not JSON
            (JSON_H, b'["a list has no inputs key"]'),
            ({"Content-Type": "text/csv"}, b"sentence\nno inputs column\n"),
            (JSON_H, b'{"inputs": "x", "parameters": "not a mapping"}'),
            (JSON_H, b'{"inputs": "x", "parameters": {"top_k": "two"}}'),
            (JSON_H, b'{"inputs": "\xff"}'),  # not UTF-8
            ({"Content-Type": "text/plain"}, b'{"inputs": "x"}'),
            ({"Content-Type": "application/json; charset=utf-8"}, b'{"inputs": "x"}'),  # matched exactly
            ({}, b'{"inputs": "x"}'),
            ({**JSON_H, "Accept": "application/xml"}, b'{"inputs": "x"}'),
            ({**JSON_H, "Accept": "application/x-npy"}, b'{"inputs": "labels are dicts"}'),
        ],
    ),
    # the same folder as an embedding model: HF_TASK names the task
    "features": (
        {"HF_TASK": "feature-extraction"},
        [
            (JSON_H, b'{"inputs": "def f(x): return x"}'),
            ({**JSON_H, "Accept": "application/x-npy"}, b'{"inputs": "import json"}'),
        ],
    ),
    # text-generation, inferred from LlamaForCausalLM (`aiops example tiny-llm`)
    # (the pipeline samples unless told, by its own default generation config: only greedy compares)
    "generator": (
        {},
        [
            (JSON_H, b'{"inputs": "def main(", "parameters": {"max_new_tokens": 8, "do_sample": false}}'),
            (
                JSON_H,
                b'{"inputs": ["import", "class A"], "parameters": {"max_new_tokens": 4, "do_sample": false}}',
            ),
            (
                JSON_H,
                b'{"inputs": "for i in", "parameters": {"max_new_tokens": 6, "do_sample": false, '
                b'"return_full_text": false}}',
            ),
        ],
    ),
    "custom": (
        {},
        [
            ({**JSON_H, "Accept": "application/json"}, b'{"sentence": "import antigravity"}'),
            ({**JSON_H, "Accept": "text/plain"}, b'{"sentence": "pass", "options": {"repeat": 2}}'),
            (JSON_H, b'{"sentence": "pass", "options": {"times": 2}}'),  # the model raises TypeError
            (JSON_H, b'{"no sentence": 1}'),  # the user's input_fn raises KeyError
        ],
    ),
    "transform": (
        {},
        [
            ({"Content-Type": "text/csv", "Accept": "application/json"}, b"a,b\n1,2\n"),
            ({"Content-Type": "application/octet-stream"}, b"\x00\x01"),
        ],
    ),
}
# where aiops answers a status of its own on purpose: (case, request index) -> (aiops, toolkit). A type
# the default input_fn cannot decode is a 415 and an Accept the default output_fn cannot encode a 406
# (the toolkit: 400 to everything); an answer that NPY holds only as pickled objects is refused (the
# toolkit pickles it: a client must then load it with allow_pickle=True).
DIFFERENT_STATUS = {
    ("classifier", 10): (415, 400),
    ("classifier", 11): (415, 400),
    ("classifier", 12): (415, 400),
    ("classifier", 13): (406, 400),
    ("classifier", 14): (400, 200),
}


@pytest.fixture(scope="module")
def served(hf_folders, tiny_llm, tmp_path_factory, aiops_home_module):
    """One `aiops serve --container huggingface` per case (started together), and the oracle's answers."""
    pytest.importorskip("mms")  # multi-model-server, the test extra's: the oracle's Context
    folders = {
        "classifier": hf_folders["classifier"],
        "features": hf_folders["classifier"],
        "generator": tiny_llm,
        "custom": hf_folders["custom"],
        "transform": hf_folders["transform"],
    }
    cwd = tmp_path_factory.mktemp("hf-serve")
    servers = {
        name: launch_server(
            folders[name], "--container", "huggingface", home=aiops_home_module, cwd=cwd, env=env
        )
        for name, (env, _) in CASES.items()
    }
    try:
        oracle = toolkit_answers(
            [
                {"model_dir": str(folders[name]), "env": env, "requests": requests}
                for name, (env, requests) in CASES.items()
            ],
            cwd,
        )
        for server in servers.values():
            wait_ready(server, timeout=300)
        yield servers, dict(zip(CASES, oracle, strict=True))
    finally:
        stop_all(list(servers.values()))


@pytest.fixture(scope="module")
def aiops_home_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("aiops-home")


@pytest.mark.parametrize("case", list(CASES))
def test_same_answers_as_the_toolkit(served, case):
    servers, oracle = served
    env, requests = CASES[case]
    ours = aiops_answers(servers[case], requests)
    for i, (mine, theirs) in enumerate(zip(ours, oracle[case], strict=True)):
        where = f"{case} request {i}: {requests[i]}"
        if (case, i) in DIFFERENT_STATUS:
            assert (mine["status"], theirs["status"]) == DIFFERENT_STATUS[case, i], (where, mine, theirs)
        elif theirs["status"] == 200:
            assert mine["status"] == 200, (where, mine, theirs)
            assert mine["content_type"] == theirs["content_type"], where
            assert mine["body"] == theirs["body"], where
        else:
            assert theirs["status"] == 400, (where, theirs)  # the toolkit's handle: every failure
            assert mine["status"] == 400, (where, mine, theirs)
        if mine["status"] != 200:
            assert json.loads(mine["body"])["error"], where
    assert servers[case].request("GET", "/ping").status == 200  # bad requests left it healthy


def test_answers_are_what_the_pipeline_says(served):
    """Not only equal to the oracle: the shapes the container documents."""
    servers, oracle = served
    label = json.loads(oracle["classifier"][0]["body"])
    assert [set(x) for x in label] == [{"label", "score"}] and label[0]["label"].startswith("LABEL_")
    assert oracle["classifier"][3]["body"].decode().splitlines()[0] == "label,score"
    features = json.loads(oracle["features"][0]["body"])
    assert len(features) == 1 and len(features[0][0]) == 32  # [batch][tokens][hidden size]
    (generated,) = json.loads(oracle["generator"][0]["body"])
    assert generated["generated_text"].startswith("def main(")
    (continued,) = json.loads(oracle["generator"][2]["body"])
    assert not continued["generated_text"].startswith("for i in")
    assert json.loads(oracle["custom"][1]["body"]) == {
        "text": "passpass",
        "folder": "custom",
        "accept": "text/plain",
    }
    assert oracle["custom"][1]["content_type"] == "text/plain"


TEXT = st.text(max_size=40)
PAYLOAD = st.fixed_dictionaries(
    {
        "inputs": st.one_of(
            TEXT, st.lists(TEXT, max_size=3), st.integers(), st.none(), st.dictionaries(TEXT, TEXT)
        )
    },
    optional={
        "parameters": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "top_k": st.one_of(st.none(), st.integers(-2, 3), TEXT),
                    "function_to_apply": st.sampled_from(["softmax", "sigmoid", "none", "bogus"]),
                    "truncation": st.booleans(),
                },
            ),
            TEXT,
            st.lists(st.integers(), max_size=2),
        )
    },
)


@settings(max_examples=60, deadline=None)
@given(
    payload=PAYLOAD,
    content_type=st.sampled_from(["application/json", "text/csv", "text/plain", ""]),
    accept=st.sampled_from(["application/json", "text/csv", "application/x-npy", "*/*", "text/html", ""]),
)
def test_the_request_schema_fuzzed_never_a_5xx(served, payload, content_type, accept):
    """Any body shaped like the schema (and the content types around it): an answer or a 4xx, never a
    5xx, and the server keeps answering."""
    servers, _ = served
    headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
    resp = servers["classifier"].request("POST", "/invocations", json.dumps(payload).encode(), headers)
    assert resp.status == 200 or 400 <= resp.status < 500, (payload, headers, resp.status, resp.body)
    if resp.status == 200 and resp.headers["content-type"] == "application/json":
        json.loads(resp.body)
    else:
        assert resp.status == 200 or json.loads(resp.body)["error"]


def test_boto3_invoke_endpoint(served):
    """The SageMaker Runtime path: an unmodified boto3 client pointed at the server."""
    servers, oracle = served
    client = runtime_client(servers["generator"].url)
    headers, body = CASES["generator"][1][0]
    answer = client.invoke_endpoint(EndpointName="local", Body=body, ContentType=headers["Content-Type"])
    assert answer["Body"].read() == oracle["generator"][0]["body"]
    assert answer["ContentType"] == "application/json"


# ------------------------------------------------------------------ the parts, against the toolkit's own


@pytest.fixture
def toolkit(monkeypatch):
    """The toolkit's modules, imported in this process (HF_TASK restored afterwards: its task
    inference sets it)."""
    pytest.importorskip("mms")
    monkeypatch.setenv("HF_TASK", "restored-afterwards")
    from sagemaker_huggingface_inference_toolkit import decoder_encoder, handler_service, transformers_utils

    return decoder_encoder, handler_service, transformers_utils


def test_task_inference_is_the_toolkits(toolkit, tmp_path):
    from aiops.inference.huggingface import TASK_BY_ARCHITECTURE, infer_task

    _, _, transformers_utils = toolkit
    assert list(TASK_BY_ARCHITECTURE.items()) == list(transformers_utils.ARCHITECTURES_2_TASK.items())
    for architecture in (
        "BertForSequenceClassification",
        "DistilBertForTokenClassification",
        "TapasForQuestionAnswering",  # the later suffix ForQuestionAnswering wins there too
        "RobertaForMaskedLM",
        "LlamaForCausalLM",
        "GPT2LMHeadModel",
        "T5ForConditionalGeneration",
        "MarianMTModel",
    ):
        (tmp_path / "config.json").write_text(json.dumps({"architectures": [architecture]}))
        expected = transformers_utils.infer_task_from_model_architecture(str(tmp_path / "config.json"))
        assert infer_task(tmp_path) == expected, architecture


def test_bodies_decode_and_encode_as_the_toolkits(toolkit):
    import datetime

    import numpy as np
    from aiops.inference import huggingface

    decoder_encoder, _, _ = toolkit
    for body in ("inputs\nhello\nworld, again\n", "question,context\nwho?,me\n", "Inputs\n1\n"):
        assert huggingface.decode(body, "text/csv") == decoder_encoder.decode(body, "text/csv"), body
    for body in ('{"inputs": "héllo", "parameters": {"top_k": 2}}', "[1, 2.5, null]"):
        assert huggingface.decode(body, "application/json") == decoder_encoder.decode(
            body, "application/json"
        )
    answers = [
        [{"label": "LABEL_0", "score": np.float32(0.25)}, {"label": "é ✓", "score": 1e-05}],
        [[[0.1, -2.5e-07, 3.0]]],
        {"count": np.int64(3), "when": datetime.datetime(2026, 1, 2, 3, 4, 5), "array": np.arange(3)},
    ]
    for answer in answers:
        assert huggingface.encode(answer, "application/json") == decoder_encoder.encode(
            answer, "application/json"
        ).encode("utf-8")
    assert (
        huggingface.encode(answers[0], "text/csv") == decoder_encoder.encode(answers[0], "text/csv").encode()
    )
    assert huggingface.encode(answers[1], "application/x-npy") == decoder_encoder.encode(
        answers[1], "application/x-npy"
    )


def test_images_decode_as_the_toolkits_within_the_decoded_size_bound(toolkit, monkeypatch):
    import io

    from aiops.inference import codecs, huggingface
    from aiops.inference.errors import PayloadTooLarge
    from PIL import Image

    decoder_encoder, _, _ = toolkit
    png = io.BytesIO()
    Image.new("L", (40, 30), color=200).save(png, format="PNG")
    ours = huggingface.decode(png.getvalue(), "image/png")["inputs"]
    theirs = decoder_encoder.decode(png.getvalue(), "image/png")["inputs"]
    assert (ours.mode, ours.size, ours.tobytes()) == (theirs.mode, theirs.size, theirs.tobytes())
    monkeypatch.setattr(codecs.LIMITS, "max_decoded_bytes", 40 * 30 * 3 - 1)
    with pytest.raises(PayloadTooLarge, match="40x30 pixels"):
        huggingface.decode(png.getvalue(), "image/png")


def test_the_context_argument_rule_is_the_toolkits(toolkit):
    from aiops.inference.huggingface import CONTRACT, _takes_context

    from aiops.errors import UsageError

    _, handler_service, _ = toolkit
    service = handler_service.HuggingFaceHandlerService()
    defaults = {
        "model_fn": service.load,
        "input_fn": service.preprocess,
        "predict_fn": service.predict,
        "output_fn": service.postprocess,
        "transform_fn": service.transform_fn,
    }
    assert set(defaults) == set(CONTRACT)
    candidates = [lambda: 0, lambda a: 0, lambda a, b: 0, lambda a, b, c=None: 0, lambda a, b, c, d: 0]
    candidates += [lambda a, b, c, d, e: 0, lambda a, b, c, d, e, f: 0, lambda *args: 0]
    for name, default in defaults.items():
        for fn in candidates:
            try:
                theirs = service.function_extra_arg(getattr(type(service), default.__name__), fn)
            except TypeError:
                with pytest.raises(UsageError, match=f"{name} takes"):
                    _takes_context(name, fn)
            else:
                assert _takes_context(name, fn) == (theirs == [service.context]), (name, fn)


# ------------------------------------------------------------------ bad input at start


def test_a_folder_without_config_json_is_refused(run_cli, tmp_path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    result = run_cli("serve", str(folder), "--container", "huggingface", "--port", "0")
    assert result.returncode == 2, result.output
    assert result.stderr.strip() == (
        f"error: {folder.resolve()} is not a transformers model: no config.json; save the model and its "
        "tokenizer there with save_pretrained, or define model_fn in code/inference.py"
    )


def test_an_unknown_hf_task_names_the_valid_ones(run_cli, hf_folders):
    result = run_cli(
        "serve",
        str(hf_folders["classifier"]),
        "--container",
        "huggingface",
        "--port",
        "0",
        env={"HF_TASK": "text-clasification"},
    )
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: HF_TASK='text-clasification' is not a transformers pipeline task; valid: ")
    assert "text-classification" in line and "feature-extraction" in line


def test_an_architecture_without_a_task_asks_for_hf_task(run_cli, tmp_path):
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    result = run_cli("serve", str(folder), "--container", "huggingface", "--port", "0")
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "the task cannot be inferred from the architecture BertModel" in line and "set HF_TASK" in line


def test_transform_fn_with_predict_fn_is_refused(run_cli, tmp_path):
    folder = tmp_path / "both"
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "inference.py").write_text(
        "def transform_fn(m, d, c, a):\n    return d\n\ndef predict_fn(d, m):\n    return d\n"
    )
    result = run_cli("serve", str(folder), "--container", "huggingface", "--port", "0")
    assert result.returncode == 2, result.output
    assert "transform_fn cannot be used together with predict_fn" in result.stderr


def test_an_unknown_container_is_a_usage_error(run_cli, tmp_path):
    result = run_cli("serve", str(tmp_path), "--container", "onnx", "--port", "0")
    assert result.returncode == 2, result.output
    assert "serve.container='onnx'" in result.stderr and "'huggingface'" in result.stderr
