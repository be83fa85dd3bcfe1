"""`aiops example lm-data`: byte-level token shards from the Python standard library's own source.

The corpus is on every machine that runs aiops, offline: the `.py` files of the running Python's
standard library (`sysconfig` `stdlib`, without site-packages and tests), sorted by path, then
shuffled with the seed and dealt into `test` (first `test_bytes`) and `train` (up to `train_bytes`).
Each file becomes its UTF-8 bytes followed by END_OF_TEXT. The same Python version and seed give
byte-identical shards; `index.json` records the Python version and a digest of the file list.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import sysconfig
from pathlib import Path

import numpy as np

# lm_data, not lm_model: writing the data needs numpy only, no torch
from aiops.training.examples.lm.lm_data import DTYPE, END_OF_TEXT, FORMAT, INDEX_FILE, VOCAB_SIZE

from aiops.errors import UsageError

CHANNELS = ("train", "test")
SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"}


def corpus_files(root: str | None = None) -> list[Path]:
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def write_channels(
    out_dir: str | os.PathLike[str],
    *,
    train_bytes: int = 4_000_000,
    test_bytes: int = 200_000,
    shard_tokens: int = 1 << 20,
    seed: int = 0,
    root: str | None = None,
) -> dict:
    """Write `out_dir/train/` and `out_dir/test/` (index.json + shard-NNNNN.bin); return a summary per
    channel. Only those files are (over)written; anything else in `out_dir` is left alone."""
    if train_bytes < 1 or test_bytes < 1 or shard_tokens < 1:
        raise UsageError("train_bytes, test_bytes and shard_tokens must be positive.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder.", hint="Pass a folder path for the channels.")
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = corpus_files(str(base))
    if not files:
        raise UsageError(f"no .py files under {base}; pass a Python installation with its standard library.")
    names = [p.relative_to(base).as_posix() for p in files]
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    budgets = {"test": test_bytes, "train": train_bytes}
    picked: dict[str, list[int]] = {"test": [], "train": []}
    channel, used = "test", 0
    for i in order:
        size = files[i].stat().st_size + 1
        if used + size > budgets[channel] and picked[channel]:
            if channel == "train":
                break
            channel, used = "train", 0
        picked[channel].append(i)
        used += size
    if not picked["train"]:
        raise UsageError(
            f"the corpus ({len(files)} files) is too small for a test set of {test_bytes} bytes "
            "and a train set; lower --test-bytes."
        )

    source = {
        "corpus": "python-stdlib",
        "python": sys.version.split()[0],
        "seed": seed,
        "files_digest": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }
    summary = {}
    for name in CHANNELS:
        tokens = np.concatenate(
            [
                np.append(
                    np.frombuffer(files[i].read_bytes(), dtype=np.uint8).astype(DTYPE), END_OF_TEXT
                ).astype(DTYPE)
                for i in picked[name]
            ]
        )
        summary[name] = _write_shards(
            out / name, tokens, shard_tokens, {**source, "files": [names[i] for i in picked[name]]}
        )
    return summary


def _write_shards(folder: Path, tokens: np.ndarray, shard_tokens: int, source: dict) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("shard-*.bin"):  # our own shards of an earlier, larger write
        stale.unlink()
    shards = []
    for n, start in enumerate(range(0, len(tokens), shard_tokens)):
        piece = np.ascontiguousarray(tokens[start : start + shard_tokens], dtype=DTYPE)
        file = f"shard-{n:05d}.bin"
        (folder / file).write_bytes(piece.tobytes())
        shards.append(
            {"file": file, "tokens": int(len(piece)), "sha256": hashlib.sha256(piece.tobytes()).hexdigest()}
        )
    index = {
        "format": FORMAT,
        "dtype": "uint16",
        "vocab_size": VOCAB_SIZE,
        "end_of_text": END_OF_TEXT,
        "shard_tokens": shard_tokens,
        "total_tokens": int(len(tokens)),
        "shards": shards,
        "documents": len(source["files"]),
        "source": source,
    }
    tmp = folder / f"{INDEX_FILE}.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, folder / INDEX_FILE)  # the index appears last: a reader never sees a half channel
    return {
        "tokens": int(len(tokens)),
        "shards": len(shards),
        "documents": len(source["files"]),
        "path": str(folder),
    }
