"""Each room's import boundary, as docs/architecture.md states it: one rule table, read from the source.

Every `import` and `from ... import` anywhere in a module counts (a lazy import inside a function still
ties the rooms together); relative imports stay inside their package and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "boto3",
    "botocore",
    "pulumi",
    "pulumi_aws",
    "pulumi_aws_native",
    "transformers",
    "sagemaker",
)

# room folder -> module prefixes it must never import
RULES: dict[str, tuple[str, ...]] = {
    "aiops": (
        "aiops.cli",
        "aiops.training",
        "aiops.inference",
        "aiops.infra",
        "torch",
        "pulumi",
        "pulumi_aws",
        "transformers",
        "sagemaker",
    ),
    "training": ("aiops.cli", "aiops.infra", "pulumi", "pulumi_aws"),
    "inference": ("aiops.cli", "aiops.infra", "aiops.training", "pulumi", "pulumi_aws"),
    "infra": ("aiops.cli", "aiops.training", "aiops.inference", "torch", "transformers", "sagemaker"),
    "cli": (),
}


# inference/'s own rooms (docs/architecture.md, "Serving process model"): the server, the clients and
# export stand apart; the handler contract (contract, handler, codecs, errors, streaming) is shared
INFERENCE_ROOMS: dict[str, tuple[str, ...]] = {
    "inference/serving": ("aiops.inference.client", "aiops.inference.export"),
    "inference/client": (
        "aiops.inference.serving",
        "aiops.inference.export",
        "aiops.inference.handler",
        "aiops.inference.streaming",
        "torch",
    ),
    "inference/export": ("aiops.inference.serving", "aiops.inference.client"),
}
# ... and the contract itself calls none of them
INFERENCE_CONTRACT = ("contract.py", "handler.py", "codecs.py", "errors.py", "streaming.py")


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_every_product_folder_has_a_rule() -> None:
    package_dir = {"aiops", "cli", "training", "inference", "infra"}
    assert set(RULES) == package_dir


@pytest.mark.parametrize("room", sorted(RULES))
def test_room_imports_stay_inside_its_boundary(room: str) -> None:
    crossing = {}
    for path in sorted((REPO / room).rglob("*.py")):
        bad = sorted(m for m in imports(path) if _matches(m, RULES[room]))
        if bad:
            crossing[str(path.relative_to(REPO))] = bad
    assert not crossing, f"{room}/ imports across its boundary: {crossing}"


@pytest.mark.parametrize("room", sorted(INFERENCE_ROOMS))
def test_inference_rooms_stay_apart(room: str) -> None:
    folder = REPO / room
    assert folder.is_dir(), f"{room}/ is gone: update INFERENCE_ROOMS and docs/architecture.md"
    crossing = {}
    for path in sorted(folder.rglob("*.py")):
        bad = sorted(m for m in imports(path) if _matches(m, INFERENCE_ROOMS[room]))
        if bad:
            crossing[str(path.relative_to(REPO))] = bad
    assert not crossing, f"{room}/ imports across its boundary: {crossing}"


def test_the_handler_contract_imports_no_server_client_or_export() -> None:
    rooms = ("aiops.inference.serving", "aiops.inference.client", "aiops.inference.export")
    crossing = {
        name: sorted(m for m in imports(REPO / "inference" / name) if _matches(m, rooms))
        for name in INFERENCE_CONTRACT
    }
    assert not {k: v for k, v in crossing.items() if v}


# the one model-artifact module (docs/architecture.md, "Model artifacts"): serve, export, `model package` and
# deploy all import it, so it loads no heavy library when imported (boto3 only inside the calls that upload)
ARTIFACTS = REPO / "aiops" / "artifacts"


def test_the_artifact_module_imports_heavy_libraries_only_lazily() -> None:
    eager = {
        p.name: sorted(m for m in imports(p, top_level_only=True) if _matches(m, HEAVY))
        for p in sorted(ARTIFACTS.glob("*.py"))
    }
    assert len(eager) > 1 and not {k: v for k, v in eager.items() if v}


def test_importing_the_artifact_module_loads_no_heavy_library() -> None:
    """What its imports pull in, transitively: none of torch, boto3, botocore, pulumi ..."""
    import subprocess
    import sys

    names = sorted(f"aiops.artifacts.{p.stem}" for p in ARTIFACTS.glob("*.py") if p.stem != "__init__")
    code = (
        f"import sys, importlib; [importlib.import_module(n) for n in {names!r}]; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_modules_import_heavy_libraries_only_lazily() -> None:
    """`aiops --help` stays fast because no command module imports a heavy library at its top."""
    eager = {
        str(p.relative_to(REPO)): sorted(m for m in imports(p, top_level_only=True) if _matches(m, HEAVY))
        for p in sorted((REPO / "cli").rglob("*.py"))
    }
    assert not {k: v for k, v in eager.items() if v}


def test_the_rule_reader_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from aiops.cli import app\n    import torch.nn\n")
    assert imports(module) == {"os", "aiops.cli", "torch.nn"}
    assert imports(module, top_level_only=True) == {"os"}
