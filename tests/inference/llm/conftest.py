"""Fixtures for the LLM engine's and server's tests: one tiny Llama folder per test run, loaded once per
module, and its copy that the servers serve; a tiny Mistral (grouped-query attention, a sliding-window
mask) for the parity tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama causal-LM folder (save_pretrained), made once for every xdist worker; read-only."""
    from helpers import built_once
    from tiny_llm import make_tiny_llm

    def build(root: Path) -> dict:
        return {"folder": str(make_tiny_llm(root / "tiny-llm"))}

    # its own name: the suite's `aiops example tiny-llm` model is another one (tests/helpers.tiny_llm_folder)
    return Path(built_once(tmp_path_factory, "tiny-llm-engine", build)["folder"])


@pytest.fixture(scope="module")
def tiny_llm(tiny_llm_dir: Path):
    """(model, tokenizer) on the CPU in float32, as the engine loads them; shared read-only by a module."""
    from aiops.inference.llm.engine import LLMEngine

    engine = LLMEngine.from_folder(tiny_llm_dir, device="cpu")
    return engine.model, engine.tokenizer


def _edit_json(path: Path, **changes) -> None:
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


@pytest.fixture(scope="session")
def llm_dir(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served folder: the tiny Llama with 32768 positions (rotary: only the config changes) and no EOS
    token, so a generation ends at its length (or a stop sequence) and a long one is long for certain."""
    folder = tmp_path_factory.mktemp("llm-server") / "tiny-llm-long"
    shutil.copytree(tiny_llm_dir, folder)
    _edit_json(folder / "config.json", max_position_embeddings=32768)
    _edit_json(folder / "generation_config.json", eos_token_id=[])
    return folder


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Mistral folder: 4 query heads over 2 KV heads, a 256-token sliding window; read-only. Its
    weights are drawn wider than the Llama's so that attention is sharp: a wrong position id or an
    attended pad changes its tokens (the Llama's near-uniform attention hides both)."""
    from helpers import built_once
    from tiny_llm import make_tiny_llm

    def build(root: Path) -> dict:
        return {
            "folder": str(
                make_tiny_llm(root / "tiny-mistral", sliding_window=256, seed=1, initializer_range=0.2)
            )
        }

    return Path(built_once(tmp_path_factory, "tiny-mistral-engine", build)["folder"])


@pytest.fixture(scope="module")
def tiny_mistral(tiny_mistral_dir: Path):
    """(model, tokenizer) of the tiny Mistral on the CPU in float32, loaded as the engine loads them."""
    from aiops.inference.llm.engine import LLMEngine
    from aiops.inference.llm.generation import Limits

    engine = LLMEngine.from_folder(tiny_mistral_dir, Limits(max_total_tokens=256), device="cpu")
    return engine.model, engine.tokenizer
