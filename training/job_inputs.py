"""What a user may pass to a training job, checked before anything runs: hyperparameter names and
values, channel names and their input modes, ``--env`` variables and ``--secret`` ARNs. Each refusal
is one line (`UsageError`) naming the value and what SageMaker or the toolkit would do with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiops.training.contract import CHECKPOINT_ENV, SAGEMAKER_PREFIX, TOOLKIT_PARAMS

from aiops.errors import UsageError

# A hyperparameter name the toolkit passes through untouched: it becomes `--name` on the command
# line and `SM_HP_<NAME>` in the environment. Anything else is mangled (spaces split the argv,
# `=` breaks env parsing, a `sagemaker_` prefix is swallowed by the framework).
_HP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9\.\-_]+$")  # CreateTrainingJob's ChannelName pattern


# A channel's InputMode and S3DataDistributionType in CreateTrainingJob (the SDK's TrainingInput
# input_mode / distribution). Locally every channel is File and the one host gets every object.
INPUT_MODES = ("File", "FastFile", "Pipe")
S3_DISTRIBUTIONS = ("FullyReplicated", "ShardedByS3Key")


def parse_channel_settings(
    values: Sequence[str], channels: Sequence[str], option: str, allowed: Sequence[str]
) -> dict[str, str]:
    """`--input-mode FastFile` (every channel) or `--input-mode train=FastFile` (one channel; later wins)."""
    settings: dict[str, str] = {}
    for raw in values:
        name, sep, value = raw.rpartition("=")
        value = value.strip()
        if value not in allowed:
            raise UsageError(
                f"{option} {raw!r}: {value!r} is not one of {', '.join(allowed)} "
                f"(e.g. {option} {allowed[-1]} or {option} train={allowed[-1]})."
            )
        targets = [name.strip()] if sep else list(channels)
        for target in targets:
            if target not in channels:
                known = ", ".join(channels) or "none"
                raise UsageError(
                    f"{option} {raw!r}: no channel named {target!r} (channels: {known}); "
                    "add it with --channel NAME=PATH."
                )
            settings[target] = value
    return settings


_SECRET_WORDS = frozenset(
    {
        "pass",
        "passwd",
        "password",
        "passphrase",
        "pwd",
        "secret",
        "secrets",
        "token",
        "key",
        "apikey",
        "credential",
        "credentials",
    }
)


def secret_looking_hyperparameters(hyperparameters: Mapping[str, Any]) -> list[str]:
    """Names that look like they carry a secret (hyperparameters and environment variables are shown
    in DescribeTrainingJob, the console and the run record, in the clear). Word-based, so
    `max_tokens` and `TOKENIZERS_PARALLELISM` are not flagged, `HF_TOKEN` and `WANDB_API_KEY` are."""
    flagged = []
    for name in hyperparameters:
        spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
        words = {w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w}
        if words & _SECRET_WORDS or any(w.startswith(("password", "secret")) for w in words):
            flagged.append(name)
    return flagged


def refuse_secret_looking(names: Mapping[str, Any], option: str) -> None:
    """A plain `--hp`/`--env` whose name looks like a secret: its value would be stored and shown in
    the clear, so it goes through `--secret NAME=ARN` (Secrets Manager) instead."""
    flagged = secret_looking_hyperparameters(names)
    if flagged:
        name = flagged[0]
        raise UsageError(
            f"{option} {name} looks like a secret, and {option} values are stored and shown in the clear "
            "(run record, DescribeTrainingJob, the console): put it in AWS Secrets Manager and pass "
            f"--secret {name}=arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME, or rename it if it is not "
            "a secret."
        )


# CreateTrainingJob's Environment: at most 100 entries, names [a-zA-Z_][a-zA-Z0-9_]*, values up to 512
# characters (botocore's sagemaker model)
ENVIRONMENT_MAX_ENTRIES = 100
ENVIRONMENT_MAX_CHARS = 512
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# what the container (the platform, the toolkit, the PyTorch image) and aiops set in every job; a
# value given for them would be overwritten there, so `--env` refuses them
CONTAINER_ENV_PREFIXES = ("SM_", "SAGEMAKER_")
CONTAINER_ENV_NAMES = frozenset(
    {
        "TRAINING_JOB_NAME",
        "CURRENT_HOST",
        CHECKPOINT_ENV,
        "NCCL_SOCKET_IFNAME",
        "NCCL_IB_DISABLE",
        "NCCL_DEBUG",
        "NCCL_PROTO",
        "MASTER_ADDR",
        "MASTER_PORT",
        "AWS_REGION",
        "FI_PROVIDER",
        "FI_EFA_USE_DEVICE_RDMA",
        "RDMAV_FORK_SAFE",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
    }
)


# `--secret NAME=ARN` reaches the script as AIOPS_SECRET_ARN_<NAME>=<ARN>: where the value is, never
# the value (the script reads it with the job's role, or locally from NAME in the user's environment)
SECRET_ARN_ENV_PREFIX = "AIOPS_SECRET_ARN_"


def _check_variable_name(name: str, option: str) -> None:
    longest = ENVIRONMENT_MAX_CHARS - len(SECRET_ARN_ENV_PREFIX)
    if not _ENV_NAME.match(name) or len(name) > longest:
        raise UsageError(
            f"{option} {name}: an environment variable name is letters, digits and '_', not "
            f"starting with a digit (at most {longest} characters)."
        )
    if name.upper().startswith(CONTAINER_ENV_PREFIXES):
        raise UsageError(
            f"{option} {name}: SM_* and SAGEMAKER_* variables belong to the SageMaker "
            "container, which sets them itself; pass the value as a hyperparameter (--hp) "
            "instead."
        )
    if name in CONTAINER_ENV_NAMES:
        raise UsageError(
            f"{option} {name}: the training container sets {name} itself, so a value given here "
            "would be overwritten; choose another name."
        )
    if name.startswith(SECRET_ARN_ENV_PREFIX):
        raise UsageError(
            f"{option} {name}: {SECRET_ARN_ENV_PREFIX}* variables are set by --secret; choose another name."
        )


def validate_environment(environment: Mapping[str, str], secrets: Mapping[str, str] | None = None) -> None:
    """`--env KEY=VALUE`: a name CreateTrainingJob accepts, not one the container owns, not a secret;
    `--secret NAME=ARN`: a variable name and a Secrets Manager secret's full ARN."""
    from aiops.names import is_secret_arn

    secrets = secrets or {}
    for name, value in environment.items():
        _check_variable_name(name, "--env")
        if len(str(value)) > ENVIRONMENT_MAX_CHARS:
            raise UsageError(
                f"--env {name}: the value has {len(str(value))} characters, more than the "
                f"{ENVIRONMENT_MAX_CHARS} SageMaker accepts; put large values in a channel."
            )
    for name, arn in secrets.items():
        _check_variable_name(name, "--secret")
        if name in environment:
            raise UsageError(f"--secret {name} is also given with --env; give it once, as a secret.")
        if not is_secret_arn(arn):  # the value given is not echoed: it may be the secret itself
            raise UsageError(
                f"--secret {name}: what follows '=' is not a Secrets Manager secret ARN (a "
                "secret's value never goes on the command line); give the full ARN "
                "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-AbCdEf, as "
                "`aws secretsmanager describe-secret --secret-id NAME` prints it)."
            )
    if len(environment) + len(secrets) >= ENVIRONMENT_MAX_ENTRIES:  # aiops adds AIOPS_CHECKPOINT_DIR
        raise UsageError(
            f"--env/--secret: {len(environment) + len(secrets)} variables; a SageMaker job "
            f"takes at most {ENVIRONMENT_MAX_ENTRIES - 1} besides the one aiops sets."
        )
    refuse_secret_looking(environment, "--env")


def secret_environment(secrets: Mapping[str, str]) -> dict[str, str]:
    """What `--secret NAME=ARN` puts in the script's environment: AIOPS_SECRET_ARN_<NAME>=<ARN>."""
    return {f"{SECRET_ARN_ENV_PREFIX}{name}": arn for name, arn in secrets.items()}


def validate_hyperparameter_name(name: str) -> None:
    if not _HP_NAME.match(name):
        raise UsageError(
            f"hyperparameter name {name!r} would be mangled by the SageMaker toolkit "
            "(it becomes --NAME and SM_HP_NAME): use letters, digits, '_', '-' and '.', starting "
            "with a letter or '_'."
        )
    if name.startswith(SAGEMAKER_PREFIX) or name in TOOLKIT_PARAMS:
        raise UsageError(
            f"hyperparameter name {name!r} is reserved: the SageMaker toolkit takes every "
            f"'{SAGEMAKER_PREFIX}*' key for itself and never passes it to your script; rename it."
        )


def validate_hyperparameters(hyperparameters: Mapping[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name in hyperparameters:
        validate_hyperparameter_name(name)
        env_name = _hp_env_name(name)
        if env_name in seen:
            raise UsageError(
                f"hyperparameters {seen[env_name]!r} and {name!r} both become {env_name}; rename one of them."
            )
        seen[env_name] = name


def validate_channel_name(name: str) -> None:
    if not _CHANNEL_NAME.match(name) or len(name) > 64:
        raise UsageError(
            f"channel name {name!r} is not valid for SageMaker: use up to 64 letters, digits, "
            "'.', '-' and '_' (e.g. --channel train=./data/train)."
        )


def parse_hyperparameter_value(raw: str) -> Any:
    """A `--hp KEY=VALUE` value: JSON if it parses (3, 0.1, true, [1,2]), else the raw string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _hp_env_name(name: str) -> str:
    return f"SM_HP_{name.upper()}"
