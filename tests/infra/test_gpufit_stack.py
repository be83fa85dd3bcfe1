"""The endpoint's GPU-fit check: the stack's LLM settings set the KV-cache budget, the model's
own config.json its shape; a refusal is one line (hand-computed figures in tests/test_gpufit.py)."""

from __future__ import annotations

import json
import tarfile

import prices
import pytest
from aiops.infra import fitcheck
from test_gpufit import LLAMA7B_PARAMS, llama7b_shapes, write_header_only

from aiops.errors import UsageError

LLAMA_CONFIG = {"num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096}


@pytest.fixture
def llama_folder(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    write_header_only(folder / "model.safetensors", llama7b_shapes())
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    return folder


def test_kv_budget_from_the_stack_refuses_g5_xlarge(make_config, llama_folder):
    cfg = make_config(endpoint={"container": "lmi", "llm": {"maxTotalTokens": 4096, "maxBatchSize": 4}})
    with pytest.raises(UsageError) as err:
        fitcheck.check_local_model(cfg, llama_folder)
    line = str(err.value)
    # (12.55 GiB fp16 weights + 8 GiB KV cache: 32 x 2 x 32 x 128 x 4096 x 4 x 2 B) x 1.2 = 24.66 GiB
    assert line.startswith(
        "the model does not fit: it needs 24.7 GiB of GPU memory (6.74B parameters as stored, "
        "KV cache 4096 tokens x batch 4, +20% overhead), ml.g5.xlarge has 24 GiB"
    )
    cheapest = prices.cheapest(["ml.g4dn.12xlarge", "ml.g5.12xlarge", "ml.g5.24xlarge"])
    assert ", ".join(f"{t} (${h:g}/h)" for t, h in cheapest) in line
    assert "\n" not in line


def test_fits_elsewhere_and_without_the_kv_budget(make_config, llama_folder):
    big = make_config(
        endpoint={
            "container": "lmi",
            "instanceType": "ml.g5.12xlarge",
            "llm": {"maxTotalTokens": 4096, "maxBatchSize": 4},
        }
    )
    fit = fitcheck.check_local_model(big, llama_folder)
    assert fit.fits and fit.have_gib == 96
    # weights only: 12.55 x 1.2 = 15.06 GiB on 24
    assert fitcheck.check_local_model(make_config(endpoint={"container": "lmi"}), llama_folder).fits
    # the check can be turned off, and does not apply to serverless variants
    off = make_config(
        endpoint={
            "container": "lmi",
            "llm": {"maxTotalTokens": 4096, "maxBatchSize": 4},
            "gpuFit": {"enabled": False},
        }
    )
    assert fitcheck.check_local_model(off, llama_folder) is None


def test_tarball_with_config_json(make_config, llama_folder, tmp_path):
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        tar.add(llama_folder / "model.safetensors", arcname="model.safetensors")
        tar.add(llama_folder / "config.json", arcname="config.json")
    assert fitcheck.local_config_json(tmp_path / "model.tar.gz") == LLAMA_CONFIG
    cfg = make_config(endpoint={"llm": {"maxTotalTokens": 4096, "maxBatchSize": 4}})
    with pytest.raises(UsageError, match="does not fit"):
        fitcheck.check_local_model(cfg, tmp_path / "model.tar.gz")
    assert (
        fitcheck.endpoint_fit(cfg, fitcheck.model_stats(tmp_path / "model.tar.gz")).need.weights
        == 2 * LLAMA7B_PARAMS
    )


def test_pytorch_container_needs_the_model_on_one_gpu(make_config, llama_folder):
    # 15.06 GiB of fp16 weights: fits one 24 GiB A10G; with the KV budget (24.66 GiB) ml.g5.12xlarge's
    # 96 GiB do not help the PyTorch container, which loads a copy per GPU (24 GiB each)
    cfg = make_config(
        endpoint={"instanceType": "ml.g5.12xlarge", "llm": {"maxTotalTokens": 4096, "maxBatchSize": 4}}
    )
    with pytest.raises(UsageError) as err:
        fitcheck.check_local_model(cfg, llama_folder)
    assert "ml.g5.12xlarge has 24 GiB (1 of 4 x NVIDIA A10G 24 GiB for one model copy)" in str(err.value)
    # the suggestions are types whose single GPU holds 24.66 GiB: priced ones first (p4d's A100 40 GiB)
    assert f"ml.p4d.24xlarge (${prices.hourly('ml.p4d.24xlarge'):g}/h)" in str(err.value)
    # LMI with an explicit tensor-parallel degree of 2 spans 2 x 24 = 48 GiB: fits
    lmi = make_config(
        endpoint={
            "container": "lmi",
            "instanceType": "ml.g5.12xlarge",
            "llm": {"maxTotalTokens": 4096, "maxBatchSize": 4, "tensorParallelDegree": 2},
        }
    )
    assert fitcheck.check_local_model(lmi, llama_folder).have_gib == 48


def test_an_inference_component_copy_has_only_its_accelerators(make_config, llama_folder):
    # 24.66 GiB with the KV budget: ml.g5.12xlarge's 4 x 24 GiB hold it, one copy's single A10G does not
    endpoint = {
        "container": "tgi",
        "instanceType": "ml.g5.12xlarge",
        "llm": {"maxTotalTokens": 4096, "maxBatchSize": 4},
        "inferenceComponents": {"enabled": True},
    }
    assert fitcheck.check_local_model(make_config(endpoint=endpoint), llama_folder).have_gib == 96
    endpoint["inferenceComponents"]["acceleratorsPerCopy"] = 1
    with pytest.raises(UsageError) as err:
        fitcheck.check_local_model(make_config(endpoint=endpoint), llama_folder)
    assert "ml.g5.12xlarge has 24 GiB (1 of 4 x NVIDIA A10G 24 GiB for one model copy)" in str(err.value)
