"""The remote loop against the moto server and the platform proxy: warm pools in the request and the
estimate, remote debugging (the request field, the stack's permission, `aiops jobs connect`'s
command line), and the capacity-aware launch after a create refused for capacity. The emulator's
side (pools reused or not, capacity failures of running jobs, the role's SSM statement with IAM
enforced) is tests/e2e/test_remote_loop.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import prices
import pytest

from aiops.stack import write_outputs

from .conftest import BUCKET, REGION

ROLE = "arn:aws:iam::123456789012:role/dev-role"


def _outputs(home: Path, **extra) -> None:
    write_outputs(home, "dev", {"region": REGION, "bucket": BUCKET, "roleArn": ROLE, **extra})


def _train(run_cli, project: Path, *extra: str, env: dict[str, str] | None = None):
    return run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--json",
        *extra,
        env={"AIOPS_AWS__ROLE_ARN": "", "AIOPS_AWS__BUCKET": "", **(env or {})},
    )


def test_keep_alive_sets_the_warm_pool_and_prices_its_idle_time(
    run_cli, project, platform, aiops_home
) -> None:
    _outputs(aiops_home)
    result = _train(
        run_cli,
        project,
        "--instance-type",
        "ml.g5.2xlarge",
        "--instance-count",
        "2",
        "--keep-alive",
        "30m",
        "--max-run",
        "3600",
        "--no-wait",
    )
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    assert request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800
    assert request["EnableManagedSpotTraining"] is False  # warm pools keep on-demand instances
    idle = 2 * 0.5 * prices.hourly("ml.g5.2xlarge", spot=False)
    assert f"warm pool: 2 x ml.g5.2xlarge kept up to 30 min after the job, ${idle:.2f} more" in result.stderr
    record = json.loads((aiops_home / "runs" / request["TrainingJobName"] / "run.json").read_text())
    assert record["estimated_idle_cost_usd"] == round(idle, 2)


def test_remote_debug_sets_the_request_field_on_a_stack_that_allows_it(
    run_cli, project, platform, aiops_home
) -> None:
    _outputs(aiops_home, remoteDebug=True)
    result = _train(run_cli, project, "--remote-debug", "--no-wait")
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    assert request["RemoteDebugConfig"] == {"EnableRemoteDebug": True}
    assert "RemoteDebugConfig" not in _request_without_debug(run_cli, project, platform)


def _request_without_debug(run_cli, project, platform) -> dict:
    assert _train(run_cli, project, "--no-wait").returncode == 0
    return platform.create_requests[-1]


BAD = [
    (["--keep-alive", "2h"], {}, "--keep-alive 7200s: SageMaker keeps a warm pool 0 to 3600 s"),
    (["--keep-alive", "soon"], {}, "--keep-alive 'soon': give a duration like 30m"),
    (["--keep-alive", "10m", "--spot"], {}, "warm pools of on-demand instances only"),
    (["--remote-debug"], {}, "set access.remoteDebug: true in Pulumi.dev.yaml"),
    (
        ["--instance-type", "ml.g5.2xlarge,ml.c5.xlarge", "--distribution", "torch_distributed"]
        + ["--instance-count", "2"],
        {},
        "--instance-type ml.c5.xlarge (in the fallback list): ",
    ),
    (["--instance-type", "ml.g5.2xlarge,ml.g5.huge"], {}, "ml.g5.huge is not a SageMaker training instance"),
    (["--instance-type", "ml.g5.2xlarge,,ml.g6.2xlarge"], {}, "give one type or a comma-separated list"),
    (["--instance-type", "ml.g5.2xlarge,ml.g6.2xlarge", "--max-attempts", "0"], {}, "--max-attempts 0"),
    (["--instance-type", "auto"], {}, "--instance-type auto picks the cheapest GPU types"),
]


@pytest.mark.parametrize("extra, outputs, expected", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_remote_loop_input_is_one_line_before_any_upload(
    run_cli, project, platform, aiops_home, extra, outputs, expected
) -> None:
    _outputs(aiops_home, **outputs)
    result = _train(run_cli, project, "--no-wait", *extra)
    assert result.returncode == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert platform.count("s3:PUT") == 0 and platform.count("SageMaker.CreateTrainingJob") == 0


def test_fallback_after_a_create_refused_for_capacity_uploads_once(
    run_cli, project, platform, aiops_home
) -> None:
    _outputs(aiops_home)
    platform.inject("SageMaker.CreateTrainingJob", "quota")  # ml.g5.2xlarge: ResourceLimitExceeded
    result = _train(
        run_cli,
        project,
        "--instance-type",
        "ml.g5.2xlarge,ml.g5.4xlarge,ml.g5.xlarge",
        "--job-name",
        "fit",
    )
    assert result.returncode == 0, result.output
    assert platform.attempts["SageMaker.CreateTrainingJob"] == 2
    (request,) = platform.create_requests  # the refused create never reached moto
    assert request["TrainingJobName"] == "fit-try2"
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.4xlarge"
    assert json.loads(result.stdout)["job_name"] == "fit-try2"
    # the code and the data were looked up and sent once: as many HEADs as one plain submission asks
    heads, puts = platform.attempts["s3:HEAD"], platform.count("s3:PUT")
    single = _train(run_cli, project, "--instance-type", "ml.g5.4xlarge", "--job-name", "again")
    assert single.returncode == 0 and platform.count("s3:PUT") == puts  # already there: nothing sent
    assert platform.attempts["s3:HEAD"] == 2 * heads
    # the estimate before each attempt, one summary table at the end
    assert result.stderr.count("estimate: up to") == 2
    table = result.stderr[result.stderr.index("attempts") :]
    assert (
        "fit " in table and "ResourceLimitExceeded" in table and "fit-try2" in table and "Completed" in table
    )
    refused = json.loads(run_cli("jobs", "describe", "fit", "--json").stdout)
    assert refused["status"] == "NotCreated" and "service quota" in refused["failure_reason"]


def test_every_type_refused_ends_with_the_table_and_one_error(run_cli, project, platform, aiops_home) -> None:
    _outputs(aiops_home)
    platform.inject("SageMaker.CreateTrainingJob", "quota", times=5)
    result = _train(
        run_cli,
        project,
        "--instance-type",
        "ml.g5.2xlarge,ml.g6.2xlarge,ml.g5.4xlarge",
        "--max-attempts",
        "2",
        "--no-wait",
    )
    assert result.returncode == 1, result.output
    assert platform.attempts["SageMaker.CreateTrainingJob"] == 2 and not platform.create_requests
    assert result.stderr.count("ResourceLimitExceeded") >= 2 and "Service Quotas" in result.stderr, (
        result.stderr
    )


# --------------------------------------------------------------------------------------------
# aiops jobs connect


def _fake_tools(tmp_path: Path, *, plugin: bool) -> tuple[Path, Path]:
    """An `aws` that records its argv (and a Session Manager plugin, when asked), first on PATH."""
    bin_dir, argv_file = tmp_path / "bin", tmp_path / "aws-argv.json"
    bin_dir.mkdir(exist_ok=True)
    aws = bin_dir / "aws"
    aws.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {argv_file}\n")
    aws.chmod(0o755)
    if plugin:
        (bin_dir / "session-manager-plugin").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "session-manager-plugin").chmod(0o755)
    return bin_dir, argv_file


def _debug_job(run_cli, project, platform, aiops_home, *extra: str) -> str:
    _outputs(aiops_home, remoteDebug=True)
    result = _train(run_cli, project, "--no-wait", "--instance-count", "2", *extra)
    assert result.returncode == 0, result.output
    return json.loads(result.stdout)["job_name"]


def test_connect_runs_the_session_managers_command_for_the_host(
    run_cli, project, platform, aiops_home, tmp_path
) -> None:
    job = _debug_job(run_cli, project, platform, aiops_home, "--remote-debug")
    bin_dir, argv_file = _fake_tools(tmp_path, plugin=True)
    path = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    platform.in_progress_polls = 1
    connected = run_cli("jobs", "connect", job, "--host", "algo-2", env=path)
    assert connected.returncode == 0, connected.output
    assert argv_file.read_text().split() == [
        "ssm",
        "start-session",
        "--target",
        f"sagemaker-training-job:{job}_algo-2",
        "--region",
        REGION,
    ]
    # no such host, a job that is not running: one line, exit 2, no session
    argv_file.unlink()
    for args, expected in (
        (["--host", "algo-3"], "--host algo-3: " + f"{job} has 2 host(s): algo-1, algo-2."),
        ([], f"{job} is Completed, not running"),
    ):
        refused = run_cli("jobs", "connect", job, *args, env=path)
        assert refused.returncode == 2 and expected in refused.stderr, refused.output
        assert len(refused.stderr.strip().splitlines()) == 1 and not argv_file.exists()


def test_connect_without_the_plugin_prints_the_command_and_how_to_install_it(
    run_cli, project, platform, aiops_home, tmp_path
) -> None:
    job = _debug_job(run_cli, project, platform, aiops_home, "--remote-debug")
    bin_dir, argv_file = _fake_tools(tmp_path, plugin=False)
    platform.in_progress_polls = 1
    result = run_cli("jobs", "connect", job, env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"})
    assert result.returncode == 1, result.output
    command = f"aws ssm start-session --target sagemaker-training-job:{job}_algo-1 --region {REGION}"
    assert command in result.stderr and "session-manager-plugin not found" in result.stderr
    assert "session-manager-working-with-install-plugin" in result.stderr and not argv_file.exists()


def test_connect_to_a_job_without_remote_debug_is_refused(run_cli, project, platform, aiops_home) -> None:
    job = _debug_job(run_cli, project, platform, aiops_home)
    before = platform.attempts.get("SageMaker.DescribeTrainingJob", 0)
    result = run_cli("jobs", "connect", job)
    assert result.returncode == 2 and f"{job} was not started with --remote-debug" in result.stderr
    assert platform.attempts.get("SageMaker.DescribeTrainingJob", 0) == before  # refused before asking AWS


def test_instance_type_auto_takes_the_gpu_fit_checks_cheapest_types(
    run_cli, project, platform, aiops_home
) -> None:
    from aiops.gpufit import fitting_training_types

    _outputs(aiops_home)
    expected = [s.instance_type for s in fitting_training_types(1e9, region=REGION)]
    assert len(expected) == 3
    result = _train(run_cli, project, "--instance-type", "auto", "--model-params", "1e9", "--no-wait")
    assert result.returncode == 0, result.output
    listed = next(line for line in result.stderr.splitlines() if line.startswith("instance types that fit"))
    assert [part.split(" (")[0] for part in listed.split(": ", 1)[1].split(", ")] == expected
    assert result.stderr.index("instance types that fit") < result.stderr.index("estimate:"), result.stderr
    (request,) = platform.create_requests
    assert request["ResourceConfig"]["InstanceType"] == expected[0]


def test_capacity_failures_and_attempt_names() -> None:
    from aiops.training.capacity import attempt_name, is_capacity_failure

    from aiops.runs import validate_job_name

    assert is_capacity_failure(
        "CapacityError: Unable to provision requested ML compute capacity. Please retry using a different ML "
        "instance type."
    )
    assert is_capacity_failure("InsufficientInstanceCapacity: We currently do not have sufficient capacity")
    assert not is_capacity_failure("AlgorithmError: ExecuteUserScriptError: ExitCode 1")
    assert not is_capacity_failure(None)
    name = "train-" + "x" * 57
    assert attempt_name(name, 1) == name
    long = attempt_name(name, 12)
    assert len(long) == 63 and long.endswith("-try12")
    validate_job_name(long)


def test_the_budget_counts_the_warm_pools_idle_time(run_cli, project, platform, aiops_home) -> None:
    _outputs(aiops_home)
    hourly = prices.hourly("ml.g5.2xlarge", spot=False)
    run = idle = round(hourly, 2)  # 1 h at most, kept 1 h: each rounded to cents, as estimated
    budget = f"{run + idle / 2:.2f}"  # above the run alone, below the run and its pool
    args = ("--instance-type", "ml.g5.2xlarge", "--max-run", "3600", "--max-cost", budget, "--no-wait")
    refused = _train(run_cli, project, *args, "--keep-alive", "1h")
    assert refused.returncode == 2 and f"may cost up to ${run + idle:,.2f}" in refused.stderr, refused.output
    assert platform.count("s3:PUT") == 0
    assert _train(run_cli, project, *args, "--keep-alive", "0").returncode == 0
    assert platform.create_requests[-1]["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 0


@pytest.mark.parametrize(
    "reason",
    [
        "CapacityError: Unable to provision requested ML compute capacity. Please retry using a different ML "
        "instance type.",
        "InsufficientInstanceCapacity: We currently do not have sufficient ml.g5.2xlarge capacity",
    ],
    ids=["on-demand", "spot"],
)
def test_a_job_failed_for_capacity_moves_to_the_next_type_once_it_has_ended(
    run_cli, project, platform, aiops_home, reason
) -> None:
    _outputs(aiops_home)
    platform.failing_types["ml.g5.2xlarge"] = reason
    result = _train(run_cli, project, "--instance-type", "ml.g5.2xlarge,ml.g5.4xlarge", "--job-name", "cap")
    assert result.returncode == 0, result.output
    assert [r["TrainingJobName"] for r in platform.create_requests] == ["cap", "cap-try2"]
    # the second job was created only after the first was seen Failed: never two at once
    assert platform.events.index("described cap Failed") < platform.events.index("created cap-try2")
    first, second = platform.create_requests
    assert (
        first["HyperParameters"]["sagemaker_submit_directory"]
        == second["HyperParameters"]["sagemaker_submit_directory"]
    )
    assert json.loads(result.stdout)["status"] == "Completed"
    code = reason.split(":", 1)[0]
    table = result.stderr[result.stderr.index("attempts") :]
    assert f"Failed ({code})" in table and "Completed" in table


def test_a_job_failed_for_another_reason_ends_the_launch(run_cli, project, platform, aiops_home) -> None:
    _outputs(aiops_home)
    platform.failing_types["ml.g5.2xlarge"] = "AlgorithmError: ExecuteUserScriptError: ExitCode 1"
    result = _train(run_cli, project, "--instance-type", "ml.g5.2xlarge,ml.g5.4xlarge", "--job-name", "bug")
    assert result.returncode == 1, result.output
    assert [r["TrainingJobName"] for r in platform.create_requests] == ["bug"]


def test_describe_and_list_show_a_kept_warm_pool(run_cli, project, platform, aiops_home) -> None:
    _outputs(aiops_home)
    kept = _train(run_cli, project, "--keep-alive", "10m", "--job-name", "kept")
    plain = _train(run_cli, project, "--job-name", "plain")
    assert kept.returncode == 0 and plain.returncode == 0, kept.output + plain.output
    described = run_cli("jobs", "describe", "kept")
    assert "warm pool" in described.stdout and "Available, 42s retained (billable)" in described.stdout
    listed = run_cli("jobs", "list")
    header = next(line for line in listed.stdout.splitlines() if "status" in line)
    assert [c.strip() for c in header.split("┃")[1:4]] == ["job", "status", "pool"], listed.stdout
    cells = [[c.strip() for c in line.split("│")[1:4]] for line in listed.stdout.splitlines()[3:-1]]
    rows = {job: pool for job, _, pool in cells if job}  # a row's first line (a long cell wraps)
    assert rows == {"plain": "", "kept": "Available"}, listed.stdout
    as_json = {
        r["job_name"]: r.get("warm_pool_status") for r in json.loads(run_cli("jobs", "list", "--json").stdout)
    }
    assert as_json == {"kept": "Available", "plain": None}
