"""Sharded checkpoints: torch.distributed.checkpoint (DCP) folders `step-N/`, each rank writing its
shards, written whole or not at all, checked for completeness, resumed at any world size.

A checkpoint holds model, optimizer, scheduler, data position and every rank's RNG states, plus
`aiops-lm.json` (step, world size, model shape, batch size, seed). It is written into `step-N.tmp/`
and renamed to `step-N/` once every shard and the metadata are on disk; a torn one is skipped on
resume (said in the log) and moved aside at the next save.

Plain torch and numpy (no aiops import): train.py ships it to the SageMaker container.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import shutil
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

STEP_DIR = re.compile(r"^step-(\d+)$")
META_FILE = "aiops-lm.json"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed: every checkpoint torn, or of another model shape."""


def checkpoint_problem(path: str) -> str | None:
    """Why the checkpoint folder is not a complete DCP checkpoint (None: complete)."""
    from torch.distributed.checkpoint import FileSystemReader

    if not os.path.isfile(os.path.join(path, META_FILE)):
        return f"no {META_FILE}"
    try:
        metadata = FileSystemReader(path).read_metadata()
    except Exception as err:  # noqa: BLE001 - any unreadable metadata means torn
        return f"unreadable .metadata ({type(err).__name__})"
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"shard {name} is missing"
        if os.path.getsize(file) < size:
            return f"shard {name} is truncated"
    return None


def find_resume_checkpoint(folder: str, model: dict, say: Callable[[str], None]) -> str | None:
    """The newest complete checkpoint in `folder`, falling back past torn ones; CheckpointError if the
    newest complete one is of another model shape than `model` (ModelConfig.to_dict()), or if every
    one is torn."""
    if not os.path.isdir(folder):
        return None
    steps = sorted(
        ((int(m.group(1)), name) for name in os.listdir(folder) if (m := STEP_DIR.match(name))), reverse=True
    )
    torn = []
    for _, name in steps:
        path = os.path.join(folder, name)
        problem = checkpoint_problem(path)
        if problem:
            say(f"checkpoint {name} is incomplete ({problem}); falling back to the previous complete one")
            torn.append(name)
            continue
        with open(os.path.join(path, META_FILE)) as f:
            saved = json.load(f)
        if saved["model"] != model:
            diff = ", ".join(
                f"{k} {saved['model'].get(k)} (now {v})"
                for k, v in model.items()
                if saved["model"].get(k) != v
            )
            raise CheckpointError(
                f"checkpoint {path} is of another model shape: {diff}; train with the same model "
                "hyperparameters, or point AIOPS_CHECKPOINT_DIR at an empty folder"
            )
        return path
    if torn:
        raise CheckpointError(
            f"no complete checkpoint in {folder} ({', '.join(torn)} incomplete); move those folders away "
            "to start from scratch"
        )
    return None


def rng_blob() -> io.BytesIO:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return io.BytesIO(pickle.dumps(states))


def set_rng_blob(blob: io.BytesIO) -> None:
    blob.seek(0)
    states = pickle.loads(blob.read())  # our own checkpoint
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync_tree(path: str) -> None:
    for folder, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def resume_notes(saved: dict, args_now: dict, world: int) -> list[str]:
    """What makes a resume differ from an uninterrupted run: hyperparameters of the data order
    (`args_now`: batch_size, seed) or the world size other than the checkpoint's (`saved`, its meta)."""
    notes = []
    changed = {k: (saved.get(k), v) for k, v in args_now.items() if saved.get(k) != v}
    if changed:
        notes.append(
            f"note: hyperparameters differ from the checkpoint's (was, now): {changed}; the result "
            "will not match an uninterrupted run"
        )
    if saved["world_size"] != world:
        notes.append(
            f"note: the checkpoint was written by {saved['world_size']} process(es), resuming on "
            f"{world}; resharded (training continues, not bit-identical to an uninterrupted run)"
        )
    return notes


class Checkpoints:
    """The checkpoint folder as every rank uses it: save `step-N/` (every rank calls `save` and `load`
    together), keep the newest `keep`."""

    def __init__(self, folder: str, keep: int, rank: int, world: int, say: Callable[[str], None]) -> None:
        self.folder = folder
        self.keep = keep
        self.rank = rank
        self.world = world
        self.say = say

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def save(self, step: int, state: Callable[[], dict], meta: dict) -> None:
        """Write `state()` as step-`step`/ with `meta` in META_FILE, then prune."""
        import torch.distributed.checkpoint as dcp

        folder = self.folder
        final = os.path.join(folder, f"step-{step}")
        began = time.monotonic()
        tmp = final + ".tmp"
        # Each host has its own /opt/ml/checkpoints (SageMaker syncs every host's folder to the same S3
        # prefix), so the first process of each host prepares and renames its host's folder; the
        # union of the hosts' step-N/ folders in S3 is the whole checkpoint. On a shared file
        # system the hosts' renames race harmlessly: one wins, the others find nothing to rename.
        local_first = int(os.environ.get("LOCAL_RANK", 0)) == 0
        if local_first:
            os.makedirs(folder, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # our own leftover of a crash mid-write
            os.makedirs(tmp, exist_ok=True)
        self.barrier()
        dcp.save(state(), checkpoint_id=tmp)
        self.barrier()  # every rank's shards are written (dcp.save also waits for the metadata)
        if self.rank == 0:
            with open(os.path.join(tmp, META_FILE), "w") as f:
                json.dump(meta, f, indent=1)
        if local_first:
            if os.path.isdir(tmp):
                _fsync_tree(tmp)
            if os.path.isdir(final):  # a torn one we fell back past: kept aside, never resumed
                aside = f"{final}.incomplete-{int(time.time())}"
                try:
                    os.rename(final, aside)
                    self.say(
                        f"moved the incomplete {os.path.basename(final)} aside to {os.path.basename(aside)}"
                    )
                except FileNotFoundError:
                    pass
        self.barrier()
        if local_first:
            try:
                os.rename(tmp, final)  # the finished step appears whole, or not at all
            except FileNotFoundError:
                pass  # another host renamed it on a shared file system
            self.prune()
        self.barrier()
        self.say(f"checkpoint step-{step} saved in {time.monotonic() - began:.2f}s")

    def prune(self) -> None:
        folder = self.folder
        done = sorted((int(m.group(1)), name) for name in os.listdir(folder) if (m := STEP_DIR.match(name)))
        for _, name in done[: -self.keep]:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)

    def load(self, path: str, state: dict) -> dict:
        """Fill `state` (as `save` was given it) from the checkpoint at `path`; its META_FILE. A rank the
        checkpoint has no RNG states for (the world grew) keeps its own: `state` loses its "rng"."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader

        saved_keys = FileSystemReader(path).read_metadata().state_dict_metadata
        if f"rng.rank{self.rank}" not in saved_keys:  # a new rank after a change of world size
            del state["rng"]
        dcp.load(state, checkpoint_id=path)
        with open(os.path.join(path, META_FILE)) as f:
            return json.load(f)
