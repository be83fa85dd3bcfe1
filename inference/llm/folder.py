"""What a Hugging Face causal-LM folder must hold, checked from its files alone (no torch, no transformers):
`aiops serve --container` refuses a wrong folder in one line before any process starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiops.errors import UsageError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DEFAULT_MAX_TOTAL_TOKENS = 4096
_FIX = "save one with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)"


def check_causal_lm_folder(folder: Path) -> dict[str, Any]:
    """The folder's config.json; UsageError naming what is missing when ``folder`` is not a Hugging Face
    causal-LM folder."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder ({_FIX})")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{folder}: not a Hugging Face model folder: no config.json ({_FIX})")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{config_file}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{config_file}: not a model configuration (a JSON object is needed)")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not any(
        isinstance(name, str) and name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures
    ):
        found = ", ".join(map(str, architectures)) if isinstance(architectures, list) else str(architectures)
        raise UsageError(
            f"{folder}: not a causal language model: config.json architectures is {found or 'none'} (a "
            f"*ForCausalLM is needed; other models are served with a model_fn handler: aiops serve "
            f"without --container)"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(
            f"{folder}: no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
            f"save it with tokenizer.save_pretrained(DIR)"
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise UsageError(f"{folder}: no weights (*.safetensors or *.bin) ({_FIX})")
    return config


def max_positions(config: dict[str, Any]) -> int | None:
    """The longest sequence the model's positions allow, when its config says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 1:
            return value
    return None
