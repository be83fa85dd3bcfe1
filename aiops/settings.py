"""The one typed settings model for aiops defaults.

Values come, highest priority first, from ``AIOPS_*`` environment variables (nested with ``__``,
e.g. ``AIOPS_SERVE__PORT=9000``), then from ``aiops.toml`` in the working directory (or the file
named by ``AIOPS_CONFIG``), then from the defaults below. They are validated once, before any
work starts; an invalid value stops the command with one line naming the key (exit 2).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from aiops.errors import ConfigError

CONFIG_FILE_ENV = "AIOPS_CONFIG"
DEFAULT_CONFIG_FILE = "aiops.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silent default


class TrainSettings(_Section):
    """Defaults for `aiops train`."""

    stop_grace_seconds: float = Field(
        120.0, gt=0, description="Seconds between SIGTERM and SIGKILL when a job is stopped (SageMaker: 120)."
    )
    log_tail_lines: int = Field(20, ge=1, description="Lines of the script's log shown when it fails.")
    link_channels: bool = Field(
        False,
        description="Symlink local channels into the run instead of copying them. Faster for big data, "
        "but a script that writes into its channel would then change your files.",
    )
    instance_type: str = Field("local", description="Recorded in resourceconfig.json for local runs.")


class ServeSettings(_Section):
    """Defaults for `aiops serve` (the SAGEMAKER_* variables override them, as in the container)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    timeout_seconds: float = Field(60.0, gt=0)
    max_payload_mb: float = Field(6.0, gt=0)
    default_accept: str = "application/json"
    graceful_shutdown_seconds: float = Field(30.0, ge=0)
    batch_size: int = Field(1, ge=1, description="Dynamic batching: most requests per predict_fn call (1: off).")
    max_batch_delay_ms: float = Field(
        5.0, ge=0, description="Dynamic batching: the most a request waits for others to join its batch."
    )
    api_key: str | None = Field(
        None, description="When set, every route but /ping needs it (X-Api-Key or Authorization: Bearer)."
    )


class AwsSettings(_Section):
    """Defaults for remote jobs and deployments; the deployed stack's outputs take precedence."""

    region: str = "us-east-1"
    role_arn: str | None = None
    bucket: str | None = None
    kms_key_arn: str | None = None
    framework_version: str = Field("2.5", description="PyTorch version of the SageMaker containers.")
    py_version: str = "py311"
    instance_type: str = Field("ml.g5.xlarge", description="Default instance type of remote training jobs.")
    spot: bool = Field(True, description="Managed spot training by default (with checkpoints).")
    max_run_seconds: int = Field(86400, ge=1, description="StoppingCondition.MaxRuntimeInSeconds.")
    volume_size_gb: int = Field(30, ge=1)
    max_cost: float | None = Field(
        None, gt=0, description="Budget in USD: a remote job whose worst-case estimate is higher is refused unless --yes."
    )
    job_poll_seconds: float = Field(5.0, gt=0, description="How often a followed job's status and logs are read.")
    log_silence_warning_seconds: float = Field(
        300.0, gt=0, description="Warn when a job's logs stay silent this long (instead of hanging quietly)."
    )

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        from aiops.stack import check_region

        return check_region(value)  # botocore's partition data, read without importing botocore


class Settings(BaseSettings):
    """aiops defaults. See the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="AIOPS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path(".aiops"), description="Where local runs and state are kept.")
    stack: str = Field(
        "dev", description="The stack every command uses unless --stack is given (see aiops.stack.resolve_stack)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    train: TrainSettings = TrainSettings()
    serve: ServeSettings = ServeSettings()
    aws: AwsSettings = AwsSettings()

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def _config_file() -> Path | None:
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV}={named}: no such file; point it at an aiops.toml or unset it.")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def describe_validation_error(err: ValidationError, *, env_prefix: str = "AIOPS_") -> str:
    """One line naming every bad key, its value and what is allowed."""
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        env_name = env_prefix + "__".join(str(p) for p in item["loc"]).upper()
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f"={value!r}"
        parts.append(f"{key}{shown} ({env_name}): {item['msg']}")
    return "invalid settings: " + "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings, raising ConfigError (exit 2) with one clear line."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err)) from None
    except ValueError as err:  # a malformed aiops.toml
        raise ConfigError(f"cannot read settings: {err}. Fix {DEFAULT_CONFIG_FILE} or {CONFIG_FILE_ENV}.") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated on first use."""
    return load_settings()
