"""The one settings model: sources, precedence and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiops.errors import ConfigError
from aiops.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("AIOPS_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.train.stop_grace_seconds == 120.0  # SageMaker's stop grace
    assert settings.serve.port == 8080 and settings.serve.host == "127.0.0.1"
    assert settings.runs_dir.is_absolute() and settings.runs_dir.name == "runs"


def test_env_overrides_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "aiops.toml").write_text("[train]\nstop_grace_seconds = 5\n[aws]\nregion = 'eu-west-1'\n")
    assert load_settings().train.stop_grace_seconds == 5
    monkeypatch.setenv("AIOPS_AWS__REGION", "ap-south-1")
    assert load_settings().aws.region == "ap-south-1"


def test_invalid_value_names_key_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOPS_SERVE__PORT", "99999")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "serve.port" in message and "AIOPS_SERVE__PORT" in message and "99999" in message
    assert "\n" not in message


def test_unknown_key_in_toml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "aiops.toml").write_text("[train]\nstop_grace = 5\n")
    with pytest.raises(ConfigError, match="train.stop_grace"):
        load_settings()


def test_missing_named_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOPS_CONFIG", "/nope/aiops.toml")
    with pytest.raises(ConfigError, match="AIOPS_CONFIG"):
        load_settings()


def test_malformed_toml(tmp_path: Path) -> None:
    (tmp_path / "aiops.toml").write_text("[train\n")
    with pytest.raises(ConfigError, match="cannot read settings"):
        load_settings()
