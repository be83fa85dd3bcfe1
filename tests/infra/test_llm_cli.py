"""The GPU-fit check through the real CLI: `preview --offline --model` and `deploy --model`
refuse a model that cannot fit with one line, exit 2, before anything is created."""

from __future__ import annotations

import json
import os
import sys

import prices
import pytest
from test_gpufit import llama7b_shapes, write_header_only

STACK = """config:
  aws:region: us-east-1
  aiops:endpoint:
    enabled: true
    container: lmi
    modelDataUrl: s3://example-bucket/models/llama/
    instanceType: {instance_type}
    llm: {{maxTotalTokens: 4096, maxBatchSize: 4}}
"""


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    write_header_only(folder / "model.safetensors", llama7b_shapes())
    (folder / "config.json").write_text(
        json.dumps({"num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096})
    )
    (tmp_path / "Pulumi.small.yaml").write_text(STACK.format(instance_type="ml.g5.xlarge"))
    (tmp_path / "Pulumi.big.yaml").write_text(STACK.format(instance_type="ml.g5.12xlarge"))
    return tmp_path, folder


def test_preview_offline_refuses_a_model_that_does_not_fit(run_cli, project):
    root, folder = project
    result = run_cli("preview", "--offline", "--stack", "small", "--model", str(folder), "-C", str(root))
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the model does not fit: it needs 24.7 GiB")
    assert f"ml.g5.12xlarge (${prices.hourly('ml.g5.12xlarge'):g}/h)" in line
    assert result.stdout == ""


def test_preview_offline_prints_the_fit(run_cli, cli_in_process, project):
    root, folder = project
    result = run_cli("preview", "--offline", "--stack", "big", "--model", str(folder), "-C", str(root))
    assert result.returncode == 0, result.output
    assert (
        "GPU fit: needs 24.7 GiB of GPU memory" in result.stdout
        and "ml.g5.12xlarge has 96 GiB" in result.stdout
    )
    data = json.loads(
        cli_in_process(
            "preview", "--offline", "--json", "--stack", "big", "--model", str(folder), "-C", str(root)
        ).stdout
    )
    assert data["gpu_fit"]["fits"] is True and data["gpu_fit"]["have_gib"] == 96


def test_deploy_refuses_before_anything_is_created(run_cli, project, tmp_path):
    root, folder = project
    env = {
        "PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin",
        "PULUMI_HOME": str(tmp_path / "nohome"),
        "HOME": str(tmp_path),
    }
    # no pulumi binary, no credentials: the refusal comes first
    result = run_cli("deploy", "--stack", "small", "--model", str(folder), "-C", str(root), env=env)
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "the model does not fit" in line and "pulumi" not in line
