"""The Trainer's `checkpoint-N/` folders in AIOPS_CHECKPOINT_DIR: which one to resume (complete ones
carry COMPLETE_MARK, written by the CheckpointMark callback), and a checkpoint adapted to a resume at
another world size.

torch and the standard library (no aiops import): train.py ships it to the SageMaker container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARK = "aiops-complete"


def checkpoint_steps(folder: str) -> list[tuple[int, str]]:
    if not os.path.isdir(folder):
        return []
    return sorted(
        ((int(m.group(1)), name) for name in os.listdir(folder) if (m := CHECKPOINT_DIR.match(name))),
        reverse=True,
    )


def find_resume_checkpoint(folder: str, say) -> str | None:
    """The newest complete checkpoint; torn ones (a process stopped mid-save) are moved aside by the
    first process of each host, so the Trainer never rotates a complete one out in their favour."""
    chosen = None
    for _, name in checkpoint_steps(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(os.path.join(path, COMPLETE_MARK)):
            chosen = chosen or path
            continue
        if chosen is None and int(os.environ.get("LOCAL_RANK", "0")) == 0:
            aside = os.path.join(folder, f"incomplete-{name}-{int(time.time())}")
            try:
                os.rename(path, aside)
                say(f"checkpoint {name} is incomplete; moved aside to {os.path.basename(aside)}")
            except FileNotFoundError:
                pass
    return chosen


def accept_indexed_cpu_locations() -> None:
    """transformers 4 loads a multi-process CPU run's optimizer state with map_location
    ``cpu:<local rank>``, a location torch.load does not know: every ``cpu:N`` is the CPU."""
    import torch

    def restore(storage, location: str):
        return storage if re.fullmatch(r"cpu:\d+", location) else None

    # a priority of its own (the registry sorts by it, and ties compare the functions)
    torch.serialization.register_package(100, lambda storage: None, restore)


def adapt_checkpoint(checkpoint: str, world: int, micro_batch: int) -> None:
    """Resuming at another world size (the global batch is the same, the per-process one is not).
    The first process of each host, before any process reads the checkpoint, gives it
    - every missing rank's RNG file, a copy of rank 0's (the one the sample order follows): the
      Trainer restores `rng_state.pth` alone and `rng_state_<rank>.pth` under torchrun, and skips
      the restore when its file is missing;
    - the per-process batch in trainer_state.json: transformers 4 trains on with the checkpoint's,
      which would change the batches and the step count."""
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    single = os.path.join(checkpoint, "rng_state.pth")
    first = single if os.path.isfile(single) else os.path.join(checkpoint, "rng_state_0.pth")
    if os.path.isfile(first):
        wanted = (
            [single] if world == 1 else [os.path.join(checkpoint, f"rng_state_{r}.pth") for r in range(world)]
        )
        for path in wanted:
            if not os.path.isfile(path):
                shutil.copyfile(first, path)
    state_file = os.path.join(checkpoint, "trainer_state.json")
    with open(state_file) as f:
        state = json.load(f)
    if state.get("train_batch_size") not in (None, micro_batch):
        state["train_batch_size"] = micro_batch
        with open(f"{state_file}.tmp", "w") as f:
            json.dump(state, f, indent=2)
        os.replace(f"{state_file}.tmp", state_file)
