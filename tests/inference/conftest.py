"""Fixtures for the inference tests: tiny TorchScript models, handler scripts, live servers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from helpers import Server, launch_server, stop_all, wait_ready

torch = pytest.importorskip("torch")


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def save_double(folder: Path, name: str = "model.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(Double()), str(folder / name))
    return folder


def save_mlp(folder: Path, sizes=(8, 16, 3), name: str = "model.pt", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model), str(folder / name))
    return folder


def write_script(folder: Path, text: str, name: str = "inference.py") -> Path:
    code = folder / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / name).write_text(text)
    return code / name


# A handler that never imports torch (its own model_fn): for the tests of the server itself (bounds,
# timeouts, faults), a worker then starts in ~1 s of CPU instead of ~3 s (`import torch` alone is 2+ s).
NO_TORCH_MODEL_FN = """
def model_fn(model_dir):  # the server is under test, not a model: no torch import in the worker
    return None
"""

ECHO = (
    NO_TORCH_MODEL_FN
    + """
import json
def input_fn(body, content_type):
    return json.loads(body)
def predict_fn(data, model):
    return data
"""
)


@pytest.fixture
def echo_dir(tmp_path: Path) -> Path:
    """A served folder whose handler answers its JSON input unchanged, without torch."""
    folder = tmp_path / "echo"
    folder.mkdir()
    write_script(folder, ECHO)
    return folder


@pytest.fixture
def double_dir(tmp_path: Path) -> Path:
    return save_double(tmp_path / "double")


@pytest.fixture
def mlp_dir(tmp_path: Path) -> Path:
    return save_mlp(tmp_path / "mlp")


@pytest.fixture
def start_server(tmp_path: Path, aiops_home: Path):
    started: list[Server] = []

    def start(
        model,
        *args: str,
        env: dict | None = None,
        wait: bool = True,
        port: int | None = None,
        open_files: int | None = None,
    ) -> Server:
        server = launch_server(
            model, *args, home=aiops_home, cwd=tmp_path, env=env, port=port, open_files=open_files
        )
        started.append(server)
        if wait:
            wait_ready(server)
        return server

    yield start
    stop_all(started)
