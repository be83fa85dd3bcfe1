"""boto3 clients with botocore's standard retries, and AWS errors as one line that says what to do.

Shared by remote training, endpoint invocation and deployments; boto3 is imported only when called.

boto3 itself honours ``AWS_ENDPOINT_URL`` (tests point it at a local moto server), profiles,
regions and credentials the usual way; nothing here reimplements that.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from aiops.errors import AiopsError, UsageError
from aiops.s3objects import DEFAULT_CONCURRENCY

# botocore's "standard" retry mode: exponential backoff with jitter for throttling and 5xx.
STANDARD_RETRIES = {"mode": "standard", "max_attempts": 5}
# connections a client keeps: an UploadBatch's requests in flight (aiops.s3objects.DEFAULT_CONCURRENCY)
# and the caller's own HEADs beside them, so none is opened and dropped per request
MAX_POOL_CONNECTIONS = DEFAULT_CONCURRENCY + 8


def session(region: str | None = None, **credentials: str) -> Any:
    """A new boto3 session (its own credentials, region and config, read now; ``credentials`` as
    boto3.Session takes them), reading botocore's service models through the process's one loader:
    a command makes several clients, and each new loader would parse the same JSON models again
    (~0.2 s of CPU per client)."""
    import boto3
    import botocore.session

    core = botocore.session.Session()
    core.register_component("data_loader", _shared_loader(core.get_config_variable("data_path")))
    made = boto3.session.Session(botocore_session=core, region_name=region, **credentials)
    _check_region(made.region_name)
    return made


def _check_region(region: str | None) -> None:
    """A region from anywhere (an option, the settings, a run record or the stack's saved outputs,
    AWS_REGION or a profile) is one botocore's partition data knows, before any client is built
    from it: one line, exit 2, instead of botocore's InvalidRegionError at the first call."""
    if region is None:
        return  # boto3's own NoRegionError says what to do, at the call
    from aiops.stack import check_region

    try:
        check_region(str(region))
    except ValueError as err:
        raise UsageError(
            f"{err}; check --region, AIOPS_AWS__REGION or AWS_REGION, or the run record or "
            "stack outputs it was read from"
        ) from None


@cache
def _shared_loader(data_path: str | None) -> Any:
    """botocore's data loader, one per data path (``AWS_DATA_PATH`` or the config file's
    ``data_path``, which the session reads as botocore does): the files it reads are the installed
    packages' and do not change while the process runs."""
    import os

    import botocore.loaders

    # split as botocore.loaders.create_loader splits it, into a list the loader keeps as its search
    # paths: boto3 appends its resource folder to it on every session, which a plain list would
    # collect once per client
    paths = [os.path.expanduser(os.path.expandvars(p)) for p in (data_path or "").split(os.pathsep) if p]
    return botocore.loaders.Loader(extra_search_paths=_UniquePaths(paths))


class _UniquePaths(list):
    """A search-path list that ignores a folder it holds already."""

    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


def client(
    service: str,
    region: str | None = None,
    *,
    retries: dict[str, Any] | None = None,
    max_pool_connections: int = MAX_POOL_CONNECTIONS,
) -> Any:
    from botocore.config import Config

    config = Config(
        retries=retries or STANDARD_RETRIES,
        user_agent_extra="aiops",
        max_pool_connections=max(max_pool_connections, MAX_POOL_CONNECTIONS),
    )
    return session(region).client(service, config=config)


def training_instance_types() -> frozenset[str]:
    """The TrainingInstanceType enum of the SageMaker service model that botocore ships."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return frozenset(model.shape_for("TrainingInstanceType").enum)


#: the packages whose exceptions are AWS errors (boto3's S3 transfers raise s3transfer's and boto3's own)
AWS_PACKAGES = ("botocore", "boto3", "s3transfer")


def is_aws_error(err: BaseException) -> bool:
    """An exception raised by botocore, boto3 or s3transfer (recognised without importing them)."""
    return type(err).__module__.split(".")[0] in AWS_PACKAGES


def error_code(err: BaseException) -> str:
    """A ClientError's ``Error.Code`` ('' for anything else), without importing botocore."""
    response = getattr(err, "response", None)
    return str(((response or {}).get("Error") or {}).get("Code", "")) if isinstance(response, dict) else ""


@contextmanager
def translate_errors(action: str | Callable[[], str], *, hint: str | None = None) -> Iterator[None]:
    """Turn an AWS error raised inside the block into one line naming the fix (``describe_aws_error``);
    anything else passes through. ``action`` says what was being done (a callable: worked out at the
    failure, e.g. with the progress so far); ``hint`` is added to the line."""
    try:
        yield
    except Exception as err:
        if not is_aws_error(err):
            raise
        described = describe_aws_error(err, action=action() if callable(action) else action)
        if hint:
            raise type(described)(str(described), hint=hint) from None
        raise described from None


_NOT_AUTHORIZED = re.compile(r"not authorized to perform:?\s*([\w:-]+\*?)")


def describe_aws_error(err: Exception, *, action: str) -> AiopsError:
    """Translate a botocore error into an AiopsError whose one line names the fix."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return UsageError(
            f"{action}: no AWS credentials found. Run 'aws configure' or 'aws sso login', or set "
            "AWS_PROFILE / AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        )
    if isinstance(err, NoRegionError):
        return UsageError(f"{action}: no AWS region set. Pass --region or set AWS_REGION.")
    if isinstance(err, EndpointConnectionError):
        return AiopsError(
            f"{action}: cannot reach {err.kwargs.get('endpoint_url', 'AWS')}; check the network."
        )
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code = error.get("Code", "")
        message = " ".join(str(error.get("Message", "")).split())
        if code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId"):
            return UsageError(
                f"{action}: your AWS credentials have expired or are invalid ({code}); "
                "refresh them (e.g. 'aws sso login') and try again."
            )
        if (
            code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")
            or "not authorized" in message
        ):
            match = _NOT_AUTHORIZED.search(message)
            permission = match.group(1) if match else "the required permission"
            return AiopsError(
                f"{action}: access denied — your identity lacks {permission}. "
                f"Ask for it to be granted (AWS said: {message or code})."
            )
        if code == "ResourceLimitExceeded" or "quota" in message.lower():
            return AiopsError(
                f"{action}: a service quota stops this ({message}). Request an increase in "
                "Service Quotas (SageMaker) for that quota, or choose another instance type."
            )
        if code in ("ValidationException", "ValidationError"):
            return UsageError(f"{action}: AWS rejected the request: {message}")
        return AiopsError(f"{action}: {code or 'AWS error'}: {message}")
    return AiopsError(f"{action}: {err}")
