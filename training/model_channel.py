"""The `model` channel: a Hugging Face model folder, checked before anything runs or is uploaded.

A job's channel named `model` holds pretrained weights as `save_pretrained` writes them (what the
fine-tuning example reads through SM_CHANNEL_MODEL): `config.json` with a `model_type`, the weights
(safetensors or PyTorch `.bin`, sharded ones complete per their index) and a tokenizer. The model
type must be one the installed transformers knows when the script runs here; a remote job runs on
its image's transformers, so there it is only a warning.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from aiops.errors import UsageError

CHANNEL = "model"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# any one of these makes a tokenizer (fast: tokenizer.json; sentencepiece: tokenizer.model; BPE:
# vocab.json + merges.txt; WordPiece: vocab.txt)
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))


def check(path: Path, *, runs_here: bool) -> list[str]:
    """UsageError (one line) unless `path` is a Hugging Face model folder; returns warnings."""
    what = f"channel {CHANNEL!r} ({path})"
    if not path.is_dir():
        raise UsageError(
            f"{what} is a file; the model channel is a Hugging Face model folder "
            "(config.json, weights, tokenizer), e.g. one written by save_pretrained."
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(
            f"{what} has no config.json: it is not a Hugging Face model folder; pass the folder "
            "save_pretrained wrote (or make one with aiops example tiny-llm)."
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{what}: config.json is not valid JSON ({err}).") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        raise UsageError(
            f"{what}: config.json has no model_type, so transformers cannot tell its architecture; "
            "save the model again with save_pretrained."
        )
    _check_weights(path, what)
    if not any(all((path / name).is_file() for name in group) for group in TOKENIZER_FILES):
        raise UsageError(
            f"{what} has no tokenizer (tokenizer.json, tokenizer.model, or vocab.json with "
            "merges.txt); save it beside the weights with tokenizer.save_pretrained(folder)."
        )
    known = transformers_knows(model_type)
    if known is False:
        line = (
            f"{what}: model_type {model_type!r} is not an architecture the installed transformers "
            f"{_transformers_version()} knows"
        )
        if runs_here:
            raise UsageError(
                f"{line}; upgrade transformers (pip install -U transformers) or pick another model."
            )
        return [f"{line}; the job's image must have a transformers that does."]
    return []


def _check_weights(path: Path, what: str) -> None:
    for index_name in WEIGHT_INDEXES:
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError, TypeError):
                raise UsageError(
                    f"{what}: {index_name} is not a valid weight index (no weight_map)."
                ) from None
            missing = [name for name in shards if not (path / name).is_file()]
            if missing:
                raise UsageError(
                    f"{what}: {len(missing)} weight shard(s) listed in {index_name} are missing "
                    f"(first: {missing[0]}); copy the whole model folder."
                )
            return
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise UsageError(
            f"{what} has no weights (*.safetensors or pytorch_model*.bin); save the model with "
            "save_pretrained into this folder."
        )


def transformers_knows(model_type: str) -> bool | None:
    """Whether the installed transformers has `model_type` (None: transformers is not installed).
    Its models live in `transformers/models/<model_type>/`, found without importing it; the few
    types named otherwise are looked up in its configuration table (an import of a few seconds)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        if (Path(root) / "models" / model_type.replace("-", "_")).is_dir():
            return True
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def _transformers_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return ""
