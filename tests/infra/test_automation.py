"""Automation API wiring, as far as it can be tested without the pulumi binary.

What is checked: finding the binary, the workspace spec (file backend, passphrase provider, env),
the inline program being the same `program.build`, and that `open_stack` hands the Automation API
a PulumiCommand rooted at the binary found. Not checked here (needs the real CLI): stack
creation, preview/up/destroy against the file backend.
"""

from __future__ import annotations

import stat

import pytest
from aiops.infra import automation

from aiops.errors import UsageError


def fake_pulumi(folder):
    (folder / "bin").mkdir(parents=True)
    binary = folder / "bin" / "pulumi"
    binary.write_text("#!/bin/sh\necho v3.272.0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def test_missing_binary_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as info:
        automation.workspace_spec(
            stack="dev",
            project_dir=tmp_path,
            backend=None,
            home=tmp_path,
            env={"PATH": str(tmp_path), "PULUMI_HOME": str(tmp_path / "none")},
        )
    assert info.value.exit_code == 2 and "get.pulumi.com" in str(info.value)


def test_binary_found_in_pulumi_home(tmp_path):
    binary = fake_pulumi(tmp_path / "ph")
    assert automation.find_pulumi({"PATH": str(tmp_path), "PULUMI_HOME": str(tmp_path / "ph")}) == binary


def test_workspace_spec_defaults(tmp_path):
    binary = fake_pulumi(tmp_path / "ph")
    env = {"PATH": str(binary.parent), "PULUMI_CONFIG_PASSPHRASE": "s3cret"}
    spec = automation.workspace_spec(
        stack="dev", project_dir=tmp_path, backend=None, home=tmp_path / "home", env=env
    )
    assert spec.backend_url == (tmp_path / "home" / "pulumi").resolve().as_uri()
    assert (tmp_path / "home" / "pulumi").is_dir()
    assert spec.env_vars["PULUMI_BACKEND_URL"] == spec.backend_url
    assert spec.env_vars["PULUMI_CONFIG_PASSPHRASE"] == "s3cret"
    assert spec.secrets_provider == "passphrase" and spec.pulumi_binary == binary


def test_workspace_spec_backend_and_passphrase(tmp_path):
    binary = fake_pulumi(tmp_path / "ph")
    spec = automation.workspace_spec(
        stack="p",
        project_dir=tmp_path,
        backend="s3://state-bucket",
        home=tmp_path,
        env={"PATH": str(binary.parent), "PULUMI_CONFIG_PASSPHRASE_FILE": "/k"},
    )
    assert spec.backend_url == "s3://state-bucket" and spec.env_vars["PULUMI_CONFIG_PASSPHRASE_FILE"] == "/k"
    with pytest.raises(UsageError, match="PULUMI_CONFIG_PASSPHRASE"):
        automation.workspace_spec(
            stack="p", project_dir=tmp_path, backend=None, home=tmp_path, env={"PATH": str(binary.parent)}
        )


def test_open_stack_passes_the_spec_to_the_automation_api(tmp_path, monkeypatch):
    from pulumi import automation as auto

    binary = fake_pulumi(tmp_path / "ph")
    spec = automation.workspace_spec(
        stack="dev",
        project_dir=tmp_path,
        backend=None,
        home=tmp_path,
        env={"PATH": str(binary.parent), "PULUMI_CONFIG_PASSPHRASE": "x"},
    )
    seen = {}

    class FakeCommand:
        def __init__(self, root=None, **_):
            seen["root"] = root

    def fake_create_or_select(stack_name, project_name, program, opts):
        seen.update(stack=stack_name, project=project_name, program=program, opts=opts)
        return "stack"

    monkeypatch.setattr(auto, "PulumiCommand", FakeCommand)
    monkeypatch.setattr(auto, "create_or_select_stack", fake_create_or_select)
    assert automation.open_stack(spec) == "stack"
    assert seen["root"] == str(binary.parent.parent)
    assert (seen["stack"], seen["project"], seen["program"]) == ("dev", "aiops", automation.inline_program)
    opts = seen["opts"]
    assert opts.secrets_provider == "passphrase" and opts.work_dir == str(tmp_path.resolve())
    assert opts.env_vars["PULUMI_BACKEND_URL"] == spec.backend_url


def test_summarize():
    assert automation.summarize({"create": 3, "same": 10, "update": 0}) == "3 to create"
    assert automation.summarize({}) == "no changes"
