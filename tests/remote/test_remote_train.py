"""`aiops train --remote` against a real moto server, over real HTTP, with the platform proxy."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import prices
import pytest
from aiops.training.remote_request import client_token

from aiops.stack import CLIENT_TOKEN_TAG, LAYOUT

BUCKET = "aiops-artifacts-test"  # created by the platform fixture
ACCOUNT_ROLE = "arn:aws:iam::123456789012:role/aiops-sagemaker-execution"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-gpu-py311"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    (src / "lib").mkdir(parents=True)
    (src / "train.py").write_text("print('epoch=0; loss=1.0;')\n")
    (src / "lib" / "model.py").write_text("LAYERS = 2\n")
    (src / "notes.log").write_text("ignored by .gitignore\n")
    (src / "big.ckpt").write_text("ignored by .aiopsignore\n")
    (src / ".gitignore").write_text("*.log\n")
    (src / ".aiopsignore").write_text("*.ckpt\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"\0")
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (data / "part-0.csv").write_text("1,2\n3,4\n")
    return src


def _submit(run_cli, project: Path, tmp_path: Path, *extra: str):
    return run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--instance-type",
        "ml.g5.xlarge",
        "--hp",
        "epochs=3",
        "--hp",
        "lr=0.01",
        "--channel",
        f"train={tmp_path / 'data' / 'train'}",
        "--channel",
        f"test=s3://{BUCKET}/datasets/test/",
        "--metric",
        "loss=loss=([0-9.]+);",
        "--json",
        *extra,
    )


def _bundle_names(platform, uri: str) -> list[str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    body = platform.boto("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return tar.getnames()


def test_remote_job_request_bundle_logs_and_artifacts(
    fresh_cli, project: Path, tmp_path: Path, platform
) -> None:
    result = _submit(fresh_cli, project, tmp_path, "--download")
    assert result.returncode == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "Completed"
    assert summary["billable_seconds"] == 180 and summary["spot_saving_percent"] == 70.0
    # every host's CloudWatch stream, streamed live over HTTP
    assert "[algo-1] epoch=1; loss=0.4;" in result.stderr
    assert platform.count("SageMaker.CreateTrainingJob") == 1

    (request,) = platform.create_requests
    job = request["TrainingJobName"]
    assert job == summary["job_name"] and job.startswith("train-")
    hps = request["HyperParameters"]
    code_uri = json.loads(hps["sagemaker_submit_directory"])
    assert code_uri == f"s3://{BUCKET}/" + LAYOUT.bundle_key(code_uri.split("/")[-2]) and code_uri.endswith(
        "/sourcedir.tar.gz"
    )
    assert hps == {
        "epochs": "3",
        "lr": "0.01",
        "sagemaker_program": '"train.py"',
        "sagemaker_region": '"us-east-1"',
        "sagemaker_submit_directory": json.dumps(code_uri),
        "sagemaker_container_log_level": "20",
        "sagemaker_job_name": json.dumps(job),
    }
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": IMAGE,
        "TrainingInputMode": "File",
        "MetricDefinitions": [{"Name": "loss", "Regex": "loss=([0-9.]+);"}],
        "EnableSageMakerMetricsTimeSeries": True,
    }
    assert request["RoleArn"] == ACCOUNT_ROLE
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in request["InputDataConfig"]}
    assert channels["test"]["S3Uri"] == f"s3://{BUCKET}/datasets/test/"  # S3 channels pass through
    assert channels["train"]["S3Uri"].startswith(f"s3://{BUCKET}/{LAYOUT.data}")
    assert all(
        c["S3DataType"] == "S3Prefix" and c["S3DataDistributionType"] == "FullyReplicated"
        for c in channels.values()
    )
    assert request["OutputDataConfig"] == {"S3OutputPath": LAYOUT.job_output_uri(BUCKET)}
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.g5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
    }
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 172800}
    assert request["CheckpointConfig"] == {
        "S3Uri": LAYOUT.checkpoint_uri(BUCKET, job),
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["Environment"] == {"AIOPS_CHECKPOINT_DIR": "/opt/ml/checkpoints"}
    assert {"Key": "managed-by", "Value": "aiops"} in request["Tags"]
    assert {"Key": CLIENT_TOKEN_TAG, "Value": client_token(request)} in request["Tags"]
    assert "VpcConfig" not in request and "EnableNetworkIsolation" not in request
    assert "VpcConfig" not in request and "EnableInterContainerTrafficEncryption" not in request

    # the bundle holds exactly the code: no ignored, cached or VCS files
    assert _bundle_names(platform, code_uri) == [".aiopsignore", ".gitignore", "lib/model.py", "train.py"]
    uploaded = platform.boto("s3").list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.data)["Contents"]
    assert sorted(
        o["Key"].split("/", 3)[-1] for o in uploaded if not o["Key"].endswith(".manifest.json")
    ) == ["part-0.csv"]
    downloaded = Path(summary["artifacts"]["model"])
    with tarfile.open(downloaded) as tar:
        assert tar.getnames() == ["model.pth"]


def test_second_submission_uploads_nothing(
    run_cli, project: Path, tmp_path: Path, platform, aiops_home
) -> None:
    first = _submit(run_cli, project, tmp_path, "--no-wait")
    assert first.returncode == 0, first.output
    puts_after_first = platform.count("s3:PUT")
    second = _submit(run_cli, project, tmp_path, "--no-wait")
    assert second.returncode == 0, second.output
    assert platform.count("s3:PUT") == puts_after_first
    record = json.loads(
        (aiops_home / "runs" / json.loads(second.stdout)["job_name"] / "run.json").read_text()
    )
    assert record["uploaded_bytes"] == 0
    assert platform.count("SageMaker.CreateTrainingJob") == 2
    listed = run_cli("jobs", "list", "--json")
    assert len(json.loads(listed.stdout)) == 2


def test_throttled_create_is_retried_once_created(run_cli, project: Path, tmp_path: Path, platform) -> None:
    platform.inject("SageMaker.CreateTrainingJob", "throttle", times=2)
    result = _submit(run_cli, project, tmp_path, "--no-wait")
    assert result.returncode == 0, result.output
    assert platform.attempts["SageMaker.CreateTrainingJob"] == 3
    assert platform.count("SageMaker.CreateTrainingJob") == 1


def test_create_that_succeeded_but_answered_500_is_not_repeated(
    run_cli, project: Path, tmp_path: Path, platform, aiops_home
) -> None:
    platform.inject("SageMaker.CreateTrainingJob", "forward-then-500", times=1)
    result = _submit(run_cli, project, tmp_path, "--no-wait")
    assert result.returncode == 0, result.output
    assert platform.attempts["SageMaker.CreateTrainingJob"] == 1  # looked (describe) before any retry
    assert platform.count("SageMaker.CreateTrainingJob") == 1
    record = json.loads(
        (aiops_home / "runs" / json.loads(result.stdout)["job_name"] / "run.json").read_text()
    )
    assert record["create_outcome"] == "found"


def test_s3_5xx_is_retried_by_botocore(run_cli, project: Path, tmp_path: Path, platform) -> None:
    platform.inject("s3:PUT", "500", times=2)
    result = _submit(run_cli, project, tmp_path, "--no-wait")
    assert result.returncode == 0, result.output
    assert platform.attempts["s3:PUT"] == platform.count("s3:PUT") + 2


def test_access_denied_names_the_permission(run_cli, project: Path, tmp_path: Path, platform) -> None:
    platform.inject("SageMaker.CreateTrainingJob", "access-denied", times=1)
    result = _submit(run_cli, project, tmp_path, "--no-wait")
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]  # after the estimate
    assert "lacks sagemaker:CreateTrainingJob" in line and "Traceback" not in result.stderr


def test_missing_credentials_is_one_line(fresh_cli, project: Path, tmp_path: Path, platform) -> None:
    result = fresh_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_EC2_METADATA_DISABLED": "true"},
    )
    assert result.returncode == 2, result.output
    assert "no AWS credentials" in result.stderr and "Traceback" not in result.output


def test_multi_node_request(run_cli, project: Path, tmp_path: Path, platform) -> None:
    # ml.g5.12xlarge: 4 GPUs per host, so 4 processes (one ml.g5.xlarge GPU cannot take 4 NCCL ranks)
    result = _submit(
        run_cli,
        project,
        tmp_path,
        "--no-wait",
        "--instance-count",
        "2",
        "--on-demand",
        "--nproc",
        "4",
        "--max-run",
        "3600",
        "--instance-type",
        "ml.g5.12xlarge",
    )
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["EnableManagedSpotTraining"] is False
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    assert request["EnableInterContainerTrafficEncryption"] is True
    assert request["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert request["HyperParameters"]["sagemaker_mpi_num_of_processes_per_host"] == "4"


def test_jobs_describe_logs_and_stop_cover_remote_jobs(
    run_cli, project: Path, tmp_path: Path, platform
) -> None:
    job = json.loads(_submit(run_cli, project, tmp_path, "--no-wait").stdout)["job_name"]
    described = json.loads(run_cli("jobs", "describe", job, "--json").stdout)
    assert described["status"] == "Completed" and described["remote"] is True
    assert described["artifacts"]["model_s3"] == LAYOUT.uri(BUCKET, LAYOUT.job_output_key(job))
    logs = run_cli("jobs", "logs", job)
    assert logs.returncode == 0 and "test_accuracy=0.98;" in logs.stdout
    stopped = run_cli("jobs", "stop", job)
    assert stopped.returncode == 0, stopped.output
    assert platform.count("SageMaker.StopTrainingJob") == 1


BAD = [
    (["--instance-type", "ml.g5.huge"], "not a SageMaker training instance type"),
    (["--max-run", "3600", "--max-wait", "60"], "shorter than --max-run"),
    (["--channel", "extra=ftp://host/data"], "neither a local path nor an s3:// URI"),
    (["--channel", "extra=./not/here"], "neither an existing local path nor an s3:// URI"),
    (["--on-demand", "--max-wait", "7200"], "only applies to spot"),
    (["--env", "SM_MODEL_DIR=/x"], "SM_* and SAGEMAKER_* variables belong to the SageMaker container"),
    (["--env", "HF_TOKEN=hf_abc"], "--env HF_TOKEN looks like a secret"),
    (["--hp", "wandb_api_key=abc"], "pass --secret wandb_api_key=arn:aws:secretsmanager:"),
    (["--channel", "model=project"], "channel 'model' ("),
]


@pytest.mark.parametrize("extra, expected", BAD, ids=[b[1] for b in BAD])
def test_bad_remote_input_uploads_nothing(
    run_cli, project: Path, tmp_path: Path, platform, extra, expected
) -> None:
    result = run_cli("train", "train.py", "--source-dir", str(project), "--remote", "--no-wait", *extra)
    assert result.returncode == 2, result.output
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert platform.count("s3:PUT") == 0 and platform.count("SageMaker.CreateTrainingJob") == 0


def test_env_lands_in_the_request_environment_and_the_record(
    run_cli, project: Path, tmp_path: Path, platform, aiops_home: Path
) -> None:
    result = _submit(
        run_cli, project, tmp_path, "--no-wait", "--env", "HF_HUB_OFFLINE=1", "--env", "WANDB_MODE=offline"
    )
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    assert request["Environment"] == {
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "AIOPS_CHECKPOINT_DIR": "/opt/ml/checkpoints",
    }
    record = json.loads((aiops_home / "runs" / request["TrainingJobName"] / "run.json").read_text())
    assert record["config"]["environment"] == {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def test_no_role_anywhere(run_cli, project: Path, platform) -> None:
    result = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        env={"AIOPS_AWS__ROLE_ARN": ""},
    )
    assert result.returncode == 2 and "no SageMaker execution role" in result.stderr
    assert platform.count("s3:PUT") == 0


def test_wait_shows_transitions_and_warns_on_silence(
    run_cli, project: Path, tmp_path: Path, platform
) -> None:
    platform.in_progress_polls = 4
    platform.log_lines = []  # a job that prints nothing
    result = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        env={"AIOPS_AWS__JOB_POLL_SECONDS": "0.2", "AIOPS_AWS__LOG_SILENCE_WARNING_SECONDS": "0.3"},
    )
    assert result.returncode == 0, result.output
    out = result.stdout
    assert out.index("status InProgress / Training") < out.index("status Completed / Completed")
    assert "no log output for" in out and "still waiting" in out


def test_ctrl_c_while_waiting_detaches_without_a_tty(
    project: Path, tmp_path: Path, platform, aiops_home
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from helpers import wait_until

    platform.in_progress_polls = 10_000
    # Ctrl-C as a shell delivers it: SIGINT neither ignored nor blocked, whatever this test process
    # (a pytest-xdist worker) passes on to its children
    start = (
        "import signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
        "signal.signal(signal.SIGINT, signal.default_int_handler); from aiops.cli.app import main; "
        f"sys.exit(main(['train', 'train.py', '--source-dir', {str(project)!r}, '--remote']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", start],
        env={**os.environ, "AIOPS_HOME": str(aiops_home), "AIOPS_AWS__JOB_POLL_SECONDS": "0.2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    wait_until(
        lambda: platform.attempts.get("SageMaker.DescribeTrainingJob", 0) >= 2, "the job being followed"
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "detached" in out and "aiops jobs stop" in out
    assert platform.count("SageMaker.StopTrainingJob") == 0  # no TTY to ask: never stop without asking


def test_second_submission_does_not_import_the_sagemaker_sdk(
    run_cli, project: Path, tmp_path: Path, platform
) -> None:
    import subprocess
    import sys

    assert _submit(run_cli, project, tmp_path, "--no-wait").returncode == 0  # resolves and caches the image
    probe = (
        "import sys; from aiops.cli.app import main; "
        f"code = main(['train', 'train.py', '--source-dir', {str(project)!r}, '--remote', '--no-wait', "
        "'--json']); "
        "print('SDK-IMPORTED' if any(m.startswith('sagemaker.core') for m in sys.modules) "
        "else 'SDK-NOT-IMPORTED', code)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "SDK-NOT-IMPORTED 0", out.stdout + out.stderr


def test_remote_metrics_from_cloudwatch_and_plot(run_cli, project: Path, tmp_path: Path, platform) -> None:
    import matplotlib.image

    platform.log_lines = [f"epoch={i}; loss={1.0 / (i + 1):.4f};" for i in range(4)]
    job = json.loads(_submit(run_cli, project, tmp_path, "--no-wait").stdout)["job_name"]
    png = tmp_path / "curves.png"
    result = run_cli("jobs", "metrics", job, "--plot", str(png), "--json")
    assert result.returncode == 0, result.output
    series = json.loads(result.stdout)["series"]
    assert [round(v, 4) for _, v in series["loss"]] == [1.0, 0.5, 0.3333, 0.25]
    assert [t for t, _ in series["loss"]] == [0.0, 60.0, 120.0, 180.0]
    assert matplotlib.image.imread(str(png)).shape[2] in (3, 4)  # a real, decodable PNG


def test_defaults_come_from_the_deployed_stack_outputs(
    run_cli, project: Path, tmp_path: Path, platform, aiops_home: Path
) -> None:
    from aiops.stack import write_outputs as write_stack_outputs

    kms = platform.boto("kms").create_key()["KeyMetadata"]["Arn"]
    role = "arn:aws:iam::123456789012:role/from-the-stack"
    write_stack_outputs(
        aiops_home, "dev", {"region": "us-east-1", "bucket": BUCKET, "roleArn": role, "kmsKeyArn": kms}
    )
    result = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        "--json",
        env={"AIOPS_AWS__ROLE_ARN": "", "AIOPS_AWS__BUCKET": ""},
    )
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    assert request["RoleArn"] == role
    assert (
        request["OutputDataConfig"]["KmsKeyId"] == kms and request["ResourceConfig"]["VolumeKmsKeyId"] == kms
    )
    code = json.loads(request["HyperParameters"]["sagemaker_submit_directory"])
    head = platform.boto("s3").head_object(Bucket=BUCKET, Key=code.split(f"{BUCKET}/", 1)[1])
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms


def test_estimate_is_shown_before_launch(run_cli, project: Path, tmp_path: Path, platform) -> None:
    result = _submit(run_cli, project, tmp_path, "--no-wait", "--max-run", "7200", "--instance-count", "2")
    assert result.returncode == 0, result.output
    # 2 x ml.g5.xlarge x 2 h, on-demand and spot, at the shipped table's prices
    on_demand, spot = (2 * 2 * prices.hourly("ml.g5.xlarge", spot=s) for s in (False, True))
    assert (
        f"estimate: up to ${spot:.2f} (spot; on-demand ${on_demand:.2f}, spot ${spot:.2f})" in result.stderr
    )


def test_budget_guard_refuses_and_yes_overrides(run_cli, project: Path, tmp_path: Path, platform) -> None:
    # 1 x ml.g5.xlarge x 2 h: a budget between the spot and the on-demand cost (the shipped prices)
    on_demand, spot = (2 * prices.hourly("ml.g5.xlarge", spot=s) for s in (False, True))
    budget = f"{(on_demand + spot) / 2:.2f}"
    over = _submit(
        run_cli, project, tmp_path, "--no-wait", "--on-demand", "--max-run", "7200", "--max-cost", budget
    )
    assert over.returncode == 2
    assert f"may cost up to ${on_demand:.2f}, over the budget of ${budget}" in over.stderr
    assert platform.count("s3:PUT") == 0 and platform.count("SageMaker.CreateTrainingJob") == 0
    within = _submit(
        run_cli, project, tmp_path, "--no-wait", "--max-run", "7200", "--max-cost", budget
    )  # spot
    assert within.returncode == 0, within.output
    forced = _submit(
        run_cli,
        project,
        tmp_path,
        "--no-wait",
        "--on-demand",
        "--max-run",
        "7200",
        "--max-cost",
        budget,
        "--yes",
    )
    assert forced.returncode == 0, forced.output
    assert platform.count("SageMaker.CreateTrainingJob") == 2


def test_budget_from_settings_and_unknown_prices(run_cli, project: Path, tmp_path: Path, platform) -> None:
    refused = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        "--instance-type",
        "ml.trn1.2xlarge",
        env={"AIOPS_AWS__MAX_COST": "10"},
    )
    assert refused.returncode == 2
    assert "no known price for ml.trn1.2xlarge" in refused.stderr and "--yes" in refused.stderr
    no_budget = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        "--instance-type",
        "ml.trn1.2xlarge",
        "--image-uri",
        "123.dkr.ecr.us-east-1.amazonaws.com/neuron:1",
    )
    assert no_budget.returncode == 0, no_budget.output
    assert "warning: no known price for ml.trn1.2xlarge" in no_budget.stdout
    bad = run_cli("train", "train.py", "--source-dir", str(project), "--remote", "--max-cost", "-5")
    assert bad.returncode == 2 and "positive number" in bad.stderr


@pytest.mark.parametrize(
    "mode, code, expected",
    [
        ("quota", 1, "'ml.g5.xlarge for spot training job usage'"),
        ("expired", 2, "credentials have expired"),
    ],
)
def test_quota_and_expired_credentials_are_one_line(
    run_cli, project: Path, tmp_path: Path, platform, mode: str, code: int, expected: str
) -> None:
    platform.inject("SageMaker.CreateTrainingJob", mode)
    result = _submit(run_cli, project, tmp_path, "--no-wait")
    assert result.returncode == code, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert expected in line and "Traceback" not in result.stderr
    if mode == "quota":
        assert "Service Quotas" in line
    assert platform.count("SageMaker.CreateTrainingJob") == 0


def test_invoke_a_deployed_endpoint_through_sagemaker_runtime(run_cli, platform) -> None:
    # moto's runtime answers every InvokeEndpoint with a placeholder body: this checks the wiring
    # (boto3 sagemaker-runtime over real HTTP, standard retries, output and latency printed).
    result = run_cli("invoke", "--endpoint", "digits-endpoint", "--data", "[[0.5, 0.25]]")
    assert result.returncode == 0, result.output
    assert "ms" in result.output and result.stdout.strip()
    assert platform.attempts.get("s3:POST", 0) >= 1  # the request went over HTTP to the stand-in


def test_invoke_endpoint_errors_are_one_line(run_cli, platform) -> None:
    result = run_cli(
        "invoke",
        "--endpoint",
        "digits-endpoint",
        "--data",
        "[1]",
        env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_EC2_METADATA_DISABLED": "true"},
    )
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "invoking endpoint digits-endpoint: no AWS credentials found" in line


SECRET_VALUE = "hf_not-for-anyones-eyes-123"


def _secret(platform) -> str:
    manager = platform.boto("secretsmanager")
    return manager.create_secret(Name="aiops/hf-token", SecretString=SECRET_VALUE)["ARN"]


def test_secret_reaches_the_job_as_its_arn_only(
    run_cli, project: Path, tmp_path: Path, platform, aiops_home: Path
) -> None:
    from aiops.stack import write_outputs as write_stack_outputs

    arn = _secret(platform)
    role = "arn:aws:iam::123456789012:role/from-the-stack"
    write_stack_outputs(
        aiops_home,
        "dev",
        {"region": "us-east-1", "bucket": BUCKET, "roleArn": role, "trainingSecretArns": [arn]},
    )
    result = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        "--json",
        "--secret",
        f"HF_TOKEN={arn}",
        env={"AIOPS_AWS__ROLE_ARN": "", "HF_TOKEN": SECRET_VALUE},
    )
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    assert request["Environment"] == {
        "AIOPS_SECRET_ARN_HF_TOKEN": arn,
        "AIOPS_CHECKPOINT_DIR": "/opt/ml/checkpoints",
    }
    described = platform.boto("sagemaker").describe_training_job(TrainingJobName=request["TrainingJobName"])
    run_folder = aiops_home / "runs" / request["TrainingJobName"]
    record = json.loads((run_folder / "run.json").read_text())
    assert record["config"]["secrets"] == {"HF_TOKEN": arn}
    code = json.loads(request["HyperParameters"]["sagemaker_submit_directory"])
    bundle = platform.boto("s3").get_object(Bucket=BUCKET, Key=code.split(f"{BUCKET}/", 1)[1])["Body"].read()
    # the value is nowhere: not in the request, the description, the record, the bundle or the output
    for place in (json.dumps(request), json.dumps(described, default=str), result.output, bundle):
        assert SECRET_VALUE not in (place if isinstance(place, str) else place.decode("latin1"))
    assert not any(SECRET_VALUE.encode() in p.read_bytes() for p in run_folder.rglob("*") if p.is_file())


def test_secret_the_stacks_role_may_not_read_is_refused_before_upload(
    run_cli, project: Path, platform, aiops_home: Path
) -> None:
    from aiops.stack import write_outputs as write_stack_outputs

    arn = _secret(platform)
    write_stack_outputs(
        aiops_home,
        "dev",
        {"region": "us-east-1", "bucket": BUCKET, "roleArn": "arn:aws:iam::123456789012:role/from-the-stack"},
    )
    result = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(project),
        "--remote",
        "--no-wait",
        "--secret",
        f"HF_TOKEN={arn}",
        env={"AIOPS_AWS__ROLE_ARN": ""},
    )
    assert result.returncode == 2, result.output
    assert result.stderr.startswith(
        f"error: --secret HF_TOKEN: the role of stack 'dev' may not read {arn}; "
        "add the ARN to access.trainingSecrets in Pulumi.dev.yaml"
    )
    assert platform.count("s3:PUT") == 0 and platform.count("SageMaker.CreateTrainingJob") == 0


def test_a_local_run_reads_the_secret_from_secrets_manager_or_the_environment(
    fresh_cli, tmp_path: Path, platform
) -> None:
    """The example's read path: NAME from the environment when set, else Secrets Manager at the ARN."""
    arn = _secret(platform)
    script = tmp_path / "uses_secret.py"
    example_dir = Path(__file__).resolve().parents[2] / "training" / "examples" / "finetune"
    script.write_text(
        "import hashlib, os, sys\n"
        f"sys.path.insert(0, {str(example_dir)!r})\n"
        "from finetune_secrets import export_secrets\n"
        "print('read', export_secrets(), hashlib.sha256(os.environ['HF_TOKEN'].encode()).hexdigest()[:12])\n"
    )
    digest = __import__("hashlib").sha256(SECRET_VALUE.encode()).hexdigest()[:12]
    from_manager = fresh_cli("train", str(script), "--secret", f"HF_TOKEN={arn}", env={"HF_TOKEN": ""})
    assert from_manager.returncode == 0, from_manager.output
    assert f"read ['HF_TOKEN'] {digest}" in from_manager.stdout and SECRET_VALUE not in from_manager.output
    assert "not set in your environment, so the script reads it from Secrets Manager" in from_manager.output
    mine = fresh_cli("train", str(script), "--secret", f"HF_TOKEN={arn}", env={"HF_TOKEN": "mine"})
    assert mine.returncode == 0 and __import__("hashlib").sha256(b"mine").hexdigest()[:12] in mine.stdout
    missing = arn[:-6] + "Zz9Zz9"
    denied = fresh_cli(
        "train",
        "train.py",
        "--source-dir",
        str(example_dir),
        "--secret",
        f"HF_TOKEN={missing}",
        "--json",
        env={"HF_TOKEN": ""},
    )
    assert denied.returncode == 1, denied.output
    assert json.loads(denied.stdout)["failure_reason"].startswith(
        f"UsageError: secret HF_TOKEN: secretsmanager:GetSecretValue on {missing} failed "
        "(ResourceNotFoundException)"
    )
    assert "Traceback" not in denied.output
