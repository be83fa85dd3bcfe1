"""The `model` channel: a Hugging Face model folder checked, loaded with LoRA adapters (peft), its
decoder layer named for FSDP, its tokenizer files copied to the output as they came.

torch, transformers and peft, imported when used (no aiops import): train.py ships it to the SageMaker
container.
"""

from __future__ import annotations

import glob
import os
import shutil

from finetune_errors import UsageProblem

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# what a tokenizer is made of; the output gets the channel's own files, byte for byte
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def check_model_folder(path: str) -> None:
    """The model channel must be a Hugging Face model folder (what `save_pretrained` writes)."""
    if not os.path.isdir(path):
        raise UsageProblem(
            f"no model channel at {path}: pass the model folder as a channel, "
            "e.g. aiops train ... --channel model=./my-model"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageProblem(
            f"model channel {path} has no config.json: it is not a Hugging Face model folder "
            "(write one with save_pretrained, or aiops example tiny-llm)"
        )
    if not any(glob.glob(os.path.join(path, pattern)) for pattern in WEIGHT_FILES):
        raise UsageProblem(f"model channel {path} has no weights (*.safetensors or *.bin)")


def lora_targets(model, spec: str) -> str | list[str]:
    """`all-linear` or the named modules, each of which must exist in the model (UsageProblem)."""
    if spec.strip() == "all-linear":
        return "all-linear"
    import torch

    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    if not wanted:
        raise UsageProblem(
            "--lora-target-modules is empty; name modules (e.g. q_proj,v_proj) or use all-linear"
        )
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [name for name in wanted if name not in names]
    if missing:
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear)
            }
        )
        raise UsageProblem(
            f"--lora-target-modules: {', '.join(missing)} not in {type(model).__name__}; its "
            f"linear layers are {', '.join(linear)} (or use all-linear)"
        )
    return wanted


def load_lora_model(
    path: str,
    *,
    lora_r: int,
    lora_alpha: float,
    lora_dropout: float,
    lora_target_modules: str,
    bf16: bool,
    fsdp: bool,
):
    """The channel's causal LM with LoRA adapters on `lora_target_modules`, ready to train."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # FSDP shards flat parameters of one dtype: fp32 weights, bf16 compute (its mixed precision)
    dtype = torch.bfloat16 if bf16 and not fsdp else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.config.use_cache = False  # no KV cache while training
    targets = lora_targets(model, lora_target_modules)
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise UsageProblem(
            f"--lora-target-modules {lora_target_modules}: {str(err).splitlines()[0]}"
        ) from None
    if fsdp:
        for param in model.parameters():  # the adapters too: one dtype per sharded group
            param.data = param.data.to(torch.float32)
    return model


def copy_tokenizer_files(source: str, dest: str) -> list[str]:
    """The channel's tokenizer files, unchanged: fine-tuning does not change the tokenizer, and a
    re-save by this transformers could name classes that the serving image's version lacks."""
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(dest, name))
            copied.append(name)
    return copied


def decoder_layer_class(config) -> str:
    """The decoder layer class FSDP wraps one by one (transformers' `_no_split_modules`)."""
    from transformers import AutoModelForCausalLM

    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    names = getattr(model_class, "_no_split_modules", None) or []
    if not names:
        raise UsageProblem(
            f"{model_class.__name__} names no decoder layer (_no_split_modules) to shard with "
            "FSDP; run it with --fsdp off"
        )
    return names[0]
