"""The pretrained-weights `model` channel of a remote job: a local Hugging Face folder (uploaded once
by content hash) or an `s3://` prefix (checked where it is), an uncompressed S3Prefix channel,
FastFile when large; bad input refused in one line before any upload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiops.training import model_channel

from aiops.stack import LAYOUT

BUCKET = "aiops-artifacts-test"  # created by the platform fixture


def _submit(run_cli, project: Path, model: str, *extra: str):
    return run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        "--json",
        "--instance-type",
        "ml.g5.xlarge",
        "--channel",
        f"model={model}",
        *extra,
    )


def _model_channel(request: dict) -> dict:
    (channel,) = [c for c in request["InputDataConfig"] if c["ChannelName"] == "model"]
    return channel


def _put_folder(platform, folder: Path, prefix: str, skip: tuple[str, ...] = ()) -> str:
    s3 = platform.boto("s3")
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in skip:
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}{path.name}", Body=path.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def test_a_local_model_is_an_uncompressed_prefix_uploaded_once(
    run_cli, project: Path, platform, tiny_llm: Path
) -> None:
    first = _submit(run_cli, project, str(tiny_llm))
    assert first.returncode == 0, first.output
    puts = platform.count("s3:PUT")
    second = _submit(run_cli, project, str(tiny_llm))
    assert second.returncode == 0, second.output
    assert platform.count("s3:PUT") == puts  # the same content: nothing uploaded again
    one, two = (_model_channel(r) for r in platform.create_requests)
    assert one == two
    source = one["DataSource"]["S3DataSource"]
    assert source["S3DataType"] == "S3Prefix" and source["S3Uri"].startswith(f"s3://{BUCKET}/{LAYOUT.data}")
    assert "CompressionType" not in one and one["InputMode"] == "File"  # small: copied before the start
    prefix = source["S3Uri"][len(f"s3://{BUCKET}/") :]
    keys = {
        o["Key"][len(prefix) :]
        for o in platform.boto("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    }
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= keys  # the files, as they are


def test_a_large_model_is_read_with_fastfile_unless_the_job_says_otherwise(
    run_cli, project: Path, platform, tiny_llm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = sum(p.stat().st_size for p in tiny_llm.iterdir() if p.is_file())
    monkeypatch.setattr(model_channel, "FAST_FILE_BYTES", size)  # the tiny model counts as large
    uri = _put_folder(platform, tiny_llm, "models/tiny/")
    streamed = _submit(run_cli, project, uri)
    assert streamed.returncode == 0, streamed.output
    assert "it is read with FastFile" in streamed.stderr
    channel = _model_channel(platform.create_requests[-1])
    assert channel["InputMode"] == "FastFile" and channel["DataSource"]["S3DataSource"]["S3Uri"] == uri
    copied = _submit(run_cli, project, str(tiny_llm), "--input-mode", "model=File")
    assert copied.returncode == 0, copied.output
    assert _model_channel(platform.create_requests[-1])["InputMode"] == "File"


@pytest.mark.parametrize(
    "skip, hps, expected",
    [
        (("config.json",), (), "has no config.json: it is not a Hugging Face model folder"),
        (("model.safetensors",), (), "has no weights (*.safetensors or pytorch_model*.bin)"),
        (("tokenizer.json",), (), "has no tokenizer"),
        (
            (),
            ("--hp", "lora-target-modules=q_proj,qkv_proj"),
            "--hp lora-target-modules: qkv_proj not in LlamaForCausalLM",
        ),
    ],
)
def test_a_bad_s3_model_is_refused_before_any_upload(
    run_cli, project: Path, platform, tiny_llm: Path, skip, hps, expected
) -> None:
    uri = _put_folder(platform, tiny_llm, "models/bad/", skip=skip)
    puts = platform.count("s3:PUT")
    result = _submit(run_cli, project, uri, *hps)
    assert result.returncode == 2, result.output
    assert expected in result.stderr and f"({uri})" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert platform.count("s3:PUT") == puts and platform.count("SageMaker.CreateTrainingJob") == 0


def test_lora_targets_are_checked_against_the_local_models_weights(
    run_cli, project: Path, platform, tiny_llm: Path
) -> None:
    result = _submit(run_cli, project, str(tiny_llm), "--hp", "lora-target-modules=self_attn.q_proj,qkv")
    assert result.returncode == 2, result.output
    line = result.stderr.strip()
    assert "qkv not in LlamaForCausalLM" in line and "self_attn.q_proj" not in line.split(" not in ")[0]
    # the layers it has, named from the weights: the attention and MLP projections
    assert all(name in line for name in ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))
    assert platform.count("s3:PUT") == 0
    fine = _submit(run_cli, project, str(tiny_llm), "--hp", "lora-target-modules=q_proj,v_proj")
    assert fine.returncode == 0, fine.output
    assert json.loads(fine.stdout)["status"] == "InProgress"
