"""Secrets passed with `aiops train --secret NAME=ARN`, read the same way locally and on SageMaker.

boto3 only when a secret is read from Secrets Manager (no aiops import): train.py ships it to the
SageMaker container.
"""

from __future__ import annotations

import os

from finetune_errors import UsageProblem

SECRET_ARN_PREFIX = "AIOPS_SECRET_ARN_"  # `aiops train --secret NAME=ARN` sets AIOPS_SECRET_ARN_NAME=ARN


def read_secret(name: str) -> str | None:
    """The value of secret NAME, the same way locally and on SageMaker: NAME in the environment (a
    local run: your own shell's), else AWS Secrets Manager at the ARN `--secret NAME=ARN` passed, read
    with the job's role (or locally your credentials). None when neither is there."""
    if os.environ.get(name):
        return os.environ[name]
    arn = os.environ.get(SECRET_ARN_PREFIX + name)
    if not arn:
        return None
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = boto3.client("secretsmanager", region_name=arn.split(":")[3]).get_secret_value(SecretId=arn)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        raise UsageProblem(
            f"secret {name}: secretsmanager:GetSecretValue on {arn} failed ({code}); the job's role "
            "needs it (access.trainingSecrets in the stack config)"
        ) from None
    except BotoCoreError as err:
        raise UsageProblem(f"secret {name}: cannot reach Secrets Manager for {arn} ({err})") from None
    return answer.get("SecretString") or answer["SecretBinary"].decode()


def export_secrets() -> list[str]:
    """Every `--secret` into this process's environment by its name, where libraries look for it
    (HF_TOKEN for huggingface_hub, WANDB_API_KEY for wandb); never printed, never in argv."""
    names = sorted(key[len(SECRET_ARN_PREFIX) :] for key in os.environ if key.startswith(SECRET_ARN_PREFIX))
    for name in names:
        os.environ[name] = read_secret(name) or ""
    return names
