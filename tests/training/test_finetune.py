"""The LoRA fine-tuning example for real: `aiops example tiny-llm` and `finetune-data`, the script run
by `aiops train` on real transformers and peft, its merged model folder, a stop and a resume at
another world size, and the refusals.

One reference fine-tune (6 steps, checkpoints every 3) is shared by the tests and made once per
session, across xdist workers too (helpers.built_once), from the session's tiny model and channels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import FINETUNE_HPS, FINETUNE_SCRIPT, FINETUNE_STEPS, finetune_args, run_aiops

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = FINETUNE_SCRIPT
STEPS = FINETUNE_STEPS
HPS = FINETUNE_HPS
PROMPT = [{"role": "user", "content": "What does the Python function `json.dumps(obj)` do?"}]
_train_args = finetune_args  # the reference run is the `finetuned` fixture (tests/conftest.py)


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(
        str(folder)
    )


def _prompt_ids(tokenizer):
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt")


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _losses(run_dir: Path, name: str = "train_loss") -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["value"] for line in lines if json.loads(line)["name"] == name]


# ---------------------------------------------------------------------------------------------
# aiops example tiny-llm / finetune-data


def test_tiny_llm_is_seeded_and_loads_as_a_chat_model(tiny_llm: Path, tmp_path: Path) -> None:
    import torch
    from aiops.training.examples.finetune.tiny_llm import write_model

    assert {
        "README.md",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= {p.name for p in tiny_llm.iterdir()}  # 4.x: special_tokens_map too
    config = json.loads((tiny_llm / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    # the same seed: the same weights and tokenizer, here in this process as by the CLI
    write_model(tmp_path / "again", seed=0)
    again, reference = _tensors(tmp_path / "again"), _tensors(tiny_llm)
    assert again.keys() == reference.keys() and all(torch.equal(again[k], reference[k]) for k in again)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (tiny_llm / "tokenizer.json").read_bytes()
    write_model(tmp_path / "other", seed=1)
    other = _tensors(tmp_path / "other")
    assert not torch.equal(other["model.embed_tokens.weight"], reference["model.embed_tokens.weight"])

    model, tokenizer = _load(tiny_llm)
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 200_000
    inputs = _prompt_ids(tokenizer)
    assert tokenizer.decode(inputs["input_ids"][0]).startswith("<|im_start|>user\nWhat does")
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.do_sample is False
    first = model.generate(**inputs, max_new_tokens=6)
    assert first.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(first, model.generate(**inputs, max_new_tokens=6))


@pytest.mark.parametrize(
    "args, error",
    [
        (["--hidden", "60", "--heads", "8"], "--hidden 60 is not a multiple of --heads 8"),
        (["--heads", "4", "--kv-heads", "3"], "--heads 4 is not a multiple of --kv-heads 3"),
        (["--vocab", "100"], "--vocab 100: a byte-level vocabulary needs at least 259 tokens"),
        (["--dtype", "float16"], "--dtype float16: choose float32 or bfloat16"),
    ],
)
def test_tiny_llm_refuses_bad_sizes_in_one_line(
    cli_in_process, tmp_path: Path, args: list[str], error: str
) -> None:
    result = cli_in_process("example", "tiny-llm", str(tmp_path / "m"), *args)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {error}"), result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_tiny_llm_refuses_a_folder_in_use(cli_in_process, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "mine.txt").write_text("keep")
    result = cli_in_process("example", "tiny-llm", str(tmp_path / "m"))
    assert result.returncode == 2 and "exists and is not an empty folder" in result.stderr
    assert (tmp_path / "m" / "mine.txt").read_text() == "keep"


def test_finetune_data_is_conversations_seeded_and_split(finetune_channels: Path, tmp_path: Path) -> None:
    from aiops.training.examples.finetune.prepare import write_channels

    rows = {
        name: [
            json.loads(line) for line in (finetune_channels / name / "data.jsonl").read_text().splitlines()
        ]
        for name in ("train", "test")
    }
    assert (
        len(rows["train"]) > 1000
        and 0.05 < len(rows["test"]) / (len(rows["train"]) + len(rows["test"])) < 0.15
    )
    for row in rows["train"][:200] + rows["test"]:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert "`" in user["content"] and 20 <= len(assistant["content"]) <= 310
    questions = {row["messages"][0]["content"] for row in rows["test"]}
    assert not questions & {row["messages"][0]["content"] for row in rows["train"]}  # held out
    same = write_channels(tmp_path / "same", seed=0)
    assert (tmp_path / "same" / "train" / "data.jsonl").read_bytes() == (
        finetune_channels / "train" / "data.jsonl"
    ).read_bytes()
    other = write_channels(tmp_path / "other", seed=1, max_samples=50)
    assert other["train"]["samples"] + other["test"]["samples"] == 50
    assert other["train"]["sha256"] != same["train"]["sha256"]


# ---------------------------------------------------------------------------------------------
# The fine-tune through aiops train


def test_finetune_reports_loss_before_and_after_as_metrics(finetuned: dict) -> None:
    summary = finetuned["summary"]
    assert summary["status"] == "Completed"
    final = summary["final_metrics"]
    assert final["step"] == STEPS
    assert final["test_loss_after"] < final["test_loss_before"]
    assert final["test_perplexity_before"] == pytest.approx(
        2.718281828 ** final["test_loss_before"], rel=1e-4
    )
    assert len(_losses(finetuned["run_dir"])) == STEPS
    assert "Traceback" not in finetuned["output"] and "{'loss'" not in finetuned["output"]
    metrics = run_aiops(finetuned["home"], finetuned["run_dir"], "jobs", "metrics", "ref", "--json")
    series = json.loads(metrics.stdout)["series"]
    assert len(series["train_loss"]) == STEPS and len(series["test_loss_after"]) == 1
    output = json.loads(
        (finetuned["run_dir"] / "opt" / "ml" / "output" / "data" / "metrics.json").read_text()
    )
    assert output["steps"] == STEPS and output["test_loss_after"] == pytest.approx(
        final["test_loss_after"], abs=1e-6
    )


def test_finetune_writes_a_merged_model_folder_that_loads_and_generates(
    finetuned: dict, tiny_llm: Path
) -> None:
    import torch
    from peft import PeftModel

    opt = finetuned["run_dir"] / "opt" / "ml"
    model_dir = opt / "model"
    tokenizer_files = {
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "special_tokens_map.json",
    }
    written = {p.name for p in model_dir.iterdir()}
    assert written - tokenizer_files == {"config.json", "generation_config.json", "model.safetensors"}
    assert written & tokenizer_files == {p.name for p in tiny_llm.iterdir()} & tokenizer_files
    for name in written & tokenizer_files:  # the channel's, as they came
        assert (model_dir / name).read_bytes() == (tiny_llm / name).read_bytes()
    with tarfile.open(finetuned["summary"]["artifacts"]["model"]) as tar:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(tar.getnames())

    merged, tokenizer = _load(model_dir)
    base, _ = _load(tiny_llm)
    inputs = _prompt_ids(tokenizer)
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
        base_logits = base(**inputs).logits
        adapted = PeftModel.from_pretrained(base, str(opt / "output" / "data" / "adapter")).eval()
        adapted_logits = adapted(**inputs).logits
    assert torch.allclose(merged_logits, adapted_logits, atol=1e-5)  # the merge is the adapters
    assert (merged_logits - base_logits).abs().max() > 1e-3  # and they changed the model
    greedy = merged.generate(**inputs, max_new_tokens=8)
    assert torch.equal(greedy, adapted.generate(**inputs, max_new_tokens=8))
    assert torch.equal(greedy, merged.generate(**inputs, max_new_tokens=8))


def test_finetune_checkpoints_are_marked_complete(finetuned: dict) -> None:
    checkpoints = finetuned["run_dir"] / "opt" / "ml" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    for folder in checkpoints.iterdir():
        assert (folder / "aiops-complete").read_text().strip() == folder.name.split("-")[1]
        assert (folder / "adapter_model.safetensors").is_file() and (folder / "optimizer.pt").is_file()


def test_finetune_stopped_on_two_processes_resumes_on_one_to_the_same_model(
    finetuned: dict, tiny_llm: Path, finetune_channels: Path, tmp_path: Path
) -> None:
    """`aiops jobs stop` while rank 0 holds after step 3 (AIOPS_FINETUNE_PAUSE_AT): both processes
    stop after that step's checkpoint; `--resume` on one process ends where the uninterrupted
    one-process reference does. The global batch is the same at both world sizes, so are the batches."""

    home = tmp_path / "home"
    args = _train_args(
        tiny_llm,
        finetune_channels,
        "--job-name",
        "stopped",
        "--nproc",
        "2",
        "--env",
        "AIOPS_FINETUNE_PAUSE_AT=3",
        "--json",
    )
    env = {**os.environ, "AIOPS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "aiops.cli.app", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as proc:
        seen = []
        for line in proc.stdout:  # waits on the script's own line, no clock
            seen.append(line)
            if "paused after step 3" in line:
                break
        assert proc.poll() is None, "".join(seen)
        stop = run_aiops(home, tmp_path, "jobs", "stop", "stopped")
        assert stop.returncode == 0, stop.output
        output = "".join(seen) + proc.stdout.read()
        assert proc.wait(timeout=120) == 143, output
    record = json.loads((home / "runs" / "stopped" / "run.json").read_text())
    assert record["status"] == "Stopped" and record["config"]["environment"] == {
        "AIOPS_FINETUNE_PAUSE_AT": "3"
    }
    assert "x 2 process(es) (DDP)" in output and "stopped after step 3" in output
    reference = _losses(finetuned["run_dir"])
    assert _losses(home / "runs" / "stopped") == pytest.approx(
        reference[:3], abs=2e-4
    )  # transformers 4 logs 4 decimals
    checkpoints = home / "runs" / "stopped" / "opt" / "ml" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-3"]
    assert (checkpoints / "checkpoint-3" / "aiops-complete").is_file()

    resumed = run_aiops(
        home,
        tmp_path,
        "train",
        "--resume",
        "stopped",
        "--nproc",
        "1",
        "--distribution",
        "none",
        "--job-name",
        "resumed",
        "--json",
    )
    assert resumed.returncode == 0, resumed.output
    assert "resuming from" in resumed.stderr and "x 1 process(es) (one process)" in resumed.stderr
    run_dir = home / "runs" / "resumed"
    assert _losses(run_dir) == pytest.approx(reference[3:], abs=2e-4)  # steps 4..6
    ours, theirs = (
        _tensors(run_dir / "opt" / "ml" / "model"),
        _tensors(finetuned["run_dir"] / "opt" / "ml" / "model"),
    )
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-5


def test_missing_lora_target_modules_are_refused_before_the_run(
    tiny_llm: Path, finetune_channels: Path, tmp_path: Path
) -> None:
    """Checked by `aiops train` against the module names in the weights' safetensors header (nothing
    loaded, nothing run); the script refuses them too when started another way."""
    result = run_aiops(
        tmp_path / "home",
        tmp_path,
        *_train_args(
            tiny_llm,
            finetune_channels,
            "--job-name",
            "badlora",
            **{"lora-target-modules": "q_proj,qkv_proj"},
        ),
    )
    assert result.returncode == 2, result.output
    line = result.stderr.strip()
    assert (
        line.startswith("error: --hp lora-target-modules: qkv_proj not in LlamaForCausalLM")
        and "\n" not in line
    )
    assert "q_proj" in line.split("weight matrices are in", 1)[1] and "Traceback" not in result.output
    assert not (tmp_path / "home" / "runs").exists()  # nothing started


# ---------------------------------------------------------------------------------------------
# The model channel, checked before anything runs


def _broken(tiny_llm: Path, tmp_path: Path, case: str) -> Path:
    folder = tmp_path / case
    shutil.copytree(tiny_llm, folder)
    if case == "no-config":
        (folder / "config.json").unlink()
    elif case == "bad-json":
        (folder / "config.json").write_text("{")
    elif case == "no-weights":
        (folder / "model.safetensors").unlink()
    elif case == "missing-shard":
        (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
        (folder / "model.safetensors.index.json").write_text(
            json.dumps(
                {
                    "weight_map": {
                        "a": "model-00001-of-00002.safetensors",
                        "b": "model-00002-of-00002.safetensors",
                    }
                }
            )
        )
    elif case == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
    elif case == "unknown-architecture":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama-from-the-future"}))
    return folder


@pytest.mark.parametrize(
    "case, error",
    [
        ("no-config", "has no config.json: it is not a Hugging Face model folder"),
        ("bad-json", "config.json is not valid JSON"),
        ("no-weights", "has no weights (*.safetensors or pytorch_model*.bin)"),
        (
            "missing-shard",
            (
                "1 weight shard(s) listed in model.safetensors.index.json are missing "
                "(first: model-00002-of-00002.safetensors)"
            ),
        ),
        ("no-tokenizer", "has no tokenizer (tokenizer.json, tokenizer.model, or vocab.json with merges.txt)"),
        (
            "unknown-architecture",
            "model_type 'llama-from-the-future' is not an architecture the installed transformers",
        ),
    ],
)
def test_model_channel_that_is_not_a_hugging_face_folder_is_refused(
    cli_in_process,
    tiny_llm: Path,
    finetune_channels: Path,
    aiops_home: Path,
    tmp_path: Path,
    case: str,
    error: str,
) -> None:
    folder = _broken(tiny_llm, tmp_path, case)
    result = cli_in_process(*_train_args(folder, finetune_channels))
    assert result.returncode == 2, result.output
    assert result.stderr.startswith(f"error: channel 'model' ({folder})") and error in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (aiops_home / "runs").exists()  # nothing started, nothing written
