"""The infra commands through the real CLI (subprocess)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from .conftest import REPO


def test_preview_offline_table(run_cli):
    result = run_cli("preview", "--offline", "-C", str(REPO))
    assert result.returncode == 0, result.output
    for text in ("sagemaker.Endpoint", "s3.BucketPublicAccessBlock", "ec2.LaunchTemplate", "httpTokens=required",
                 "targetValue=", "resources, offline preview"):
        assert text in result.stdout


def test_preview_offline_json_lists_every_resource(run_cli):
    result = run_cli("preview", "--offline", "--json", "--stack", "prod", "-C", str(REPO))
    assert result.returncode == 0, result.output
    data = json.loads(result.stdout)
    assert data["stack"] == "prod" and data["region"] == "us-west-2"
    types = {r["type"] for r in data["resources"]}
    assert "aws:sagemaker/endpoint:Endpoint" in types and "aws:ec2/launchTemplate:LaunchTemplate" not in types
    assert all({"type", "name", "parent", "inputs"} <= set(r) for r in data["resources"])
    assert data["outputs"]["region"] == "us-west-2"


def _no_pulumi_env(tmp_path):
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin", "PULUMI_HOME": str(tmp_path / "nohome"),
           "HOME": str(tmp_path)}
    return env


def test_commands_without_the_pulumi_binary_stop_with_one_line(run_cli, tmp_path):
    env = _no_pulumi_env(tmp_path)
    for args in (["deploy", "--yes"], ["preview"], ["destroy", "--yes"], ["outputs"]):
        result = run_cli(*args, "-C", str(REPO), env=env)
        assert result.returncode == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "pulumi CLI is not installed" in lines[0] and "get.pulumi.com" in lines[0]


def test_deploy_checks_model_and_config_first(run_cli, tmp_path):
    env = _no_pulumi_env(tmp_path)
    result = run_cli("deploy", "--model", str(tmp_path / "missing.tar.gz"), "-C", str(REPO), env=env)
    assert result.returncode == 2 and "no such file or folder" in result.stderr
    result = run_cli("deploy", "--model", "s3://Bad_Bucket", "-C", str(REPO), env=env)
    assert result.returncode == 2 and "malformed S3 URI" in result.stderr


def test_passphrase_required_when_pulumi_is_present(run_cli, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "pulumi"
    fake.write_text("#!/bin/sh\necho v3.272.0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = _no_pulumi_env(tmp_path)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    result = run_cli("outputs", "-C", str(REPO), env=env)
    assert result.returncode == 2 and "PULUMI_CONFIG_PASSPHRASE" in result.stderr


def test_help_imports_no_pulumi_or_boto3():
    code = ("import sys; from aiops.cli.app import main; main(['--help']);"
            "bad=[m for m in ('pulumi','pulumi_aws','boto3') if m in sys.modules]; print('BAD', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "BAD []" in out
