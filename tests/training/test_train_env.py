"""`aiops train --env KEY=VALUE`: the script's environment, the run record, resume; and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SCRIPT = (
    "import os\n"
    "print('flag=' + os.environ.get('RUN_FLAG', '-') + ' mode=' + os.environ.get('HF_HUB_OFFLINE', '-'))\n"
)


def test_env_reaches_the_script_and_the_record_and_resume_keeps_it(
    run_cli, tmp_path: Path, aiops_home: Path
) -> None:
    script = tmp_path / "show_env.py"
    script.write_text(SCRIPT)
    first = run_cli(
        "train", str(script), "--env", "RUN_FLAG=a=b c", "--env", "HF_HUB_OFFLINE=1", "--job-name", "one"
    )
    assert first.returncode == 0, first.output
    assert "flag=a=b c mode=1" in first.stdout
    record = json.loads((aiops_home / "runs" / "one" / "run.json").read_text())
    assert record["config"]["environment"] == {"RUN_FLAG": "a=b c", "HF_HUB_OFFLINE": "1"}
    again = run_cli("train", "--resume", "one", "--env", "RUN_FLAG=changed", "--job-name", "two")
    assert again.returncode == 0, again.output
    assert "flag=changed mode=1" in again.stdout  # the recorded environment, with what was given on top


@pytest.mark.parametrize(
    "env, error",
    [
        (
            "SM_CHANNEL_TRAIN=/data",
            "--env SM_CHANNEL_TRAIN: SM_* and SAGEMAKER_* variables belong to the SageMaker container",
        ),
        ("SAGEMAKER_PROGRAM=x.py", "--env SAGEMAKER_PROGRAM: SM_* and SAGEMAKER_*"),
        ("MASTER_PORT=1234", "--env MASTER_PORT: the training container sets MASTER_PORT itself"),
        ("AIOPS_CHECKPOINT_DIR=/tmp/x", "--env AIOPS_CHECKPOINT_DIR: the training container sets"),
        ("2FAST=1", "--env 2FAST: an environment variable name is letters, digits and '_'"),
        ("HF_TOKEN=hf_x", "--env HF_TOKEN looks like a secret"),
        ("WANDB_API_KEY=x", "--env WANDB_API_KEY looks like a secret"),
        ("DB_PASSWORD=x", "--env DB_PASSWORD looks like a secret"),
        ("CLIENT_SECRET=x", "--env CLIENT_SECRET looks like a secret"),
        (
            f"LONG={'x' * 513}",
            "--env LONG: the value has 513 characters, more than the 512 SageMaker accepts",
        ),
        ("NOVALUE", "--env 'NOVALUE': expected KEY=VALUE"),
    ],
)
def test_bad_env_is_refused_before_anything_runs(
    cli_in_process, tmp_path: Path, aiops_home: Path, env: str, error: str
) -> None:
    script = tmp_path / "show_env.py"
    script.write_text(SCRIPT)
    result = cli_in_process("train", str(script), "--env", env)
    assert result.returncode == 2, result.output
    assert result.stderr.startswith(f"error: {error}") and len(result.stderr.strip().splitlines()) == 1
    if "secret" in error:
        assert "--secret" in result.stderr
    assert not (aiops_home / "runs").exists()


def test_env_names_that_only_contain_secret_words_as_parts_are_allowed(
    cli_in_process, tmp_path: Path
) -> None:
    script = tmp_path / "show_env.py"
    script.write_text(SCRIPT)
    result = cli_in_process(
        "train",
        str(script),
        "--env",
        "TOKENIZERS_PARALLELISM=false",
        "--env",
        "KEYBOARD_LAYOUT=us",
        "--hp",
        "max_tokens=5",
    )
    assert result.returncode == 0, result.output
