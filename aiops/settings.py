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
from typing import Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
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


def _serve_field(default: Any, name: str, *sagemaker: str, **kw: Any) -> Any:
    """A serve setting read from ``SAGEMAKER_*`` (as the container does) before ``AIOPS_SERVE__*``."""
    return Field(
        default, validation_alias=AliasChoices(*sagemaker, f"AIOPS_SERVE__{name.upper()}", name), **kw
    )


class _FromConfigFile(BaseSettings):
    """Arguments, then the environment, then the config file: its ``[serve]`` table for the serve
    settings (``serve_table``), the rest for the others. One order for both models."""

    serve_table: ClassVar[bool] = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_file()
        if config_file is None:
            return (init_settings, env_settings)
        return (
            init_settings,
            env_settings,
            _TomlPart(settings_cls, config_file, "serve", inside=cls.serve_table),
        )


class ServeSettings(_FromConfigFile):
    """The one serve-settings model: `aiops serve`, the container entry and every worker use it.

    Highest priority first: CLI flags (init values), the SageMaker variables (``SAGEMAKER_BIND_TO_PORT``,
    ``SAGEMAKER_MODEL_SERVER_WORKERS``, ...), ``AIOPS_SERVE__*``, the ``[serve]`` table of aiops.toml,
    the defaults. The supervisor sends the validated model to each worker as JSON.
    """

    model_config = SettingsConfigDict(
        extra="forbid", populate_by_name=True, env_ignore_empty=True, validate_default=True
    )
    serve_table: ClassVar[bool] = True

    host: str = _serve_field("127.0.0.1", "host", description="Interface to bind.")
    port: int = _serve_field(8080, "port", "SAGEMAKER_BIND_TO_PORT", ge=0, le=65535)
    workers: int = _serve_field(
        1,
        "workers",
        "SAGEMAKER_MODEL_SERVER_WORKERS",
        ge=1,
        description="Worker processes (each loads the model once).",
    )
    timeout_seconds: float = _serve_field(
        60.0,
        "timeout_seconds",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT",
        gt=0,
        description="A request unanswered this long gets 504.",
    )
    max_payload_mb: float = _serve_field(6.0, "max_payload_mb", "SAGEMAKER_MAX_PAYLOAD_IN_MB", gt=0)
    default_accept: str = _serve_field(
        "application/json", "default_accept", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
    )
    program: str | None = _serve_field(
        None,
        "program",
        "SAGEMAKER_PROGRAM",
        description="The inference script in code/ (default inference.py).",
    )
    container: Literal["pytorch", "huggingface", "tgi", "lmi"] = _serve_field(
        "pytorch",
        "container",
        description="Whose contract the model is served under: the SageMaker PyTorch container's "
        "handler, the Hugging Face inference container's (a transformers pipeline), or an LLM "
        "container's API over a causal-LM folder (tgi, lmi).",
    )
    hf_task: str | None = _serve_field(
        None,
        "hf_task",
        "HF_TASK",
        description="container huggingface: the pipeline task (default: inferred from config.json).",
    )
    batch_size: int = _serve_field(
        1,
        "batch_size",
        "SAGEMAKER_TS_BATCH_SIZE",
        ge=1,
        description="Dynamic batching: most requests per predict_fn call (1: off).",
    )
    max_batch_delay_ms: float = _serve_field(
        5.0,
        "max_batch_delay_ms",
        "SAGEMAKER_TS_MAX_BATCH_DELAY",
        ge=0,
        description="Dynamic batching: the most a request waits for others to join its batch.",
    )
    graceful_shutdown_seconds: float = _serve_field(30.0, "graceful_shutdown_seconds", ge=0)
    api_key: str | None = _serve_field(
        None,
        "api_key",
        description="When set, every route but /ping needs it (X-Api-Key or Authorization: Bearer).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=AliasChoices("AIOPS_SERVE__LOG_LEVEL", "AIOPS_LOG_LEVEL", "log_level")
    )
    variant: str = _serve_field("AllTraffic", "variant", description="X-Amzn-Invoked-Production-Variant.")
    install_requirements: bool = _serve_field(
        False, "install_requirements", description="pip install code/requirements.txt before serving."
    )
    # ---- bounds, applied before the API key is checked and before anything large is buffered
    max_header_kb: float = _serve_field(
        16.0, "max_header_kb", gt=0, description="Request line plus headers; more is answered 431."
    )
    header_timeout_seconds: float = _serve_field(
        10.0, "header_timeout_seconds", gt=0, description="Time to send the request line and headers."
    )
    body_timeout_seconds: float = _serve_field(
        30.0, "body_timeout_seconds", gt=0, description="Time to send the whole body once the headers are in."
    )
    keep_alive_seconds: float = _serve_field(
        60.0, "keep_alive_seconds", gt=0, description="An idle keep-alive connection is closed after this."
    )
    write_timeout_seconds: float = _serve_field(
        30.0,
        "write_timeout_seconds",
        gt=0,
        description="A response (streamed or whole) whose client reads none of it for this long is aborted.",
    )
    max_connections: int = _serve_field(
        1000,
        "max_connections",
        ge=1,
        description="Open connections per worker (at most the fd limit); past it an idle, stalled or "
        "slow one is closed, else the new one may only ask for /ping.",
    )
    max_blocked_streams: int = _serve_field(
        8,
        "max_blocked_streams",
        ge=0,
        description="Streams whose generator stays blocked timeout_seconds after it was told to stop; "
        "past this many the worker is replaced (0: never).",
    )
    max_queue: int = _serve_field(
        256,
        "max_queue",
        ge=1,
        description="Requests read but not yet answered, per worker; past it 503 with Retry-After.",
    )
    inline_call_ms: float | None = _serve_field(
        None,
        "inline_call_ms",
        ge=0,
        description="Handler calls (or batches) that keep taking at most this long run on the "
        "worker's event loop itself (no thread hand-off); one slower call moves the worker back "
        "to its inference thread, so /ping and the timeouts never wait longer than that. 0: "
        "always the inference thread. Default 50: every request with batching on; without "
        "batching only a request alone in flight (an unbatched worker under load measured faster "
        "keeping its thread: the forward overlaps the loop's I/O). Set explicitly: every request.",
    )
    max_decoded_mb: float = _serve_field(
        100.0,
        "max_decoded_mb",
        gt=0,
        description="Largest .npy/.npz/sparse body once decoded (default decoders).",
    )
    json_max_depth: int = _serve_field(
        32, "json_max_depth", ge=1, description="Dimensions of a JSON array body."
    )
    json_max_elements: int = _serve_field(
        4_000_000, "json_max_elements", ge=1, description="Numbers in a JSON or CSV body (default decoders)."
    )
    max_worker_rss_mb: float = _serve_field(
        0.0,
        "max_worker_rss_mb",
        ge=0,
        description="A worker whose memory (RSS) grows past this is replaced "
        "(a new one starts first, then the old one drains); 0: never.",
    )
    archive_max_gb: float = _serve_field(
        64.0, "archive_max_gb", gt=0, description="A model.tar.gz may unpack to at most this much."
    )
    archive_max_ratio: float = _serve_field(
        200.0,
        "archive_max_ratio",
        gt=1,
        description="... and to at most this many times its own size "
        "(with a 1 GiB floor): a tar bomb is refused from the headers as it streams.",
    )
    archive_max_members: int = _serve_field(100_000, "archive_max_members", ge=1)
    # ---- a Hugging Face causal LM behind an LLM container's API (aiops.inference.llm.server); the
    # environment names are the containers' own (TGI's launcher, LMI's OPTION_*), as the stack sets them
    max_total_tokens: int | None = _serve_field(
        None,
        "max_total_tokens",
        "MAX_TOTAL_TOKENS",
        "OPTION_MAX_MODEL_LEN",
        ge=2,
        description="LLM: prompt plus new tokens per request (default: the model's positions, at most 4096).",
    )
    max_input_tokens: int | None = _serve_field(
        None,
        "max_input_tokens",
        "MAX_INPUT_TOKENS",
        ge=1,
        description="LLM: prompt tokens per request (default: max_total_tokens - 1).",
    )
    max_batch_size: int | None = _serve_field(
        None,
        "max_batch_size",
        "MAX_BATCH_SIZE",
        "OPTION_MAX_ROLLING_BATCH_SIZE",
        ge=1,
        description="LLM: sequences decoded together (default 16).",
    )

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(EMPTY_API_KEY)
        return value

    @model_validator(mode="after")
    def _api_key_set_empty(self) -> ServeSettings:
        # env_ignore_empty drops `AIOPS_SERVE__API_KEY=` before any validator sees it; set but empty
        # is still a mistake to refuse, not "no key"
        if self.api_key is None:
            for name, value in os.environ.items():
                if name.upper() == API_KEY_ENV and not value.strip():
                    raise ValueError(f"{API_KEY_ENV} is set but empty: {EMPTY_API_KEY}")
        return self

    @property
    def url(self) -> str:
        """Where a local server with these settings listens (what `aiops invoke` calls by default)."""
        return f"http://{self.host}:{self.port}"

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)


API_KEY_ENV = "AIOPS_SERVE__API_KEY"
EMPTY_API_KEY = "an empty API key would mean no authentication; give a key, or leave it unset"


def check_api_key(value: str | None, *, source: str = "--api-key") -> str | None:
    """An API key given to a client (`aiops invoke --api-key`): None (none given) or a non-blank key;
    ConfigError (exit 2) for a blank one, given or set empty in the environment."""
    if value is not None and not value.strip():
        raise ConfigError(f"{source} is empty: {EMPTY_API_KEY}")
    if value is None and any(n.upper() == API_KEY_ENV and not v.strip() for n, v in os.environ.items()):
        raise ConfigError(f"{API_KEY_ENV} is set but empty: {EMPTY_API_KEY}")
    return value


class _TomlPart(TomlConfigSettingsSource):
    """One table of aiops.toml (``[serve]``, ``inside=True``), or the file without it."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, table: str, *, inside: bool) -> None:
        self._table, self._inside = table, inside  # set first: the base class reads the file in __init__
        super().__init__(settings_cls, toml_file=path)

    def _read_files(self, files: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        data = dict(super()._read_files(files, *args, **kwargs))
        if self._inside:
            value = data.get(self._table, {})
            return value if isinstance(value, dict) else {}
        data.pop(self._table, None)
        return data


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
        None,
        gt=0,
        description="Budget in USD: a remote job whose worst-case estimate is higher is refused unless "
        "--yes.",
    )
    job_poll_seconds: float = Field(
        5.0, gt=0, description="How often a followed job's status and logs are read."
    )
    log_silence_warning_seconds: float = Field(
        300.0, gt=0, description="Warn when a job's logs stay silent this long (instead of hanging quietly)."
    )

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        from aiops.stack import check_region

        return check_region(value)  # botocore's partition data, read without importing botocore


class Settings(_FromConfigFile):
    """aiops defaults. See the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="AIOPS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path(".aiops"), description="Where local runs and state are kept.")
    stack: str = Field(
        "dev",
        description="The stack every command uses unless --stack is given (see aiops.stack.resolve_stack).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    train: TrainSettings = TrainSettings()
    aws: AwsSettings = AwsSettings()

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def serve(self) -> ServeSettings:
        """The serve settings (their own model: they also read the SAGEMAKER_* variables)."""
        return get_serve_settings()


def _config_file() -> Path | None:
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{CONFIG_FILE_ENV}={named}: no such file; point it at an aiops.toml or unset it."
            )
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
        settings = Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err)) from None
    except ValueError as err:  # a malformed aiops.toml
        raise ConfigError(
            f"cannot read settings: {err}. Fix {DEFAULT_CONFIG_FILE} or {CONFIG_FILE_ENV}."
        ) from None
    load_serve_settings()  # the [serve] section is validated with the rest, before any work starts
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated on first use."""
    return load_settings()


def _serve_names() -> dict[str, tuple[str, list[str]]]:
    """Every accepted name of a serve setting -> (field, its environment variable names)."""
    names = {}
    for field_name, info in ServeSettings.model_fields.items():
        choices = [str(c) for c in getattr(info.validation_alias, "choices", []) or []]
        env = [c for c in choices if c != field_name]
        for choice in choices:
            names[choice] = (field_name, env)
    return names


def describe_serve_error(err: ValidationError) -> str:
    """One line: ``serve.port=99999 (SAGEMAKER_BIND_TO_PORT): ...`` for every bad value."""
    names = _serve_names()
    parts = []
    for item in err.errors():
        if not item["loc"]:  # a check across fields: its message names what is wrong
            parts.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        given = str(item["loc"][0])
        field_name, env = names.get(given, (given, []))
        value = item.get("input")
        used = next((name for name in env if os.environ.get(name, "").strip()), None)
        if used is not None and os.environ[used] == value:  # name the variable the value came from
            parts.append(f"{used}={value!r} (serve.{field_name}): {item['msg']}")
            continue
        shown = "" if isinstance(value, dict) else f"={value!r}"
        parts.append(f"serve.{field_name}{shown} ({' or '.join(env) or given}): {item['msg']}")
    return "invalid settings: " + "; ".join(parts)


def load_serve_settings(**cli: Any) -> ServeSettings:
    """The serve settings with CLI values (None: not given) on top; ConfigError (exit 2) when invalid."""
    given = {k: v for k, v in cli.items() if v is not None}
    try:
        return ServeSettings(**given)
    except ValidationError as err:
        raise ConfigError(describe_serve_error(err)) from None
    except ValueError as err:
        raise ConfigError(
            f"cannot read settings: {err}. Fix {DEFAULT_CONFIG_FILE} or {CONFIG_FILE_ENV}."
        ) from None


@lru_cache(maxsize=1)
def get_serve_settings() -> ServeSettings:
    return load_serve_settings()
