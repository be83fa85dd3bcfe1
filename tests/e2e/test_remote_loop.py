"""The remote loop on the emulated platform, IAM enforced: warm pools reused by a matching job and
not by another, a capacity-aware launch through both kinds of capacity error (refused at create,
failed at start; on-demand and spot) with no job ever run twice or two at once, and remote
debugging (the role's SSM statement only where the stack allows it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from emulator import LAUNCHING, SSM_AGENT_ACTIONS
from iam_judge import denials
from journey import Journey, stack_config

SCRIPT = """
import json, os
print("epoch=0; loss=0.5;", flush=True)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as f:
    json.dump({"hosts": os.environ["SM_HOSTS"]}, f)
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "train.py").write_text(SCRIPT)
    return folder


def _stack(journey: Journey, **access: object) -> None:
    config = stack_config()
    if access:
        config["config"]["aiops:access"] = dict(access)
    journey.write_stack(config)
    journey.apply(journey.preview())


def _train(journey: Journey, code: Path, name: str, *extra: str):
    return journey.aiops(
        "train", "train.py", "--source-dir", str(code), "--remote", "--job-name", name, *extra
    )


def _pools(journey: Journey) -> dict[str, str]:
    """`aiops jobs list --json`: each job's warm pool status."""
    listed = journey.aiops("jobs", "list", "--json")
    assert listed.returncode == 0, listed.output
    return {
        r["job_name"]: r["warm_pool_status"] for r in json.loads(listed.stdout) if r.get("warm_pool_status")
    }


def _messages(journey: Journey, name: str) -> list[str]:
    return [t["StatusMessage"] for t in journey.platform.jobs[name].transitions]


def test_a_matching_job_reuses_the_warm_pool_and_another_does_not(journey: Journey, code: Path) -> None:
    _stack(journey)
    pool = ("--instance-type", "ml.c5.xlarge", "--keep-alive", "10m")
    first = _train(journey, code, "pool-1", *pool)
    assert first.returncode == 0, journey.log()[-4000:]
    listed = journey.aiops("jobs", "list")
    assert listed.returncode == 0, listed.output
    header, row = (line for line in listed.stdout.splitlines() if "pool" in line)  # the column, pool-1
    assert header.split("┃")[3].strip() == "pool" and row.split("│")[3].strip() == "Available", listed.stdout
    assert _pools(journey) == {"pool-1": "Available"}

    second = _train(journey, code, "pool-2", *pool)  # same type, count, role, network, volume, key
    other = _train(journey, code, "pool-3", *pool, "--volume-size", "40")  # another volume: no match
    assert second.returncode == 0 and other.returncode == 0, journey.log()[-4000:]
    jobs = journey.platform.jobs
    assert jobs["pool-2"].reused_pool is not None and jobs["pool-2"].reused_pool.job == "pool-1"
    assert jobs["pool-3"].reused_pool is None
    # the reusing job starts without the provisioning phase; the others go through it
    assert LAUNCHING not in _messages(journey, "pool-2")
    assert LAUNCHING in _messages(journey, "pool-1") and LAUNCHING in _messages(journey, "pool-3")
    assert jobs["pool-2"].request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 600

    described = json.loads(journey.aiops("jobs", "describe", "pool-1", "--json").stdout)
    summary = described["remote_summary"]
    assert summary["warm_pool_status"] == "Reused" and summary["warm_pool_reused_by"] == "pool-2"
    assert isinstance(summary["warm_pool_billable_seconds"], int)
    text = journey.aiops("jobs", "describe", "pool-1").stdout
    assert "warm pool" in text and "reused by pool-2" in text
    # pool-1's instances moved to pool-2: nothing is kept for it any more
    assert _pools(journey) == {"pool-1": "Reused", "pool-2": "Available", "pool-3": "Available"}


def test_capacity_errors_move_the_same_job_to_the_next_type(
    journey: Journey, code: Path, tmp_path: Path
) -> None:
    """On-demand: ml.c5.xlarge refused at create (ResourceLimitExceeded), ml.c5.2xlarge created and
    failed (CapacityError), ml.c5.4xlarge runs. Spot: InsufficientInstanceCapacity, then the next.
    One job at a time, each run once, every attempt on the same uploads."""
    _stack(journey)
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("1,2\n")
    platform = journey.platform
    platform.inject_capacity("ml.c5.xlarge", "create")
    platform.inject_capacity("ml.c5.2xlarge", "start")
    types = "ml.c5.xlarge,ml.c5.2xlarge,ml.c5.4xlarge"
    result = _train(
        journey, code, "cap", "--on-demand", "--instance-type", types, "--channel", f"train={data}"
    )
    assert result.returncode == 0, journey.log()[-4000:]
    assert platform.refused == ["cap"] and "cap" not in platform.jobs
    assert platform.jobs["cap-try2"].failure_reason.startswith("CapacityError: Unable to provision")
    assert platform.jobs["cap-try3"].status == "Completed"
    requests = [platform.jobs[n].request for n in ("cap-try2", "cap-try3")]
    assert [r["ResourceConfig"]["InstanceType"] for r in requests] == ["ml.c5.2xlarge", "ml.c5.4xlarge"]
    same = ("sagemaker_submit_directory",)
    assert requests[0]["HyperParameters"][same[0]] == requests[1]["HyperParameters"][same[0]]
    assert requests[0]["InputDataConfig"] == requests[1]["InputDataConfig"]
    table = result.stdout[result.stdout.index("attempts") :]
    for expected in ("ResourceLimitExceeded", "cap-try2", "CapacityError", "cap-try3", "Completed"):
        assert expected in table, table

    platform.inject_capacity("ml.c5.xlarge", "start")
    spot = _train(journey, code, "spot", "--spot", "--instance-type", "ml.c5.xlarge,ml.c5.2xlarge")
    assert spot.returncode == 0, journey.log()[-4000:]
    assert "InsufficientInstanceCapacity" in platform.jobs["spot"].failure_reason
    assert platform.jobs["spot-try2"].status == "Completed"
    # only jobs that got instances ran, each once, never two at once
    assert platform.runs == {"cap-try3": 1, "spot-try2": 1} and platform.peak_running == 1


def test_remote_debug_needs_the_stacks_permission(journey: Journey, code: Path) -> None:
    _stack(journey)
    refused = _train(journey, code, "debug-refused", "--remote-debug", "--instance-type", "ml.c5.xlarge")
    assert refused.returncode == 2 and "access.remoteDebug" in refused.stderr, refused.output
    assert "debug-refused" not in journey.platform.jobs

    _stack(journey, remoteDebug=True)
    assert journey.outputs.get("remoteDebug") is True
    result = _train(journey, code, "debug", "--remote-debug", "--instance-type", "ml.c5.xlarge")
    assert result.returncode == 0, journey.log()[-4000:]
    job = journey.platform.jobs["debug"]
    assert job.request["RemoteDebugConfig"] == {"EnableRemoteDebug": True}
    agent = [c for c in job.calls if c.action.startswith("ssmmessages:")]
    assert sorted({c.action for c in agent}) == sorted(SSM_AGENT_ACTIONS)
    documents = journey.platform.documents(journey.outputs["roleArn"])
    assert not denials(documents, job.calls)
    denied = denials(documents.without_statement("RemoteDebugSessions"), job.calls)
    assert denied and denied[0].call.action.startswith("ssmmessages:")
