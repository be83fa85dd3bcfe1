"""Issue 26, the journey for a pretrained model: the LoRA fine-tuning example on the emulated AWS.

The tiny Llama model goes up as the `model` channel (a local folder, uploaded once by content hash);
`aiops train --remote` runs training/examples/finetune on 2 hosts x 1 process (torch_distributed,
DDP over gloo between the hosts' namespaces), is reclaimed (spot) once its first checkpoint is
synced to S3 and resumes from it; the job's model.tar.gz, from S3, loads with
`AutoModelForCausalLM.from_pretrained` and generates greedily the same text as the suite's local
reference run (the same hyperparameters on one process: the global batch makes the steps the same).

The job reads a `--secret` from the emulated Secrets Manager as its execution role (the container
credentials the platform hands out, moto enforcing the role's policy); with the role's secret
statement removed, the next job fails naming secretsmanager:GetSecretValue.

Kept cheap: the suite's tiny model and data, 6 steps, the local reference run shared with
tests/training/test_finetune.py. Measured alone on the shared 2-core machine (load 8): 180 s wall,
105 s of CPU (the test's process and every child: moto, the stand-in engine, 2 attempts x 2 hosts
x torchrun and its worker, the denied job), of which 56 s wall were the fixtures (the tiny model,
the data and the reference run, made once per suite) and 122 s the journey itself (an earlier run
at a higher load: 90 + 170 s).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from pathlib import Path

import pytest
from helpers import FINETUNE_STEPS, finetune_hp_args
from journey import REPO_ROOT, stack_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e-finetune")]

FINETUNE = REPO_ROOT / "training" / "examples" / "finetune"
SECRET_VALUE = "hf_e2e_not_a_real_token_7f3a"
PROMPT = [{"role": "user", "content": "What does the Python function `json.dumps(obj)` do?"}]


def _greedy(folder: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(out[0][ids["input_ids"].shape[1] :])


def _extract(journey, uri: str, dest: Path) -> Path:
    bucket, _, key = uri[len("s3://") :].partition("/")
    body = journey.account.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def _train(journey, model: Path, data: Path, secret_arn: str, name: str, *extra: str):
    return journey.aiops(
        "train",
        "train.py",
        "--source-dir",
        str(FINETUNE),
        "--channel",
        f"model={model}",
        "--channel",
        f"train={data / 'train'}",
        "--channel",
        f"test={data / 'test'}",
        *finetune_hp_args(),
        "--secret",
        f"HF_TOKEN={secret_arn}",
        "--remote",
        "--instance-type",
        "ml.g5.xlarge",
        "--job-name",
        name,
        "--no-wait",
        *extra,
    )


def test_finetune_on_two_spot_hosts_resumes_and_matches_the_local_run(
    journey, tiny_llm: Path, finetune_channels: Path, finetuned: dict, tmp_path: Path
) -> None:
    started = time.monotonic()
    secrets = journey.account.client("secretsmanager")
    arn = secrets.create_secret(Name="e2e/hf-token", SecretString=SECRET_VALUE)["ARN"]
    config = stack_config()
    config["config"]["aiops:access"] = {"trainingSecrets": [arn]}
    journey.write_stack(config)
    outputs = journey.apply(journey.preview())
    journey.platform.spot_interruptions = 1

    train = _train(
        journey,
        tiny_llm,
        finetune_channels,
        arn,
        "ft-spot",
        "--instance-count",
        "2",
        "--distribution",
        "torch_distributed",
        "--spot",
    )
    assert train.returncode == 0, journey.log()[-6000:]
    job = journey.platform.wait_job("ft-spot")
    log = "\n".join(line for name, line in job.lines if name == "algo-1")
    assert job.status == "Completed", (job.failure_reason, log[-4000:])
    assert job.interrupted == 1 and job.attempts == 2

    # the model channel: the local folder under its content hash, an uncompressed prefix, copied (small)
    (channel,) = [c for c in job.request["InputDataConfig"] if c["ChannelName"] == "model"]
    assert channel["DataSource"]["S3DataSource"]["S3DataType"] == "S3Prefix"
    assert channel["InputMode"] == "File" and "CompressionType" not in channel
    # the secret: its ARN in the request, its value nowhere but the script's memory
    assert job.request["Environment"]["AIOPS_SECRET_ARN_HF_TOKEN"] == arn
    assert "secrets read: HF_TOKEN" in log
    everything = json.dumps(job.request) + "\n".join(line for _, line in job.lines) + train.output
    assert SECRET_VALUE not in everything

    # the second attempt resumed from the checkpoint the reclaim left and trained only the rest
    resumed = re.search(r"resum\w* from \S*checkpoint-(\d+)", log)
    assert resumed, log[-3000:]
    start = int(resumed.group(1))
    assert 0 < start < FINETUNE_STEPS
    steps_after = [int(s) for s in re.findall(r"step=(\d+);", log.split(resumed.group(0), 1)[1])]
    assert steps_after and steps_after[0] == start + 1 and steps_after[-1] == FINETUNE_STEPS, steps_after

    # the job's model folder loads from S3 and generates what the local run's does
    remote_model = _extract(journey, job.model_artifact, tmp_path / "remote-model")
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in remote_model.iterdir()
    }
    local_model = finetuned["run_dir"] / "opt" / "ml" / "model"
    ours, theirs = _greedy(remote_model), _greedy(local_model)
    assert ours == theirs and ours.strip(), (ours, theirs)

    # without the role's secret statement, the job fails naming the permission
    iam = journey.account.client("iam")
    role = outputs["roleArn"].rsplit("/", 1)[1]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    kept = [s for s in document["Statement"] if "secretsmanager:GetSecretValue" not in json.dumps(s)]
    assert len(kept) == len(document["Statement"]) - 1
    iam.put_role_policy(
        RoleName=role, PolicyName=policy_name, PolicyDocument=json.dumps({**document, "Statement": kept})
    )
    denied = _train(journey, tiny_llm, finetune_channels, arn, "ft-denied", "--on-demand")
    assert denied.returncode == 0, journey.log()[-4000:]
    failed = journey.platform.wait_job("ft-denied")
    assert failed.status == "Failed"
    assert "secretsmanager:GetSecretValue" in failed.failure_reason and arn in failed.failure_reason
    assert SECRET_VALUE not in failed.failure_reason
    print(f"finetune journey: {time.monotonic() - started:.0f} s (reclaimed at step {start})")
