"""Fixtures of the journey test: the emulated AWS account, its platform, the digits data.

See emulator.py for what stands in for what. Every test gets its own moto process, platform
proxy and job network namespaces: nothing is shared between tests or xdist workers but the
digits data and the local reference run (per worker, read-only once made).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # the emulator's modules import each other by name

from emulator import MotoAccount, Platform  # noqa: E402
from journey import REGION, REPO_ROOT, Journey, stack_config  # noqa: E402


@pytest.fixture(scope="session")
def namespaces() -> None:
    from sandbox import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"the platform emulator runs each job's hosts in network namespaces: {reason}")


@pytest.fixture
def account() -> Any:
    acct = MotoAccount(REGION)
    yield acct
    acct.close()


@pytest.fixture
def platform(account: MotoAccount, tmp_path: Path) -> Any:
    plat = Platform(account, tmp_path / "platform")
    yield plat
    plat.close()


@pytest.fixture
def journey(account: MotoAccount, platform: Platform, tmp_path: Path, namespaces: None) -> Journey:
    return Journey(account, platform, tmp_path / "user", stack="e2e")


@pytest.fixture(scope="session")
def digits_data(digits_channels: Path) -> Path:
    return digits_channels


def plan_statement_ids(*, vpc: bool = False) -> list[str]:
    """The Sids of the execution role's policy in the journey's plan (for parametrizing). Made once
    per run for all pytest-xdist workers (they all collect): the first writes them, the rest read."""
    import tempfile

    from filelock import FileLock

    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run_id:
        return _plan_statement_ids(vpc=vpc)
    cache = Path(tempfile.gettempdir()) / f"aiops-tests-{run_id}-sids-{'vpc' if vpc else 'main'}.json"
    with FileLock(str(cache) + ".lock"):
        if not cache.is_file():
            cache.write_text(json.dumps(_plan_statement_ids(vpc=vpc)))
        return json.loads(cache.read_text())


def _plan_statement_ids(*, vpc: bool) -> list[str]:
    import tempfile

    import yaml
    from helpers import run_aiops_in_process

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "Pulumi.yaml").write_text((REPO_ROOT / "Pulumi.yaml").read_text())
        config = stack_config(endpoint=True, model_data_url="s3://aiops-e2e-x/m/model.tar.gz")
        if vpc:  # placeholders: the statements, not their resources, are what is listed here
            config["config"]["aiops:network"] = {
                "subnetIds": ["subnet-0123456789abcdef0"],
                "securityGroupIds": ["sg-0123456789abcdef0"],
            }
            config["config"]["aiops:endpoint"]["inferenceComponents"] = {"enabled": True}
        else:  # the main journey ends with its endpoint on asynchronous inference; its job can be entered
            config["config"]["aiops:endpoint"]["asyncInference"] = {"enabled": True, "maxCapacity": 2}
            config["config"]["aiops:access"] = {"remoteDebug": True}
        (project / "Pulumi.e2e.yaml").write_text(yaml.safe_dump(config))
        proc = run_aiops_in_process(
            project / "home", project, "preview", "--offline", "--json", "--stack", "e2e"
        )
    if proc.returncode != 0:
        return [f"preview-failed: {proc.stderr.strip()[-200:]}"]
    plan = json.loads(proc.stdout)
    sids = []
    for resource in plan["resources"]:
        if resource["type"] == "aws:iam/rolePolicy:RolePolicy":
            sids += [
                s.get("Sid", f"#{i}")
                for i, s in enumerate(json.loads(resource["inputs"]["policy"])["Statement"])
            ]
    return sids


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "statement_id" in metafunc.fixturenames:
        metafunc.parametrize("statement_id", plan_statement_ids())
    if "vpc_statement_id" in metafunc.fixturenames:
        metafunc.parametrize("vpc_statement_id", plan_statement_ids(vpc=True))


# Tests that read one session journey run on the worker that made it (make test: --dist loadgroup),
# so each journey runs once per session; the two journeys may run on two workers side by side.
JOURNEY_GROUPS = {"main_journey": "e2e-journey", "vpc_journey": "e2e-journey-vpc"}


@pytest.hookimpl(tryfirst=True)  # before xdist turns the marks into groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        for fixture, group in JOURNEY_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
