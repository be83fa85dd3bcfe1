"""The Hugging Face Trainer callbacks of the fine-tune: metric lines, the loss before training, the
mark of a complete checkpoint, and a stop on SIGTERM agreed by every process.

transformers and torch (no aiops import): train.py ships it to the SageMaker container.
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any

from finetune_checkpoint import COMPLETE_MARK


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricLines(_trainer_callback_base()):  # type: ignore[misc]  # a lazily imported base
    """The Trainer's logs as one `name=value;` line per logging step (rank 0)."""

    def __init__(self, say) -> None:
        self.say = say
        self.last = (time.monotonic(), 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        now, tokens = time.monotonic(), int(getattr(state, "num_input_tokens_seen", 0) or 0)
        rate = (tokens - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, tokens)
        parts = [f"step={state.global_step};", f"train_loss={logs['loss']:.6f};"]
        if "learning_rate" in logs:
            parts.append(f"lr={logs['learning_rate']:.6g};")
        if "grad_norm" in logs:
            parts.append(f"grad_norm={float(logs['grad_norm']):.4f};")
        parts.append(f"tokens_per_second={rate:.1f};")
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            parts.append(f"peak_gpu_memory_gib={torch.cuda.max_memory_allocated() / 2**30:.3f};")
        self.say(" ".join(parts))

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (time.monotonic(), int(getattr(state, "num_input_tokens_seen", 0) or 0))


class EvaluateBefore(_trainer_callback_base()):  # type: ignore[misc]  # a lazily imported base
    """The test loss of the model as it came, with the adapters switched off (so a resumed run
    measures the base model too). Measured once training is set up: a `Trainer.evaluate()` before
    `train()` leaves the model marked prepared, and accelerate then skips its DDP wrapper, so the
    processes would train apart without a word (accelerate 1.16)."""

    def __init__(self, job: Any) -> None:  # train.py's FineTune
        self.job = job

    def on_train_begin(self, args, state, control, **kwargs):
        job = self.job
        with job.trainer.model.disable_adapter():
            before = job.trainer.evaluate()["eval_loss"]
        job.losses["before"] = before
        job.say(f"test_loss_before={before:.6f}; test_perplexity_before={math.exp(min(before, 50)):.4f};")


class CheckpointMark(_trainer_callback_base()):  # type: ignore[misc]  # a lazily imported base
    """Marks a checkpoint complete once every process has written its part of it."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_local_process_zero:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(path):
                with open(os.path.join(path, COMPLETE_MARK), "w") as f:
                    f.write(f"{state.global_step}\n")
                    f.flush()
                    os.fsync(f.fileno())


class StopRequest:
    """SIGTERM (how SageMaker and `aiops train` stop a job) sets a flag; the processes agree on it
    after each step and stop together after a checkpoint."""

    def __init__(self) -> None:
        import threading

        self.requested = False
        self.requested_anywhere = False
        self.arrived = threading.Event()
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.arrived.set()


class StopCallback(_trainer_callback_base()):  # type: ignore[misc]  # a lazily imported base
    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop

    def on_step_end(self, args, state, control, **kwargs):
        import torch
        import torch.distributed as dist

        pause_at = os.environ.get("AIOPS_FINETUNE_PAUSE_AT")  # for the tests: hold rank 0 after that step
        if pause_at and int(pause_at) == state.global_step and int(os.environ.get("RANK", "0")) == 0:
            print(
                f"paused after step {state.global_step} (AIOPS_FINETUNE_PAUSE_AT): waiting for SIGTERM",
                flush=True,
            )
            while not self.stop.requested:  # the other ranks wait in the all_reduce below
                self.stop.arrived.wait(0.1)
        flag = self.stop.requested
        if dist.is_available() and dist.is_initialized():
            device = args.device if dist.get_backend() == "nccl" else torch.device("cpu")
            value = torch.tensor([float(flag)], device=device)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            flag = bool(value.item())
        if flag and state.global_step < state.max_steps:
            self.stop.requested_anywhere = True
            control.should_save = True
            control.should_training_stop = True
        return control
