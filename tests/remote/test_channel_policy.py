"""Remote channels by the one file-selection policy (`aiops.files`): what a local run stages is what
`aiops train --remote` uploads; a link out of a channel is refused unless --follow-symlinks.
Real moto server behind the platform proxy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aiops.training import uploads

from aiops.errors import UsageError
from aiops.stack import LAYOUT

from .conftest import BUCKET


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "project"
    src.mkdir()
    (src / "train.py").write_text("print('epoch=0; loss=1.0;')\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "labels.csv").write_text("secret-ish,outside\n")
    channel = tmp_path / "data" / "train"
    (channel / "shards").mkdir(parents=True)
    (channel / "shards" / "part-0.csv").write_text("1,2\n")
    (channel / ".gitignore").write_text("*.csv\n")  # data, not code: ignore files do not apply
    os.symlink(channel / "shards", channel / "alias")  # a link inside the channel: followed
    return {"project": src, "channel": channel, "outside": outside}


def _train(run_cli, paths: dict[str, Path], *extra: str):
    return run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(paths["project"]),
        "--remote",
        "--instance-type",
        "ml.g5.xlarge",
        "--no-wait",
        "--json",
        "--channel",
        f"train={paths['channel']}",
        *extra,
    )


def _uploaded(platform) -> dict[str, bytes]:
    s3 = platform.boto("s3")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.data).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def test_channel_link_outside_is_refused_before_any_upload(run_cli, layout, platform) -> None:
    os.symlink(layout["outside"] / "labels.csv", layout["channel"] / "labels.csv")
    result = _train(run_cli, layout)
    assert result.returncode == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error:") and len(line.splitlines()) == 1
    assert "labels.csv is a symlink to" in line and "--follow-symlinks" in line and "channel 'train'" in line
    assert platform.count("s3:PUT") == 0 and platform.count("SageMaker.CreateTrainingJob") == 0
    # the uploader on its own refuses the same way (no caller can bypass the policy)
    with pytest.raises(UsageError, match=r"labels.csv is a symlink to .*outside the channel 'train'"):
        uploads.upload_channel(platform.boto("s3"), BUCKET, "train", layout["channel"])
    assert _uploaded(platform) == {}


def test_followed_link_ships_its_content_and_the_manifest_names_every_file(run_cli, layout, platform) -> None:
    os.symlink(layout["outside"] / "labels.csv", layout["channel"] / "labels.csv")
    result = _train(run_cli, layout, "--follow-symlinks")
    assert result.returncode == 0, result.output
    (request,) = platform.create_requests
    (channel,) = request["InputDataConfig"]
    prefix = channel["DataSource"]["S3DataSource"]["S3Uri"][len(f"s3://{BUCKET}/") :]
    objects = _uploaded(platform)
    data = {k[len(prefix) :]: v for k, v in objects.items() if k.startswith(prefix)}
    assert data == {
        ".gitignore": b"*.csv\n",
        "alias/part-0.csv": b"1,2\n",
        "labels.csv": b"secret-ish,outside\n",
        "shards/part-0.csv": b"1,2\n",
    }
    digest = prefix.rstrip("/").rsplit("/", 1)[-1]
    manifest = json.loads(objects[LAYOUT.channel_manifest_key(digest)])
    assert manifest["sha256"] == digest and sorted(manifest["files"]) == sorted(data)
    # the hash is the content's: the same files give the same prefix, and the upload is skipped
    assert manifest == uploads.channel_manifest(layout["channel"], follow_symlinks=True)
    again = uploads.upload_channel(
        platform.boto("s3"), BUCKET, "train", layout["channel"], follow_symlinks=True
    )
    assert again.uploaded_bytes == 0 and again.uri == f"s3://{BUCKET}/{prefix}"


def test_remote_channel_holds_what_a_local_run_stages(layout) -> None:
    from aiops import files

    local = files.select(layout["channel"], ignore_files=False, exclude_secrets=False)
    assert (
        sorted(uploads.channel_manifest(layout["channel"])["files"])
        == local.files
        == [".gitignore", "alias/part-0.csv", "shards/part-0.csv"]
    )
