"""One file-selection policy for model folders (`aiops.files`, as for source bundles): a link out of
the folder is refused with one line by `aiops model package`, the GPU-fit check and `deploy
--model FOLDER`'s upload alike, except the Hugging Face cache layout; likely secrets are left out
(the widened list), and `.aiopsignore` takes one back."""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path

import pytest

from aiops import files, tensorstats
from aiops.errors import UsageError

SECRETS = [
    ".env",
    ".env.local",
    ".env.production",
    ".netrc",
    ".pypirc",
    ".npmrc",
    ".git-credentials",
    "server.key",
    "application_default_credentials.json",
    "credentials.json",
    "id_rsa",
    "cert.pem",
]


def _safetensors(path: Path, shape=(4, 2)) -> Path:
    size = 4 * shape[0] * shape[1]
    blob = json.dumps({"w": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, size]}})
    path.write_bytes(struct.pack("<Q", len(blob)) + blob.encode() + bytes(size))
    return path


def _model_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    _safetensors(root / "model.safetensors")
    (root / "config.json").write_text('{"num_hidden_layers": 2}')
    return root


def _members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_model_package_refuses_a_link_out_of_the_folder(run_cli, tmp_path):
    """`tokenizer.json` -> the user's AWS credentials: one line, exit 2, no archive written."""
    secret = tmp_path / "home" / ".aws" / "credentials"
    secret.parent.mkdir(parents=True)
    secret.write_text("[default]\naws_secret_access_key = hunter2\n")
    model = _model_folder(tmp_path / "model")
    (model / "tokenizer.json").symlink_to(secret)
    out = tmp_path / "model.tar.gz"
    result = run_cli("model", "package", str(model), "--out", str(out))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.output
    assert "tokenizer.json is a symlink to" in lines[0] and "outside the model folder" in lines[0]
    assert "--follow-symlinks" not in lines[0]  # model package has no such flag
    assert not out.exists()


def test_the_fit_check_reads_the_same_files_and_refuses_the_same_link(tmp_path):
    outside = _safetensors(tmp_path / "elsewhere.safetensors", shape=(1000, 1000))
    model = _model_folder(tmp_path / "model")
    assert tensorstats.model_stats(model).parameters == 8
    (model / "extra.safetensors").symlink_to(outside)
    with pytest.raises(UsageError, match="extra.safetensors is a symlink to .*outside the model folder"):
        tensorstats.model_stats(model)


def _hf_cache(root: Path) -> Path:
    """The Hugging Face hub cache layout: files in blobs/ by hash, snapshots/<rev>/ linking to them."""
    repo = root / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    _safetensors(repo / "blobs" / "5e1f")
    (repo / "blobs" / "c0f1").write_text('{"num_hidden_layers": 2}')
    (snapshot / "model.safetensors").symlink_to("../../blobs/5e1f")
    (snapshot / "config.json").symlink_to("../../blobs/c0f1")
    return snapshot


def test_a_hugging_face_cache_snapshot_is_packaged_as_regular_files(run_cli, tmp_path):
    snapshot = _hf_cache(tmp_path / "hub")
    out = tmp_path / "model.tar.gz"
    result = run_cli("model", "package", str(snapshot), "--out", str(out))
    assert result.returncode == 0, result.output
    members = _members(out)
    assert members["model.safetensors"].isfile() and members["config.json"].isfile()
    assert tensorstats.model_stats(snapshot).parameters == 8
    assert files.select_model_folder(snapshot.parent.parent).files  # the repo folder: blobs/ is inside


@pytest.mark.parametrize(
    "target", ["../../../../outside/credentials", "../../../models--other--repo/blobs/9a9a"]
)
def test_a_snapshot_link_out_of_its_own_blobs_is_refused(tmp_path, target):
    snapshot = _hf_cache(tmp_path / "hub")
    for folder in (tmp_path / "outside", tmp_path / "hub" / "models--other--repo" / "blobs"):
        folder.mkdir(parents=True)
    (tmp_path / "outside" / "credentials").write_text("secret")
    (tmp_path / "hub" / "models--other--repo" / "blobs" / "9a9a").write_text("other")
    (snapshot / "tokenizer.json").symlink_to(target)
    with pytest.raises(UsageError, match="tokenizer.json is a symlink to .*outside the model folder"):
        files.select_model_folder(snapshot)


@pytest.mark.parametrize(
    "select", [files.select, files.select_model_folder], ids=["source-dir", "model-folder"]
)
def test_the_widened_secret_filter_and_its_override(tmp_path, select):
    root = _model_folder(tmp_path / "m")
    for name in SECRETS:
        (root / name).write_text("secret\n")
    (root / ".config" / "gcloud").mkdir(parents=True)
    (root / ".config" / "gcloud" / "application_default_credentials.json").write_text("{}")
    selection = select(root)
    assert sorted(selection.files) == ["config.json", "model.safetensors"]
    gcloud = ".config/gcloud/application_default_credentials.json"
    assert sorted(selection.secrets_excluded) == sorted([*SECRETS, gcloud])
    assert any("likely secrets" in w and "!NAME" in w for w in selection.warnings)
    (root / ".aiopsignore").write_text("!credentials.json\n")  # shipped on purpose
    again = select(root)
    assert "credentials.json" in again.files and "credentials.json" not in again.secrets_excluded


def test_model_package_warns_about_the_secrets_it_left_out(run_cli, tmp_path):
    model = _model_folder(tmp_path / "model")
    (model / ".env.production").write_text("API_KEY=hunter2\n")
    out = tmp_path / "model.tar.gz"
    result = run_cli("model", "package", str(model), "--out", str(out))
    assert result.returncode == 0, result.output
    assert "likely secrets: .env.production" in result.stderr
    assert ".env.production" not in _members(out)
