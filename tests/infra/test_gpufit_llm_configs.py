"""The endpoint's GPU-fit check on two public architectures, written out here as their config.json
and safetensors headers say, against figures computed by hand in the comments."""

from __future__ import annotations

import json

import pytest
from aiops.infra import fitcheck
from test_gpufit import write_header_only

from aiops.errors import UsageError

GIB = 1 << 30


def decoder_shapes(*, vocab: int, hidden: int, layers: int, kv_heads: int, head_dim: int, mlp: int):
    shapes = {
        "model.embed_tokens.weight": [vocab, hidden],
        "lm_head.weight": [vocab, hidden],
        "model.norm.weight": [hidden],
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = [hidden, hidden]
        shapes[p + "self_attn.k_proj.weight"] = [kv_heads * head_dim, hidden]
        shapes[p + "self_attn.v_proj.weight"] = [kv_heads * head_dim, hidden]
        shapes[p + "self_attn.o_proj.weight"] = [hidden, hidden]
        shapes[p + "mlp.gate_proj.weight"] = [mlp, hidden]
        shapes[p + "mlp.up_proj.weight"] = [mlp, hidden]
        shapes[p + "mlp.down_proj.weight"] = [hidden, mlp]
        shapes[p + "input_layernorm.weight"] = [hidden]
        shapes[p + "post_attention_layernorm.weight"] = [hidden]
    return shapes


# Llama-3-8B's config.json: 32 layers, 32 query heads, 8 KV heads (GQA), hidden 4096, MLP 14336
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}
# per layer: q, o 4096^2 = 16,777,216 each; k, v 1024 x 4096 = 4,194,304 each;
# gate, up, down 14336 x 4096 = 58,720,256 each; two norms 4096 each -> 218,112,000
# 32 layers 6,979,584,000 + embeddings and head 2 x 128256 x 4096 = 1,050,673,152 + norm 4096
LLAMA3_8B_PARAMS = 8_030_261_248

# Mistral-7B-v0.1's config.json: the same layer shapes, a 32000-token vocabulary
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "sliding_window": 4096,
    "torch_dtype": "bfloat16",
}
# 6,979,584,000 + 2 x 32000 x 4096 = 262,144,000 + 4096
MISTRAL_7B_PARAMS = 7_241_732_096

# both: K and V x 32 layers x 8 KV heads x 128 head dim x 2 bytes = 131,072 B (128 KiB) per token
KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2


def model_folder(tmp_path, name: str, config: dict) -> object:
    folder = tmp_path / name
    folder.mkdir()
    shapes = decoder_shapes(
        vocab=config["vocab_size"],
        hidden=config["hidden_size"],
        layers=config["num_hidden_layers"],
        kv_heads=config["num_key_value_heads"],
        head_dim=config["hidden_size"] // config["num_attention_heads"],
        mlp=config["intermediate_size"],
    )
    write_header_only(folder / "model.safetensors", shapes, dtype="BF16")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def tgi(make_config, instance_type: str, tokens: int, batch: int):
    return make_config(
        endpoint={
            "container": "tgi",
            "instanceType": instance_type,
            "llm": {"maxTotalTokens": tokens, "maxBatchSize": batch, "dtype": "bf16"},
        }
    )


def test_hand_counts_of_the_two_architectures(tmp_path) -> None:
    for name, config, params in (
        ("llama3", LLAMA3_8B, LLAMA3_8B_PARAMS),
        ("mistral", MISTRAL_7B, MISTRAL_7B_PARAMS),
    ):
        folder = model_folder(tmp_path, name, config)
        assert fitcheck.model_stats(folder).parameters == params
        assert fitcheck.kv_shape_from_config(config) == (32, 8, 128)


def test_llama3_8b_with_8192_tokens_x_8_refused_on_one_a10g(make_config, tmp_path) -> None:
    folder = model_folder(tmp_path, "llama3", LLAMA3_8B)
    cfg = tgi(make_config, "ml.g5.2xlarge", 8192, 8)
    fit = fitcheck.endpoint_fit(cfg, fitcheck.model_stats(folder), LLAMA3_8B)
    # weights 8,030,261,248 x 2 B = 14.957 GiB; KV 128 KiB x 8192 x 8 = 8 GiB; x 1.2 = 27.549 GiB
    assert fit.need.weights == LLAMA3_8B_PARAMS * 2
    assert fit.need.kv_cache == KV_BYTES_PER_TOKEN * 8192 * 8 == 8 * GIB
    assert fit.need.total_gib == pytest.approx((LLAMA3_8B_PARAMS * 2 / GIB + 8) * 1.2)
    assert fit.need.total_gib == pytest.approx(27.549, abs=0.001)
    with pytest.raises(UsageError) as err:
        fitcheck.check_local_model(cfg, folder)
    line = str(err.value)
    assert "needs 27.5 GiB" in line and "ml.g5.2xlarge has 24 GiB" in line and "\n" not in line
    # one L40S (48 GiB) holds it, as do four A10Gs with the default tensor parallelism
    assert fitcheck.check_local_model(tgi(make_config, "ml.g6e.xlarge", 8192, 8), folder).fits
    assert fitcheck.check_local_model(tgi(make_config, "ml.g5.12xlarge", 8192, 8), folder).fits


def test_mistral_7b_fits_one_a10g_at_a_small_batch_only(make_config, tmp_path) -> None:
    folder = model_folder(tmp_path, "mistral", MISTRAL_7B)
    # weights 7,241,732,096 x 2 B = 13.489 GiB; KV 128 KiB x 4096 x 4 = 2 GiB; x 1.2 = 18.586 GiB
    small = fitcheck.check_local_model(tgi(make_config, "ml.g5.xlarge", 4096, 4), folder)
    assert small.fits
    assert small.need.total_gib == pytest.approx((MISTRAL_7B_PARAMS * 2 / GIB + 2) * 1.2)
    assert small.need.total_gib == pytest.approx(18.586, abs=0.001)
    # batch 16: KV 8 GiB -> (13.489 + 8) x 1.2 = 25.786 GiB > 24
    with pytest.raises(UsageError, match=r"needs 25\.8 GiB .*ml\.g5\.xlarge has 24 GiB"):
        fitcheck.check_local_model(tgi(make_config, "ml.g5.xlarge", 4096, 16), folder)
