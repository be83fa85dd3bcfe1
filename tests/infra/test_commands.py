"""infra/commands.py: one function a command, which cli/infra.py calls (no CLI-in-a-subprocess),
and the room's import boundary (no torch/training/inference, no sagemaker import in infra/)."""

from __future__ import annotations

import ast
from pathlib import Path

from aiops.infra import commands

from .conftest import REPO


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_infra_imports_no_torch_training_inference_or_sagemaker():
    for path in sorted((REPO / "infra").glob("*.py")):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("torch", "sagemaker")
               or m.startswith(("aiops.training", "aiops.inference"))}
        assert not bad, (path.name, bad)


def test_the_infra_commands_call_functions_not_the_cli():
    imports = _imports(REPO / "cli" / "infra.py")
    source = (REPO / "cli" / "infra.py").read_text()
    assert "subprocess" not in imports and source.count("from aiops.infra import commands") == 5
    assert "sys.executable" not in source and "automation_call" not in source  # the orchestration is in infra/


def test_preview_and_cost_are_function_calls():
    result = commands.preview(REPO, "prod", offline=True)
    assert result.stack == "prod" and result.changes is None
    assert result.plan.one("aws:sagemaker/endpoint:Endpoint")
    assert result.costs.total_hourly == commands.cost(REPO, "prod").total_hourly
    assert result.costs.lines and result.costs.complete


def test_the_cost_estimate_for_deploy_is_made_in_a_child_and_never_fatal(tmp_path):
    estimate = commands.isolated_cost(REPO, "prod")
    assert estimate.error is None and estimate.costs.total_hourly == commands.cost(REPO, "prod").total_hourly
    missing = commands.isolated_cost(tmp_path, "nope")
    assert missing.costs is None and "Pulumi.nope.yaml: no such stack file" in missing.error
