"""infra/commands.py: one function a command, which cli/infra.py calls (no CLI-in-a-subprocess).
The room's import boundary is tests/test_boundaries.py's."""

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


def test_the_infra_commands_call_functions_not_the_cli():
    imports = _imports(REPO / "cli" / "infra.py")
    source = (REPO / "cli" / "infra.py").read_text()
    assert "subprocess" not in imports and source.count("from aiops.infra import commands") == 5
    assert (
        "sys.executable" not in source and "automation_call" not in source
    )  # the orchestration is in infra/


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


class _Stack:
    """An opened Automation API stack as deploy uses it (the pulumi binary cannot run here)."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def preview(self, on_event=None):
        self.calls.append("preview")
        return type("PreviewResult", (), {"change_summary": {"create": 3, "same": 2}})()

    def up(self, on_event=None):
        from pulumi.automation import OutputValue

        self.calls.append("up")
        summary = type("Summary", (), {"result": "succeeded"})()
        outputs = {
            "bucket": OutputValue("b-1", False),
            "region": OutputValue("us-west-2", False),
            "passphrase": OutputValue("s3cr3t", True),
        }
        return type("UpResult", (), {"summary": summary, "outputs": outputs})()


class _View:
    def __init__(self, calls: list[str], answer: bool) -> None:
        self.calls, self.answer, self.estimate = calls, answer, None

    def event(self, event) -> None:
        self.calls.append("event")

    def model(self, resolved) -> None:
        self.calls.append("model")

    def planned(self, stack, changes) -> None:
        self.calls.append(f"planned {stack} {changes['create']}")

    def cost(self, estimate) -> None:
        self.estimate = estimate
        self.calls.append("cost")

    def confirm(self) -> bool:
        self.calls.append("confirm")
        return self.answer


def test_deploy_previews_prices_and_asks_before_it_applies(monkeypatch, tmp_path):
    import json

    import pytest

    from aiops.errors import UsageError
    from aiops.settings import get_settings

    monkeypatch.setenv("AIOPS_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    calls: list[str] = []
    opened: list[str] = []
    monkeypatch.setattr(commands, "_workspace", lambda project_dir, stack, backend: (stack, backend))
    monkeypatch.setattr(commands, "_open", lambda spec: opened.append(spec) or _Stack(calls))
    try:
        view = _View(calls, answer=False)
        with pytest.raises(UsageError, match="not applied"):
            commands.deploy(REPO, "prod", view=view, backend="file:///x")
        assert calls == ["preview", "planned prod 3", "cost", "confirm"] and opened == [("prod", "file:///x")]
        assert view.estimate.error is None and view.estimate.costs.stack == "prod"
        assert not (tmp_path / "home").exists() or not list((tmp_path / "home").rglob("*.json"))
        calls.clear()
        done = commands.deploy(REPO, "prod", view=_View(calls, answer=False), yes=True)
        assert calls == ["preview", "planned prod 3", "cost", "up"]  # --yes: no question
        assert done.result == "succeeded" and done.outputs["passphrase"].secret
        (saved,) = (tmp_path / "home").rglob("*.json")
        assert json.loads(saved.read_text()) == {"bucket": "b-1", "region": "us-west-2"}  # no secret on disk
    finally:
        get_settings.cache_clear()
