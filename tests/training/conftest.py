"""Fixtures for the digits example: its data channels and a SageMaker-style environment to run it in."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import free_port


@pytest.fixture(scope="session")
def sagemaker_env():
    """`sagemaker_env(run_dir, channels, checkpoints=None)`: the environment a SageMaker PyTorch
    container gives the example, with its folders under `run_dir` (created)."""
    return _sagemaker_env


@pytest.fixture(scope="session")
def torchrun_command():
    """`torchrun_command(nproc, script, *args)`: argv launching `script` on one node, like `torchrun`."""
    return _torchrun_command


def _sagemaker_env(run_dir: Path, channels: Path, checkpoints: Path | None = None) -> dict[str, str]:
    # inherited SM_* and AIOPS_* variables are dropped so the outer environment cannot leak in
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "AIOPS_"))}
    dirs = {
        "SM_MODEL_DIR": run_dir / "model",
        "SM_OUTPUT_DIR": run_dir / "output",
        "SM_OUTPUT_DATA_DIR": run_dir / "output" / "data",
        "AIOPS_CHECKPOINT_DIR": checkpoints or run_dir / "checkpoints",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env.update({k: str(v) for k, v in dirs.items()})
    env.update(
        SM_CHANNEL_TRAIN=str(channels / "train"),
        SM_CHANNEL_TEST=str(channels / "test"),
        SM_NUM_GPUS="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def _torchrun_command(nproc: int, script: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(script),
        *args,
    ]
