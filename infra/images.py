"""The endpoint's container image URIs, from the one source (``aiops.images``: the SageMaker SDK's
tables, read offline) with the stack's option names in the errors. No sagemaker import.

A stack can always name its own image (``endpoint.image.uri``) or build its own server image into
the ECR repository the stack creates.
"""

from __future__ import annotations

from aiops import images
from aiops.errors import ConfigError
from aiops.images import LLM_FRAMEWORKS, ImageNotFound

__all__ = [
    "LLM_FRAMEWORKS",
    "check_llm_version",
    "endpoint_image_repositories",
    "endpoint_image_uri",
    "llm_image_uri",
    "pytorch_inference_uri",
    "registry_account",
]

_OPTION = {
    "version": "aiops:endpoint.image.frameworkVersion",
    "py_version": "aiops:endpoint.image.pyVersion",
    "region": "aws:region",
    "processor": "aiops:endpoint.instanceType",
}


def _config_error(err: ImageNotFound, value: str | None, *, version_option: str | None = None) -> ConfigError:
    option = version_option if err.field == "version" and version_option else _OPTION[err.field]
    return ConfigError(f"{option}={value!r}: {err.reason} (or set endpoint.image.uri)")


def pytorch_inference_uri(*, region: str, version: str, py_version: str, instance_type: str | None) -> str:
    """The DLC image URI, as ``image_uris.retrieve("pytorch", image_scope="inference", ...)`` gives it
    (but for the processor: decided by the GPU table, see aiops.images), with the full version in
    the tag (``2.5`` -> ``2.5.1``): the endpoint names the exact release its frameworkVersion stands for."""
    try:
        return images.pytorch_image_uri(
            scope="inference",
            region=region,
            version=version,
            py_version=py_version,
            instance_type=instance_type,
            pin=True,
        )
    except ImageNotFound as err:
        value = {"version": version, "py_version": py_version, "region": region}.get(err.field, instance_type)
        raise _config_error(err, value) from None


def registry_account(region: str, version: str) -> str | None:
    try:
        return images.registry("pytorch", "inference", version, region)
    except ImageNotFound as err:
        raise _config_error(err, version) from None


def check_llm_version(kind: str, version: str) -> None:
    """ValueError (the config validators' way) for an LMI/TGI version the SDK's table does not know."""
    try:
        images.full_version(LLM_FRAMEWORKS[kind], "inference", version)
    except ImageNotFound as err:
        raise ValueError(f"llm.version={version!r}: {err.reason} (or set image.uri)") from None


def llm_image_uri(*, kind: str, region: str, version: str) -> str:
    """The LMI (``djl-lmi``) or TGI (``huggingface-llm``) image URI, as
    ``image_uris.retrieve(framework, region, version, instance_type=<a GPU type>)`` gives it."""
    try:
        return images.llm_image_uri(kind, region=region, version=version)
    except ImageNotFound as err:
        raise _config_error(
            err, region if err.field == "region" else version, version_option="aiops:endpoint.llm.version"
        ) from None


def endpoint_image_uri(endpoint, region: str) -> str:
    """The framework image of the endpoint's container (``pytorch``, ``lmi``, ``tgi``); a ``custom``
    container names its own (``image.uri``), which the caller uses instead."""
    if endpoint.container in LLM_FRAMEWORKS:
        return llm_image_uri(kind=endpoint.container, region=region, version=endpoint.llm.version)
    return pytorch_inference_uri(
        region=region,
        version=endpoint.image.framework_version,
        py_version=endpoint.image.py_version,
        instance_type=None if endpoint.serverless.enabled else endpoint.instance_type,
    )


def endpoint_image_repositories(endpoint, region: str) -> tuple[tuple[str, str], ...]:
    """(registry account, repository) the role must pull from for an LLM container; () otherwise."""
    if endpoint.container not in LLM_FRAMEWORKS:
        return ()
    framework = LLM_FRAMEWORKS[endpoint.container]
    _, entry = images.version_entry(framework, "inference", endpoint.llm.version)
    account = entry["registries"].get(region)
    return ((account, entry["repository"]),) if account else ()
