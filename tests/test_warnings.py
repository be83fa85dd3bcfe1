"""The suite's warning filters (pyproject.toml [tool.pytest.ini_options] filterwarnings) silence
torch's TorchScript deprecations, which the handler contract's model.pt format triggers on purpose,
and nothing about them is left to print."""

from __future__ import annotations

import warnings
from pathlib import Path


def _torchscript_round_trip(path: Path) -> None:
    import torch

    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    torch.jit.load(str(path))


def test_torchscript_deprecations_are_filtered(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as unfiltered:
        warnings.simplefilter("always")  # no filter: torch does warn (so the filter is what silences it)
        _torchscript_round_trip(tmp_path / "a.pt")
    deprecations = [str(w.message) for w in unfiltered if "torch.jit" in str(w.message)]
    assert any("torch.jit.script" in m for m in deprecations), deprecations
    with warnings.catch_warnings(record=True) as caught:  # the filters pytest applied from pyproject.toml
        _torchscript_round_trip(tmp_path / "b.pt")
    assert [str(w.message) for w in caught if "torch.jit" in str(w.message)] == []
