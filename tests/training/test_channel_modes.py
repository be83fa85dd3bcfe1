"""Per-channel InputMode (File | FastFile | Pipe) and S3DataDistributionType (ShardedByS3Key)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiops.training import job_inputs
from aiops.training import remote_request as remote
from aiops.training.launch import Access, Compute

from aiops.errors import UsageError

CHANNELS = ["train", "test"]


def test_one_value_for_every_channel_or_per_channel_later_wins() -> None:
    parse = job_inputs.parse_channel_settings
    assert parse(["FastFile"], CHANNELS, "--input-mode", job_inputs.INPUT_MODES) == {
        "train": "FastFile",
        "test": "FastFile",
    }
    assert parse(["FastFile", "test=File"], CHANNELS, "--input-mode", job_inputs.INPUT_MODES) == {
        "train": "FastFile",
        "test": "File",
    }
    assert parse([], CHANNELS, "--input-mode", job_inputs.INPUT_MODES) == {}


@pytest.mark.parametrize(
    "value, message",
    [
        ("train=fastfile", "'fastfile' is not one of File, FastFile, Pipe"),
        ("valid=Pipe", "no channel named 'valid' .channels: train, test.; add it with --channel"),
    ],
)
def test_bad_settings_name_the_fix(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        job_inputs.parse_channel_settings([value], CHANNELS, "--input-mode", job_inputs.INPUT_MODES)


def test_the_request_carries_each_channels_mode_and_distribution() -> None:
    options = remote.RemoteOptions(
        compute=Compute(instance_type="ml.g5.xlarge", instance_count=2),
        access=Access(region="eu-west-1", role="arn:aws:iam::123456789012:role/r", bucket="b"),
    )
    request = remote.build_request(
        job_name="j",
        entry_point="train.py",
        hyperparameters={},
        channel_uris={"train": "s3://b/train/", "test": "s3://b/test/"},
        submit_directory="s3://b/code.tar.gz",
        image_uri="img",
        options=options,
        nproc=None,
        metric_definitions=[],
        input_modes={"train": "FastFile"},
        channel_sharding={"train": "ShardedByS3Key"},
    )
    by_name = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert by_name["train"]["InputMode"] == "FastFile"
    assert by_name["train"]["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert by_name["test"]["InputMode"] == "File"
    assert by_name["test"]["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated"


def test_a_local_run_records_the_modes_reads_as_file_and_says_so(
    run_cli, aiops_home: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("x")
    script = tmp_path / "show.py"
    script.write_text("import os\nprint(sorted(os.listdir(os.environ['SM_CHANNEL_TRAIN'])))\n")
    result = run_cli(
        "train",
        str(script),
        "--channel",
        f"train={data}",
        "--input-mode",
        "train=FastFile",
        "--channel-sharding",
        "ShardedByS3Key",
        "--job-name",
        "modes",
        "--json",
    )
    assert result.returncode == 0, result.output
    assert "--input-mode FastFile runs as File locally" in result.stderr
    assert "['a.txt']" in (aiops_home / "runs" / "modes" / "train.log").read_text()
    config = json.loads(
        (
            aiops_home / "runs" / "modes" / "opt" / "ml" / "input" / "config" / "inputdataconfig.json"
        ).read_text()
    )
    assert config["train"]["TrainingInputMode"] == "FastFile"
    assert config["train"]["S3DistributionType"] == "ShardedByS3Key"

    bad = run_cli("train", str(script), "--channel", f"train={data}", "--input-mode", "train=Stream")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.output
    assert "not one of File, FastFile, Pipe" in bad.stderr
