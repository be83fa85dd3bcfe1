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


@pytest.mark.parametrize(
    "variable, value, key, model",
    [
        ("AIOPS_SERVE__PORT", "99999", "serve.port", "load_settings"),
        (
            "SAGEMAKER_MODEL_SERVER_WORKERS",
            "many",
            "serve.workers",
            "load_serve_settings",
        ),  # the container's names too
    ],
)
def test_invalid_value_is_one_line_naming_key_and_env(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str, model: str
) -> None:
    import aiops.settings

    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        getattr(aiops.settings, model)()
    message = str(err.value)
    assert key in message and variable in message and value in message
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


def test_serve_settings_precedence_cli_sagemaker_aiops_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from aiops.settings import load_serve_settings

    (tmp_path / "aiops.toml").write_text("[serve]\nport = 7000\nworkers = 3\nbatch_size = 4\nmax_queue = 9\n")
    s = load_serve_settings()
    assert (s.port, s.workers, s.batch_size, s.max_queue, s.max_header_kb) == (7000, 3, 4, 9, 16.0)
    monkeypatch.setenv("AIOPS_SERVE__PORT", "7100")
    monkeypatch.setenv("AIOPS_SERVE__WORKERS", "5")
    assert (load_serve_settings().port, load_serve_settings().workers) == (7100, 5)
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "7200")  # the container's names win over aiops'
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "")  # empty: as if unset
    monkeypatch.setenv("SAGEMAKER_TS_BATCH_SIZE", "8")
    s = load_serve_settings()
    assert (s.port, s.workers, s.batch_size) == (7200, 5, 8)
    assert load_serve_settings(port=7300, workers=None).port == 7300  # CLI flags win; None is "not given"
    # the worker receives the same model, as JSON
    assert type(s).model_validate_json(s.model_dump_json()) == s


def test_serve_settings_url_is_where_a_local_server_listens() -> None:
    from aiops.settings import load_serve_settings

    assert load_serve_settings(port=7300).url == "http://127.0.0.1:7300"  # `aiops invoke`'s default target
    assert load_serve_settings(host="0.0.0.0", port=80).url == "http://0.0.0.0:80"
