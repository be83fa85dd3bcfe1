"""Issue 28, the LLM journey on the emulated AWS: a training job whose output is a Hugging Face
causal-LM folder -> `aiops deploy --model job:NAME` on a stack with `container: tgi` -> the endpoint
answers boto3 `invoke_endpoint`, `invoke_endpoint_with_response_stream` and `aiops invoke --stream`
with the greedy text of `model.generate(do_sample=False)` on the local folder.

The job is the cheapest one with such an output: a script that copies its `model` channel (the
suite's tiny model, `aiops example tiny-llm`) into SM_MODEL_DIR, so SageMaker's model.tar.gz holds the
folder; no training (tests/e2e/test_finetune_journey.py trains one). `aiops deploy` unpacks that
archive and uploads its files under their content hash (an S3Prefix, no tarball, no code/ repack);
the platform downloads the prefix as the endpoint's role (moto enforcing its policy, every call
judged) and serves it with `aiops serve --container tgi`, from the image the stack names and the
environment TGI's SageMaker entrypoint reads. `--model FOLDER` of the same folder resolves to the
same prefix. Switched to asynchronous inference, `aiops invoke --async` gets the same answer.

Switched in one stage to inference components on a 4-GPU type with one accelerator a copy and to
`container: lmi`, the endpoint's configuration names no model and the same prefix runs as a component
on LMI's image with the environment LMI reads (`HF_MODEL_ID=/opt/ml/model`, `OPTION_*`), told to shard
over its one GPU (`TENSOR_PARALLEL_DEGREE=1`: the emulator refuses a degree above the GPUs a copy
sees), through `aiops serve --container lmi`; boto3 with `InferenceComponentName` gets LMI's
`{"generated_text"}` and its JSON-lines stream with the same text, and `OPTION_MAX_MODEL_LEN` is the
context length it enforces. With the role's s3:ListBucket statement removed, the next component fails
naming it. (One stage, not two: each stage costs the suite a model server's start, ~8 s of CPU.)

Measured alone on the shared 2-core machine (load 2-5): 39-40 s of CPU (the test's process and every
child: moto, the CLI runs, the copy job, three model servers), 8 s of which is the suite's tiny-model
fixture, shared with the other LLM tests; the LMI component stage is 8-9 s of it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from engine import wait_inference_component
from iam_judge import denials
from journey import Journey, stack_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e-llm-journey")]

COMPONENT = "aws-native:sagemaker:InferenceComponent"
PROMPT = "def main():"
NEW_TOKENS = 12
COPY_MODEL = """
import os, shutil

shutil.copytree(os.environ["SM_CHANNEL_MODEL"], os.environ["SM_MODEL_DIR"], dirs_exist_ok=True)
print("model files:", " ".join(sorted(os.listdir(os.environ["SM_MODEL_DIR"]))), flush=True)
"""


def _greedy(folder: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    return tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)


def _request(*, stream: bool) -> bytes:
    parameters = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "return_full_text": False}
    return json.dumps({"inputs": PROMPT, "parameters": parameters, "stream": stream}).encode()


def _sse_events(body: bytes) -> list[dict[str, Any]]:
    """TGI's server-sent events: one `data:{json}` line each."""
    return [json.loads(line[5:]) for line in body.split(b"\n") if line.startswith(b"data:")]


def _streamed_text(body: bytes) -> str:
    events = _sse_events(body)
    assert events and all(e.get("token") for e in events), body[:500]
    assert [e["generated_text"] is not None for e in events] == [False] * (len(events) - 1) + [True]
    return events[-1]["generated_text"]


def _lmi_streamed_text(body: bytes) -> str:
    """LMI's stream: a JSON object a line, each with its token; the last one carries the text."""
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert lines and all(line["token"]["text"] is not None for line in lines), body[:500]
    assert [line["generated_text"] is not None for line in lines] == [False] * (len(lines) - 1) + [True]
    return lines[-1]["generated_text"]


def _model_container(plan: dict[str, Any]) -> dict[str, Any]:
    model = next(r for r in plan["resources"] if r["type"] == "aws:sagemaker/model:Model")
    return model["inputs"]["primaryContainer"]


def _invoke(runtime: Any, target: dict[str, str], *, stream: bool) -> tuple[str, bytes]:
    """One runtime call (the whole answer, or every PayloadPart joined): its content type and body."""
    if not stream:
        answer = runtime.invoke_endpoint(
            **target, ContentType="application/json", Body=_request(stream=False)
        )
        return answer["ContentType"], answer["Body"].read()
    streamed = runtime.invoke_endpoint_with_response_stream(
        **target, ContentType="application/json", Body=_request(stream=True)
    )
    return streamed["ContentType"], b"".join(event["PayloadPart"]["Bytes"] for event in streamed["Body"])


def _judged(journey: Journey, since: int) -> int:
    """The platform's calls from ``since`` on are allowed by the documents deployed now (each stage of
    the journey by its own: a later stack drops the async topics' statement, or names another image
    repository); where the next stage's calls start."""
    calls = journey.platform.calls[since:]
    assert not denials(journey.platform.documents(journey.outputs["roleArn"]), calls)
    return since + len(calls)


def _without_statement(journey: Journey, action: str) -> None:
    """The role's deployed policy, less the one statement that grants ``action``."""
    iam = journey.account.client("iam")
    role = journey.outputs["roleArn"].rsplit("/", 1)[1]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    kept = [s for s in document["Statement"] if action not in json.dumps(s.get("Action"))]
    assert len(kept) == len(document["Statement"]) - 1, document
    iam.put_role_policy(
        RoleName=role, PolicyName=policy_name, PolicyDocument=json.dumps({**document, "Statement": kept})
    )


def test_a_fine_tuned_folder_on_tgi_then_an_lmi_component_answers_the_local_greedy_text(
    journey: Journey, tiny_llm: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    want = _greedy(tiny_llm)
    assert want.strip()

    config = stack_config()
    config["config"]["aiops:endpoint"].update(
        container="tgi", llm={"maxTotalTokens": 256, "maxInputTokens": 128, "maxBatchSize": 4}
    )
    journey.write_stack(config)
    outputs = journey.apply(journey.preview())

    # a job whose output is the HF folder: SageMaker tars SM_MODEL_DIR into model.tar.gz
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(COPY_MODEL)
    train = journey.aiops(
        "train",
        "train.py",
        "--source-dir",
        str(code),
        "--channel",
        f"model={tiny_llm}",
        "--remote",
        "--instance-type",
        "ml.c5.xlarge",
        "--job-name",
        "llm-copy",
    )
    assert train.returncode == 0, journey.log()[-6000:]
    job = journey.platform.jobs["llm-copy"]
    assert job.status == "Completed" and job.model_artifact.endswith("/model.tar.gz")

    # aiops deploy --model job:NAME: the archive unpacked, its files under their content hash
    deployed = journey.deploy_model("job:llm-copy")
    uri = deployed["uri"]
    assert uri.startswith(f"s3://{outputs['bucket']}/models/sha256/") and uri.endswith("/"), deployed
    assert "deployed uncompressed for the tgi container" in deployed["note"], deployed
    # what deploy writes to the stack file: the model and its size; no SAGEMAKER_PROGRAM (TGI runs no code/)
    assert set(deployed["keys"]) == {"aiops:endpoint.modelDataUrl", "aiops:endpoint.modelSizeGb"}
    s3 = journey.account.client("s3")
    prefix = uri[len(f"s3://{outputs['bucket']}/") :]
    keys = {
        o["Key"][len(prefix) :]
        for o in s3.list_objects_v2(Bucket=outputs["bucket"], Prefix=prefix)["Contents"]
    }
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= keys and not any(
        k.endswith(".tar.gz") or k.startswith("code/") for k in keys
    ), keys
    journey.set_config("aiops:endpoint.enabled", True)
    plan = journey.preview()
    container = _model_container(plan)
    uncompressed = [{"s3Uri": uri, "s3DataType": "S3Prefix", "compressionType": "None"}]
    assert "modelDataUrl" not in container, container
    assert container["modelDataSource"]["s3DataSources"] == uncompressed
    assert "huggingface-pytorch-tgi-inference" in container["image"]
    assert {
        "HF_MODEL_ID": "/opt/ml/model",
        "MAX_TOTAL_TOKENS": "256",
        "MAX_INPUT_TOKENS": "128",
        "MAX_BATCH_SIZE": "4",
    }.items() <= container["environment"].items()
    journey.apply(plan)
    name = journey.outputs["endpointName"]
    endpoint = journey.platform.endpoints[name]
    assert endpoint.status == "InService", (endpoint.failure_reason, journey.log()[-4000:])

    # the container's environment reached the server, as TGI's launcher reads it
    from aiops.settings import ServeSettings

    info = json.loads(endpoint.server.request("GET", "/info").body)
    assert (info["max_total_tokens"], info["max_input_tokens"]) == (256, 128), info
    queue = ServeSettings.model_fields["max_queue"].default
    assert info["max_concurrent_requests"] == 4 + queue, info  # MAX_BATCH_SIZE=4 decoded together

    runtime = journey.account.client("sagemaker-runtime", endpoint=journey.platform.url)
    _, answer = _invoke(runtime, {"EndpointName": name}, stream=False)
    assert json.loads(answer) == [{"generated_text": want}]
    content_type, streamed = _invoke(runtime, {"EndpointName": name}, stream=True)
    assert content_type.startswith("text/event-stream"), content_type
    assert _streamed_text(streamed) == want

    body = tmp_path / "request.json"
    body.write_bytes(_request(stream=True))
    cli = journey.aiops("invoke", "--endpoint", name, "--stream", "--data", f"@{body}")
    assert cli.returncode == 0, cli.output
    assert _streamed_text(cli.stdout.encode()) == want

    # --model FOLDER: the same files, so the same content-addressed prefix; nothing uploaded again
    again = journey.deploy_model(str(tiny_llm))
    assert again["uri"] == uri and "0 file(s) uploaded, 0 copied inside S3" in again["note"], again

    # asynchronous inference takes the same model: the request from S3, TGI's answer written there
    journey.set_config("aiops:endpoint.asyncInference", {"enabled": True, "maxCapacity": 1})
    journey.apply(journey.preview())
    assert endpoint.status == "InService" and endpoint.async_config, endpoint.failure_reason
    body.write_bytes(_request(stream=False))
    out = tmp_path / "async-answer.json"
    queued = journey.aiops(
        "invoke",
        "--async",
        "--endpoint",
        name,
        "--data",
        f"@{body}",
        "--output",
        str(out),
        "--timeout",
        "120",
    )
    assert queued.returncode == 0, queued.output
    assert json.loads(out.read_text()) == [{"generated_text": want}]
    # the prefix was read as the endpoint's role; every call so far allowed by the deployed documents
    judged = _judged(journey, 0)
    made = {(c.action, c.resource) for c in endpoint.calls}
    assert ("s3:ListBucket", f"arn:aws:s3:::{outputs['bucket']}") in made
    assert ("s3:GetObject", f"arn:aws:s3:::{outputs['bucket']}/{prefix}config.json") in made

    # inference components and container: lmi, one stage: the endpoint's configuration names no model;
    # the same prefix is a component whose copy has one of the instance's 4 GPUs, on LMI's image with
    # the environment LMI reads, told to shard over that one GPU
    journey.set_config("aiops:endpoint.asyncInference", {"enabled": False})
    journey.set_config("aiops:endpoint.instanceType", "ml.g4dn.12xlarge")
    journey.set_config("aiops:endpoint.inferenceComponents", {"enabled": True, "acceleratorsPerCopy": 1})
    journey.set_config("aiops:endpoint.container", "lmi")
    journey.set_config("aiops:endpoint.llm", {"maxTotalTokens": 256, "maxBatchSize": 4})  # no prompt limit
    plan = journey.preview()
    (spec,) = [r["inputs"]["specification"] for r in plan["resources"] if r["type"] == COMPONENT]
    assert spec["computeResourceRequirements"]["numberOfAcceleratorDevicesRequired"] == 1
    container = _model_container(plan)
    assert "/djl-inference:" in container["image"], container["image"]
    assert container["modelDataSource"]["s3DataSources"] == uncompressed
    assert container["environment"] == {
        "HF_MODEL_ID": "/opt/ml/model",  # where SageMaker puts the uncompressed prefix
        "TENSOR_PARALLEL_DEGREE": "1",  # the copy's one GPU, not the instance's 4
        "OPTION_ROLLING_BATCH": "vllm",
        "OPTION_MAX_ROLLING_BATCH_SIZE": "4",
        "OPTION_MAX_MODEL_LEN": "256",
    }
    journey.apply(plan)
    component_name = journey.outputs["inferenceComponentName"]
    component = journey.platform.components[component_name]
    assert component.status == "InService", (component.failure_reason, journey.log()[-4000:])
    assert "/djl-inference:" in component.model["PrimaryContainer"]["Image"]
    assert endpoint.hosts_components and endpoint.server is None  # the async server is gone
    target = {"EndpointName": name, "InferenceComponentName": component_name}
    _, answer = _invoke(runtime, target, stream=False)
    assert json.loads(answer) == {"generated_text": want}, answer
    content_type, streamed = _invoke(runtime, target, stream=True)
    assert content_type == "application/jsonlines" and _lmi_streamed_text(streamed) == want
    # OPTION_MAX_MODEL_LEN reached LMI: a longer prompt is vLLM's 400, relayed as the runtime's ModelError
    too_long = json.dumps({"inputs": "def main(): " * 200, "parameters": {"max_new_tokens": 1}})
    with pytest.raises(runtime.exceptions.ModelError) as refused:
        runtime.invoke_endpoint(**target, ContentType="application/json", Body=too_long.encode())
    assert refused.value.response["OriginalStatusCode"] == 400
    assert "maximum context length is 256 tokens" in refused.value.response["OriginalMessage"]

    # allowed by the documents now deployed (LMI's image repository, no async topics); the component read
    # the prefix as the role of the endpoint's configuration
    _judged(journey, judged)
    assert any(
        c.action == "s3:GetObject"
        and c.resource == f"arn:aws:s3:::{outputs['bucket']}/{prefix}config.json"
        and f"inference component {component_name}" in c.doing
        for c in journey.platform.calls
    )

    # without the role's s3:ListBucket statement, the next component cannot list the prefix
    _without_statement(journey, "s3:ListBucket")
    sm = journey.account.client("sagemaker", endpoint=journey.platform.url)
    sm.create_inference_component(
        InferenceComponentName="llm-denied",
        EndpointName=name,
        VariantName=component.request["VariantName"],
        Specification=component.request["Specification"],
        RuntimeConfig={"CopyCount": 1},
    )
    denied = wait_inference_component(sm, "llm-denied")
    assert denied["InferenceComponentStatus"] == "Failed", denied
    assert "s3:ListBucket" in denied["FailureReason"], denied["FailureReason"]
    assert f"arn:aws:s3:::{outputs['bucket']}" in denied["FailureReason"]
    assert journey.platform.components["llm-denied"].server is None
    print(f"LLM journey: {time.monotonic() - started:.0f} s")
