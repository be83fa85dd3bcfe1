"""docs/finetune.md "On a real model": the command it gives, run as written against the emulated AWS
with a Llama-3.2-3B-shaped model folder in S3, prints the GPU-fit and estimate lines the page shows,
word for word (the page's lines are this command's output, not a paraphrase)."""

from __future__ import annotations

import json
import re
import shlex
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUCKET = "aiops-artifacts-test"  # created by the platform fixture

# meta-llama/Llama-3.2-3B-Instruct's config.json (the fields transformers reads)
LLAMA_3_2_3B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "model_type": "llama",
    "num_attention_heads": 24,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_real_model_command_prints_the_lines_the_page_shows(run_cli, platform, tmp_path: Path) -> None:
    section = _section((REPO / "docs" / "finetune.md").read_text(), "On a real model")
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    command = block.group(1).replace("\\\n", " ")
    after = section[block.end() :]  # the page's indented output block, after the command
    shown = [line.strip() for line in after.splitlines() if line.startswith("    ") and line.strip()]
    assert [line.split(":", 1)[0] for line in shown] == ["GPU fit", "estimate"]

    prefix = "models/Llama-3.2-3B-Instruct/"
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    s3 = platform.boto("s3")
    for name, body in {
        "config.json": json.dumps(LLAMA_3_2_3B).encode(),
        "model.safetensors": struct.pack("<Q", len(header)) + header,  # listed and read, never loaded
        "tokenizer.json": b"{}",
    }.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + name, Body=body)
    for split in ("train", "test"):
        (tmp_path / "data" / "ft" / split).mkdir(parents=True)
        (tmp_path / "data" / "ft" / split / "data.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')

    args = shlex.split(command.replace("s3://BUCKET/", f"s3://{BUCKET}/"))
    assert args[:2] == ["aiops", "train"]
    args = [str(REPO / a) if a == "training/examples/finetune" else a for a in args[1:]]
    result = run_cli(*args, "--no-wait", cwd=tmp_path)
    assert result.returncode == 0, result.output
    printed = [" ".join(line.split()) for line in result.output.splitlines()]
    for line in shown:
        assert line in printed, (line, result.output)
    (request,) = platform.create_requests
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge"
