"""The `model` channel: a Hugging Face model folder, checked before anything runs or is uploaded.

A job's channel named `model` holds pretrained weights as `save_pretrained` writes them (what the
fine-tuning example reads through SM_CHANNEL_MODEL): `config.json` with a `model_type`, the weights
(safetensors or PyTorch `.bin`, sharded ones complete per their index) and a tokenizer. The model
type must be one the installed transformers knows when the script runs here; a remote job runs on
its image's transformers, so there it is only a warning.

The same checks run on a local folder and on an ``s3://`` prefix (listed, and its few JSON files and
safetensors headers read, with the user's credentials), before anything is uploaded. Where the job
names LoRA target modules (the hyperparameter ``lora-target-modules``, as the fine-tuning example
and peft's ``LoraConfig(target_modules=...)`` take them), each must be a module of the model: the
module names come from the weights' names (safetensors headers, or the shard index), so nothing is
loaded. A model this large (``FAST_FILE_BYTES``) is read with the FastFile input mode unless the
job names another, so its weights stream on first read instead of being copied before step one.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiops.errors import UsageError

CHANNEL = "model"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# any one of these makes a tokenizer (fast: tokenizer.json; sentencepiece: tokenizer.model; BPE:
# vocab.json + merges.txt; WordPiece: vocab.txt)
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))
LORA_TARGETS_HP = "lora-target-modules"
FAST_FILE_BYTES = 1 << 30  # from 1 GiB of weights, stream them (FastFile) rather than copy them first
_HEADER_LIMIT = 100 << 20  # safetensors caps its JSON header at 100 MB


@dataclass(frozen=True)
class Listing:
    """A model folder's files (relative name -> size) and a way to read a byte range of one."""

    files: Mapping[str, int]
    read: Callable[[str, int, int | None], bytes]  # name, start, end (exclusive; None: to the end)

    def has(self, name: str) -> bool:
        return name in self.files

    def total_bytes(self) -> int:
        return sum(self.files.values())


def local_listing(path: Path) -> Listing:
    def read(name: str, start: int, end: int | None) -> bytes:
        with open(path / name, "rb") as f:
            f.seek(start)
            return f.read() if end is None else f.read(end - start)

    files = {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*") if p.is_file()}
    return Listing(files, read)


def s3_listing(s3: Any, uri: str) -> Listing:
    """The objects under ``s3://bucket/prefix/``, as a folder (the prefix taken to end with ``/``)."""
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    files: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) :]
            if name and not name.endswith("/"):
                files[name] = int(item["Size"])

    def read(name: str, start: int, end: int | None) -> bytes:
        span = f"bytes={start}-" + ("" if end is None else str(end - 1))
        return s3.get_object(Bucket=bucket, Key=prefix + name, Range=span)["Body"].read()

    return Listing(files, read)


def check(path: Path, *, runs_here: bool) -> list[str]:
    """UsageError (one line) unless the local folder `path` is a Hugging Face model folder; returns
    warnings."""
    if not path.is_dir():
        raise UsageError(
            f"channel {CHANNEL!r} ({path}) is a file; the model channel is a Hugging Face model folder "
            "(config.json, weights, tokenizer), e.g. one written by save_pretrained."
        )
    return check_listing(local_listing(path), str(path), runs_here=runs_here)


def check_listing(listing: Listing, location: str, *, runs_here: bool) -> list[str]:
    """The checks of `check` on any listing (a local folder, an S3 prefix)."""
    what = f"channel {CHANNEL!r} ({location})"
    if not listing.files:
        raise UsageError(
            f"{what} is empty; upload the folder save_pretrained wrote (config.json, weights, tokenizer)."
        )
    if not listing.has("config.json"):
        raise UsageError(
            f"{what} has no config.json: it is not a Hugging Face model folder; pass the folder "
            "save_pretrained wrote (or make one with aiops example tiny-llm)."
        )
    config = _json(listing, "config.json", what, "config.json is not valid JSON")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        raise UsageError(
            f"{what}: config.json has no model_type, so transformers cannot tell its architecture; "
            "save the model again with save_pretrained."
        )
    _check_weights(listing, what)
    if not any(all(listing.has(name) for name in group) for group in TOKENIZER_FILES):
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


def _json(listing: Listing, name: str, what: str, problem: str) -> Any:
    try:
        return json.loads(listing.read(name, 0, None))
    except (OSError, ValueError) as err:
        raise UsageError(f"{what}: {problem} ({err}).") from None


def _check_weights(listing: Listing, what: str) -> None:
    for index_name in WEIGHT_INDEXES:
        if listing.has(index_name):
            try:
                shards = sorted(set(json.loads(listing.read(index_name, 0, None))["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError, TypeError):
                raise UsageError(
                    f"{what}: {index_name} is not a valid weight index (no weight_map)."
                ) from None
            missing = [name for name in shards if not listing.has(name)]
            if missing:
                raise UsageError(
                    f"{what}: {len(missing)} weight shard(s) listed in {index_name} are missing "
                    f"(first: {missing[0]}); copy the whole model folder."
                )
            return
    if not any(Path(name).match(pattern) for name in listing.files for pattern in WEIGHT_PATTERNS):
        raise UsageError(
            f"{what} has no weights (*.safetensors or pytorch_model*.bin); save the model with "
            "save_pretrained into this folder."
        )


def check_lora_targets(listing: Listing, location: str, hyperparameters: Mapping[str, Any]) -> None:
    """UsageError unless every module `lora-target-modules` names is in the model (peft's rule: a
    module matches a target when its dotted name is the target or ends with ``.target``)."""
    spec = hyperparameters.get(LORA_TARGETS_HP)
    if spec is None or str(spec).strip() == "all-linear":
        return
    wanted = [name.strip() for name in str(spec).split(",") if name.strip()]
    modules = module_names(listing)
    if not wanted or modules is None:
        return  # an empty list is the script's to refuse; .bin weights are not read here
    missing = [t for t in wanted if not any(m == t or m.endswith("." + t) for m in modules)]
    if missing:
        config = _json(listing, "config.json", f"channel {CHANNEL!r} ({location})", "config.json")
        architecture = (config.get("architectures") or [config.get("model_type", "the model")])[0]
        layers = sorted({m.rsplit(".", 1)[-1] for m, matrix in modules.items() if matrix})
        raise UsageError(
            f"--hp {LORA_TARGETS_HP}: {', '.join(missing)} not in {architecture} ({location}); its "
            f"weight matrices are in {', '.join(layers)} (or use all-linear)."
        )


def module_names(listing: Listing) -> dict[str, bool] | None:
    """Every module with weights (dotted name -> whether it holds a matrix), from the safetensors
    headers (8 bytes of length, then JSON) or the shard index; None when the weights are not
    safetensors."""
    names: dict[str, bool] = {}
    index = "model.safetensors.index.json"
    if listing.has(index):
        for key in json.loads(listing.read(index, 0, None)).get("weight_map", {}):
            module = key.rsplit(".", 1)[0]
            names[module] = names.get(module, False) or key.endswith(".weight")
        return names
    shards = [name for name in listing.files if name.endswith(".safetensors")]
    if not shards:
        return None
    for shard in shards:
        (length,) = struct.unpack("<Q", listing.read(shard, 0, 8))
        if length > _HEADER_LIMIT:
            return None
        header = json.loads(listing.read(shard, 8, 8 + length))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            module, _, kind = key.rpartition(".")
            matrix = kind == "weight" and len(info.get("shape", [])) == 2
            names[module] = names.get(module, False) or matrix
    return names


def prepare_remote(
    hyperparameters: Mapping[str, Any],
    input_modes: dict[str, str],
    *,
    local: Path | None,
    s3_uri: str | None,
    region: str,
) -> list[str]:
    """A remote job's model channel, before anything is uploaded: an ``s3://`` prefix checked as a
    local folder is (with the user's credentials; a local folder was by `jobs.prepare`), its LoRA
    targets, and FastFile for a large one the job left at File. Returns lines to show.

    `input_modes` (the job's, channel -> mode) gains ``model: FastFile`` when chosen here."""
    if s3_uri is not None:
        from aiops import aws

        with aws.translate_errors(f"reading the model channel {s3_uri}"):
            listing = s3_listing(aws.client("s3", region), s3_uri)
            lines = check_listing(listing, s3_uri, runs_here=False)
            check_lora_targets(listing, s3_uri, hyperparameters)
    elif local is not None:
        listing, lines = local_listing(local), []
    else:
        return []
    size = listing.total_bytes()
    if CHANNEL not in input_modes and size >= FAST_FILE_BYTES:
        input_modes[CHANNEL] = "FastFile"
        lines.append(
            f"channel {CHANNEL!r} holds {size / 1e9:.1f} GB of model files: it is read with FastFile "
            f"(streamed on first read, not copied before the script starts); --input-mode {CHANNEL}=File "
            "copies it first."
        )
    return lines


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
