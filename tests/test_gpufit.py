"""The GPU-fit check: tensor sizes read from real files without the weights, and the estimate
against hand-computed figures (the arithmetic is written out beside each assertion)."""

from __future__ import annotations

import json
import struct
import tarfile

import prices
import pytest

from aiops import gpufit, tensorstats
from aiops.errors import UsageError

GIB = 1 << 30

# Llama-2-7B's tensor shapes (hidden 4096, 32 layers, MLP 11008, vocab 32000, 32 KV heads of 128):
# 2 x 32000 x 4096 (embeddings, lm_head) + 32 x (4 x 4096^2 + 3 x 11008 x 4096 + 2 x 4096) + 4096
# = 262,144,000 + 32 x 202,383,360 + 4096 = 6,738,415,616 parameters.
LLAMA7B_PARAMS = 6_738_415_616


def llama7b_shapes() -> dict[str, list[int]]:
    shapes = {
        "model.embed_tokens.weight": [32000, 4096],
        "lm_head.weight": [32000, 4096],
        "model.norm.weight": [4096],
    }
    for i in range(32):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{name}.weight"] = [4096, 4096]
        shapes[p + "mlp.gate_proj.weight"] = [11008, 4096]
        shapes[p + "mlp.up_proj.weight"] = [11008, 4096]
        shapes[p + "mlp.down_proj.weight"] = [4096, 11008]
        shapes[p + "input_layernorm.weight"] = [4096]
        shapes[p + "post_attention_layernorm.weight"] = [4096]
    return shapes


def write_header_only(path, shapes: dict[str, list[int]], dtype: str = "F16") -> None:
    """A safetensors header as the format documents it (the data section is left out: the check
    never reads it, which is the point: a 13 GB model is described by a few kB)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        size = n * {"F16": 2, "BF16": 2, "F32": 4}[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


def test_gpu_table_has_date_source_and_consistent_rows() -> None:
    table = gpufit.load_gpus()
    assert table.as_of and "AWS" in table.source
    g5 = table.get("ml.g5.xlarge")
    assert (g5.gpus, g5.gpu_model, g5.gpu_memory_gib) == (1, "NVIDIA A10G", 24)
    assert table.get("ml.g5.12xlarge").total_gib == 96
    assert table.get("ml.p4d.24xlarge").total_gib == 320
    assert table.get("ml.g6e.xlarge").gpu_memory_gib == 48
    assert table.get("ml.c5.xlarge") is None
    for spec in table.all():
        assert spec.instance_type.startswith("ml.") and spec.gpus in (1, 4, 8) and spec.gpu_memory_gib >= 16


def test_safetensors_header_of_real_files_matches_torch(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    tensors = {
        "a": torch.zeros(3, 5, dtype=torch.float16),
        "b": torch.zeros(7, dtype=torch.bfloat16),
        "c": torch.zeros(2, 2, 2, dtype=torch.float32),
    }
    st.save_file(tensors, str(tmp_path / "model.safetensors"))
    stats = tensorstats.model_stats(tmp_path / "model.safetensors")
    assert stats.parameters == 15 + 7 + 8
    assert (
        stats.bytes == 15 * 2 + 7 * 2 + 8 * 4 == sum(t.numel() * t.element_size() for t in tensors.values())
    )
    assert stats.by_dtype == {"F16": 15, "BF16": 7, "F32": 8}


def test_state_dict_sizes_without_torch_load(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5)).to(
        torch.bfloat16
    )
    sd = model.state_dict()
    sd["tied"] = sd["0.weight"]  # a tied weight shares its storage: counted once
    torch.save(sd, tmp_path / "model.pt")
    stats = tensorstats.model_stats(tmp_path / "model.pt")
    assert stats.parameters == sum(p.numel() for p in model.parameters()) == 10 * 20 + 20 + 20 * 5 + 5
    assert stats.bytes == stats.parameters * 2 and stats.by_dtype == {"BF16": stats.parameters}
    # a whole pickled module: its classes are never instantiated, its storages still counted
    torch.save(model, tmp_path / "whole.pth")
    assert tensorstats.model_stats(tmp_path / "whole.pth").parameters == stats.parameters


def test_folder_sums_shards_and_tarball_is_read(tmp_path) -> None:
    shapes = llama7b_shapes()
    names = list(shapes)
    folder = tmp_path / "m"
    folder.mkdir()
    write_header_only(folder / "model-00001-of-00002.safetensors", {k: shapes[k] for k in names[:100]})
    write_header_only(folder / "model-00002-of-00002.safetensors", {k: shapes[k] for k in names[100:]})
    (folder / "pytorch_model.bin").write_bytes(b"not read: safetensors win when both are there")
    stats = tensorstats.model_stats(folder)
    assert stats.parameters == LLAMA7B_PARAMS and stats.bytes == 2 * LLAMA7B_PARAMS and len(stats.files) == 2
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        tar.add(folder / "model-00001-of-00002.safetensors", arcname="model-00001-of-00002.safetensors")
        tar.add(folder / "model-00002-of-00002.safetensors", arcname="model-00002-of-00002.safetensors")
    assert tensorstats.model_stats(tmp_path / "model.tar.gz").parameters == LLAMA7B_PARAMS


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"\x01", "shorter than its 8-byte"),
        (struct.pack("<Q", 1 << 40) + b"{}", "impossible"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
    ],
)
def test_bad_safetensors_is_one_usage_error(tmp_path, content, expected) -> None:
    (tmp_path / "x.safetensors").write_bytes(content)
    with pytest.raises(UsageError, match=expected):
        tensorstats.model_stats(tmp_path / "x.safetensors")


def test_no_weights_is_one_usage_error(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="no weights found"):
        tensorstats.model_stats(tmp_path)
    (tmp_path / "x.pt").write_bytes(b"legacy, not a zip")
    with pytest.raises(UsageError, match="not a torch.save archive"):
        tensorstats.model_stats(tmp_path / "x.pt")


def test_kv_cache_by_hand() -> None:
    # 32 layers x 2 (K, V) x 32 heads x 128 x 4096 tokens x batch 4 x 2 bytes = 8 GiB exactly
    kv = gpufit.KvCache(layers=32, kv_heads=32, head_dim=128, max_tokens=4096, batch=4, dtype="fp16")
    assert kv.bytes == 8 * GIB
    config = {
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "hidden_size": 4096,
    }
    assert gpufit.kv_shape_from_config(config) == (32, 8, 128)  # GQA: 8 KV heads
    assert gpufit.kv_shape_from_config({"hidden_size": 10}) is None


def test_7b_fp16_with_kv_budget_refused_on_g5_xlarge_with_cheapest_alternatives(tmp_path) -> None:
    write_header_only(tmp_path / "model.safetensors", llama7b_shapes())
    stats = tensorstats.model_stats(tmp_path / "model.safetensors")
    kv = gpufit.KvCache(layers=32, kv_heads=32, head_dim=128, max_tokens=4096, batch=4)
    need = gpufit.inference_need(stats, kv=kv)
    # (13,476,831,232 B = 12.551 GiB of weights + 8 GiB KV) x 1.2 = 24.66 GiB > 24 GiB
    assert need.total_gib == pytest.approx((2 * LLAMA7B_PARAMS / GIB + 8) * 1.2)
    assert need.total_gib == pytest.approx(24.66, abs=0.01)
    fit = gpufit.check_inference(need, "ml.g5.xlarge", region="us-east-1")
    assert not fit.fits and fit.have_gib == 24
    # the fitting types with a price in us-east-1, cheapest first (prices.json): g4dn.12xlarge
    # (4 x 16 = 64 GiB), g5.12xlarge (96 GiB), g5.24xlarge (96 GiB), ...
    expected = prices.cheapest(["ml.g4dn.12xlarge", "ml.g5.12xlarge", "ml.g5.24xlarge"])
    assert [(s.instance_type, s.hourly) for s in fit.suggestions][:3] == expected
    line = fit.line()
    assert "needs 24.7 GiB" in line and "ml.g5.xlarge has 24 GiB (1 x NVIDIA A10G 24 GiB)" in line
    assert f"{expected[0][0]} (${expected[0][1]:g}/h)" in line and "\n" not in line
    assert gpufit.check_inference(need, "ml.g5.12xlarge").fits
    assert gpufit.check_inference(need, "ml.g6e.xlarge").fits  # 1 x L40S 48 GiB


def test_7b_weights_only_fit_in_fp16_not_in_fp32(tmp_path) -> None:
    write_header_only(tmp_path / "model.safetensors", llama7b_shapes(), dtype="F32")
    stats = tensorstats.model_stats(tmp_path / "model.safetensors")
    # fp32 as stored: 25.10 GiB x 1.2 = 30.12 GiB > 24; served as fp16: 12.55 x 1.2 = 15.06 GiB
    as_stored = gpufit.inference_need(stats)
    assert as_stored.total_gib == pytest.approx(4 * LLAMA7B_PARAMS / GIB * 1.2)
    assert not gpufit.check_inference(as_stored, "ml.g5.xlarge").fits
    half = gpufit.inference_need(stats, dtype="fp16")
    assert half.total_gib == pytest.approx(15.06, abs=0.01)
    assert gpufit.check_inference(half, "ml.g5.xlarge").fits
    assert gpufit.check_inference(half, "ml.g4dn.xlarge").fits  # 1 x T4: 15.06 <= 16 GiB
    assert not gpufit.check_inference(
        gpufit.inference_need(stats, dtype="fp16", overhead=0.3), "ml.g4dn.xlarge"
    ).fits


def test_no_gpu_type_is_not_checked() -> None:
    need = gpufit.Need(weights=100 * GIB)
    fit = gpufit.check_inference(need, "ml.c5.xlarge")
    assert fit.fits and not fit.checked and "does not apply" in fit.line()


def test_training_7b_ddp_refused_fsdp_fits_by_hand() -> None:
    # bf16 + Adam: 2 (weights) + 2 (grads) + 4 (fp32 master) + 8 (two fp32 moments) = 16 B/param
    # DDP on ml.p4d.24xlarge: 16 x 6.738e9 B = 100.41 GiB x 1.2 = 120.5 GiB per GPU > 40
    ddp = gpufit.check_training(LLAMA7B_PARAMS, "ml.p4d.24xlarge", fsdp=False)
    assert ddp.need.total_gib == pytest.approx(16 * LLAMA7B_PARAMS / GIB * 1.2) and not ddp.fits
    assert ddp.have_gib == 40 and "per GPU" in ddp.line()
    # FSDP over 8 GPUs: 100.41 / 8 x 1.2 = 15.06 GiB per GPU <= 40
    fsdp = gpufit.check_training(LLAMA7B_PARAMS, "ml.p4d.24xlarge", fsdp=True)
    assert fsdp.need.total_gib == pytest.approx(15.06, abs=0.01) and fsdp.fits
    # ml.g5.12xlarge (4 x 24 GiB): one host 100.41 / 4 x 1.2 = 30.12 > 24; two hosts: 15.06 fits
    assert not gpufit.check_training(LLAMA7B_PARAMS, "ml.g5.12xlarge", fsdp=True).fits
    assert gpufit.check_training(LLAMA7B_PARAMS, "ml.g5.12xlarge", instance_count=2, fsdp=True).fits
    # fp32 training has no separate master copy: 4 + 4 + 8 = 16 B/param as well
    assert gpufit.training_need(10**9, dtype="fp32").optimizer == 10**9 * 12


def test_training_refusal_suggests_types_that_fit() -> None:
    fit = gpufit.check_training(LLAMA7B_PARAMS, "ml.g5.12xlarge", fsdp=True)
    # with FSDP on one host: 8-GPU types shard to 15.06 GiB; priced in us-east-1: g5.48xlarge
    # $20.36, p3.16xlarge (8 x 16 GiB) $28.152, p4d.24xlarge $37.688
    assert [s.instance_type for s in fit.suggestions] == [
        "ml.g5.48xlarge",
        "ml.p3.16xlarge",
        "ml.p4d.24xlarge",
    ]


def test_unknown_dtype_names_the_choices() -> None:
    with pytest.raises(UsageError, match="allowed: fp32, bf16"):
        tensorstats.dtype_bytes("fp13")


def test_train_remote_refuses_a_type_whose_gpus_cannot_hold_the_state(run_cli, tmp_path) -> None:
    """Before any AWS call: no credentials or stack are needed for the refusal."""
    (tmp_path / "train.py").write_text("print('never runs')\n")
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": str(tmp_path / "none")}
    result = run_cli(
        "train",
        str(tmp_path / "train.py"),
        "--remote",
        "--instance-type",
        "ml.g5.12xlarge",
        "--model-params",
        "7e9",
        env=env,
    )
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    # 7e9 x 16 B = 104.3 GiB x 1.2 = 125.2 GiB per GPU (DDP: a full copy each) > 24 GiB
    assert line.startswith("error: the training state does not fit: it needs 125.2 GiB per GPU")
    assert line.endswith("; or shard the state over every GPU with --fsdp")
    # sharded over 2 hosts x 4 GPUs: 125.2 / 8 = 15.65 GiB <= 24 GiB fits, so the command goes on to the
    # AWS part (which fails here for want of a stack and credentials, not for the fit)
    result = run_cli(
        "train",
        str(tmp_path / "train.py"),
        "--remote",
        "--instance-type",
        "ml.g5.12xlarge",
        "--instance-count",
        "2",
        "--model-params",
        "7e9",
        "--fsdp",
        env=env,
    )
    assert "does not fit" not in result.stderr and "GPU fit: needs 15.6 GiB per GPU" in result.stderr
    assert result.returncode == 2 and "no SageMaker execution role" in result.stderr
    result = run_cli("train", str(tmp_path / "train.py"), "--model-params", "7e9")
    assert result.returncode == 2 and "need --remote" in result.stderr
