"""The infra commands through the real CLI: a fresh process per command at least once (``run_cli``),
the same entry in this process for the repeated calls (``cli_in_process``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import prices
import pytest

from aiops.pricing import load_prices

from .conftest import REPO


def test_preview_offline_table(run_cli):
    result = run_cli("preview", "--offline", "-C", str(REPO))
    assert result.returncode == 0, result.output
    for text in (
        "sagemaker.Endpoint",
        "s3.BucketPublicAccessBlock",
        "ec2.LaunchTemplate",
        "httpTokens=required",
        "targetValue=",
        "resources, offline preview",
    ):
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


def test_one_stack_rule_for_the_infra_commands(cli_in_process):
    """--stack > AIOPS_STACK > dev, as for `aiops train --remote` (aiops.stack.resolve_stack)."""
    from_env = cli_in_process("preview", "--offline", "--json", "-C", str(REPO), env={"AIOPS_STACK": "prod"})
    assert from_env.returncode == 0, from_env.output
    assert json.loads(from_env.stdout)["stack"] == "prod"
    flag = cli_in_process("cost", "--json", "--stack", "dev", "-C", str(REPO), env={"AIOPS_STACK": "prod"})
    assert flag.returncode == 0, flag.output
    assert json.loads(flag.stdout)["stack"] == "dev"
    default = cli_in_process("cost", "--json", "-C", str(REPO), env={"AIOPS_STACK": ""})
    assert json.loads(default.stdout)["stack"] == "dev"


def _no_pulumi_env(tmp_path):
    env = {
        "PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin",
        "PULUMI_HOME": str(tmp_path / "nohome"),
        "HOME": str(tmp_path),
    }
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
    code = (
        "import sys; from aiops.cli.app import main; main(['--help']);"
        "bad=[m for m in ('pulumi','pulumi_aws','boto3') if m in sys.modules]; print('BAD', bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "BAD []" in out


def test_preview_offline_shows_costs(cli_in_process):
    result = cli_in_process("preview", "--offline", "-C", str(REPO))
    assert result.returncode == 0, result.output
    out = result.stdout
    dev = prices.hourly("ml.g5.xlarge")  # Pulumi.dev.yaml: 1 (max 2) x ml.g5.xlarge in us-east-1
    for text in (
        "estimated cost of stack 'dev'",
        "$/h",
        "$/month",
        "1 (max 2) x ml.g5.xlarge",
        prices.rate(dev),
        f"{prices.monthly(dev):,.2f}",
        f"total: ${prices.rate(dev)}/h, ${prices.monthly(dev):,.2f}/month",
        "spot",
        f"prices as of {load_prices().as_of}",
    ):
        assert text in out, text
    result = cli_in_process("preview", "--offline", "--json", "--stack", "prod", "-C", str(REPO))
    costs = json.loads(result.stdout)["costs"]
    prod = prices.hourly("ml.g5.2xlarge", "us-west-2")  # Pulumi.prod.yaml: 2 (max 8) in us-west-2
    assert costs["total_hourly"] == pytest.approx(2 * prod) and costs["max_hourly"] == pytest.approx(8 * prod)
    assert costs["total_monthly"] == prices.monthly(2 * prod)
    assert costs["complete"] is True and costs["as_of"] and "AWS" in costs["source"]
    (line,) = costs["lines"]
    assert (line["instance_type"], line["count"], line["monthly"]) == (
        "ml.g5.2xlarge",
        2,
        prices.monthly(2 * prod),
    )
    assert line["hourly"] == pytest.approx(2 * prod)


def test_cost_command(run_cli, cli_in_process, tmp_path):
    result = run_cli("cost", "--stack", "prod", "-C", str(REPO))
    assert result.returncode == 0, result.output
    prod = prices.hourly("ml.g5.2xlarge", "us-west-2")
    assert "2 (max 8) x ml.g5.2xlarge" in result.stdout
    assert f"total: ${prices.rate(2 * prod)}/h, ${prices.monthly(2 * prod):,.2f}/month" in result.stdout
    assert f"up to ${prices.rate(8 * prod)}/h" in result.stdout
    result = cli_in_process("cost", "--json", "-C", str(REPO))
    data = json.loads(result.stdout)
    dev = prices.hourly("ml.g5.xlarge")
    assert data["stack"] == "dev" and data["total_hourly"] == pytest.approx(dev)
    assert data["total_monthly"] == prices.monthly(dev)
    assert {line["resource"] for line in data["lines"]} == {"endpoint-config/primary", "gpu-asg"}
    # an instance type without a known price: said in the row and the total, exit 0
    (tmp_path / "Pulumi.g6.yaml").write_text(
        "config:\n  aws:region: us-east-1\n  aiops:endpoint:\n    modelDataUrl: s3://b-1/m.tar.gz\n"
        "    instanceType: ml.g6.xlarge\n"
    )
    result = cli_in_process("cost", "--stack", "g6", "-C", str(tmp_path))
    assert result.returncode == 0, result.output
    assert "unknown" in result.stdout and "no known price for ml.g6.xlarge in us-east-1" in result.stdout
    assert "incomplete: 1 resource without a known price" in result.stdout
    # a bad stack: one line, exit 2
    result = cli_in_process("cost", "--stack", "missing", "-C", str(tmp_path))
    assert (
        result.returncode == 2
        and result.stderr.startswith("error: ")
        and len(result.stderr.splitlines()) == 1
    )


def test_cost_help_imports_no_pulumi():
    code = (
        "import sys; from aiops.cli.app import main; main(['cost', '--help']);"
        "bad=[m for m in ('pulumi','pulumi_aws','boto3') if m in sys.modules]; print('BAD', bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "BAD []" in out


def test_deploy_cost_summary_is_made_offline():
    """What `deploy` prints between its preview and the question (the Automation part needs the binary):
    the offline plan's cost, made in a spawned process (its Pulumi mocks never meet the Automation
    program)."""
    from pathlib import Path

    from aiops.infra.commands import isolated_cost
    from aiops.infra.render import deploy_cost_lines

    out = "\n".join(deploy_cost_lines(isolated_cost(Path(REPO), "prod")))
    assert "estimated cost of the stack as configured" in out
    prod = prices.hourly("ml.g5.2xlarge", "us-west-2")
    assert (
        f"endpoint-config/primary: 2 x ml.g5.2xlarge at ${prices.rate(prod)}/h = ${round(2 * prod, 6):g}/h, "
        f"${prices.monthly(2 * prod):,.2f}/month"
    ) in out
    assert f"total: ${prices.rate(2 * prod)}/h" in out
    out = " ".join(deploy_cost_lines(isolated_cost(Path(REPO), "nope")))
    assert "cost estimate unavailable:" in out and "Pulumi.nope.yaml: no such stack file" in out
