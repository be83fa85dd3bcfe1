"""PyTorch inference container image URIs, from a small table shipped with aiops.

Why a table and not ``sagemaker.core.image_uris.retrieve``: the SDK is the well-kept source, but
importing it costs ~2 s and pulls a large dependency tree; the offline preview would pay that on
every run. ``pytorch_inference_images.json`` holds, for the PyTorch versions aiops supports, the
same data the SDK uses (registry account per region, repository, Python versions), copied from
``sagemaker-core`` (the version is recorded in the file's ``source``). To refresh it, see
docs/infra.md ("Image URIs"). A stack can always name its own image (``endpoint.image.uri``) or
build its own server image into the ECR repository the stack creates.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from aiops.errors import ConfigError

_TABLE = Path(__file__).with_name("pytorch_inference_images.json")


@lru_cache(maxsize=1)
def table() -> dict:
    return json.loads(_TABLE.read_text())


def known_regions() -> frozenset[str]:
    regions: set[str] = set()
    for entry in table()["versions"].values():
        regions.update(entry["registries"])
    return frozenset(regions)


def resolve_version(version: str) -> str:
    data = table()
    full = data["version_aliases"].get(version, version)
    if full not in data["versions"]:
        allowed = sorted(set(data["version_aliases"]) | set(data["versions"]))
        raise ConfigError(
            f"aiops:endpoint.image.frameworkVersion={version!r}: no PyTorch inference image known for it; "
            f"allowed: {', '.join(allowed)} (or set endpoint.image.uri)"
        )
    return full


def processor_for(instance_type: str | None) -> str:
    """'gpu' for ml.g*/ml.p* instance types, 'cpu' otherwise (serverless has no instance type)."""
    if instance_type is None:
        return "cpu"
    family = instance_type.split(".")[1] if instance_type.count(".") >= 2 else instance_type
    return "gpu" if family[:1] in ("g", "p") else "cpu"


def pytorch_inference_uri(*, region: str, version: str, py_version: str, instance_type: str | None) -> str:
    """The DLC image URI, as ``image_uris.retrieve("pytorch", image_scope="inference", ...)`` gives it."""
    full = resolve_version(version)
    entry = table()["versions"][full]
    if py_version not in entry["py_versions"]:
        raise ConfigError(
            f"aiops:endpoint.image.pyVersion={py_version!r}: PyTorch {full} images exist for "
            f"{', '.join(entry['py_versions'])} only"
        )
    account = entry["registries"].get(region)
    if account is None:
        raise ConfigError(
            f"aws:region={region!r}: no PyTorch {full} inference image is published there; "
            f"pick another region or set endpoint.image.uri"
        )
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return (
        f"{account}.dkr.ecr.{region}.{domain}/{entry['repository']}:"
        f"{full}-{processor_for(instance_type)}-{py_version}"
    )


def registry_account(region: str, version: str) -> str | None:
    return table()["versions"][resolve_version(version)]["registries"].get(region)


# --------------------------------------------------------------------------- LLM containers

_LLM_TABLE = Path(__file__).with_name("llm_images.json")
LLM_FRAMEWORKS = {"lmi": "djl-lmi", "tgi": "huggingface-llm"}


@lru_cache(maxsize=1)
def llm_table() -> dict:
    return json.loads(_LLM_TABLE.read_text())


def _llm_entry(kind: str, version: str) -> tuple[str, dict]:
    data = llm_table()[kind]
    full = data["version_aliases"].get(version, version)
    if full not in data["versions"]:
        allowed = sorted(set(data["version_aliases"]) | set(data["versions"]))
        raise ConfigError(
            f"aiops:endpoint.llm.version={version!r}: no {data['framework']} image known for it; "
            f"allowed: {', '.join(allowed)} (or set endpoint.image.uri)"
        )
    return full, data["versions"][full]


def llm_image_uri(*, kind: str, region: str, version: str) -> str:
    """The LMI (``djl-lmi``) or TGI (``huggingface-llm``) image URI, as
    ``image_uris.retrieve(framework, region, version, instance_type=<a GPU type>)`` gives it."""
    full, entry = _llm_entry(kind, version)
    account = entry["registries"].get(region)
    if account is None:
        raise ConfigError(
            f"aws:region={region!r}: no {LLM_FRAMEWORKS[kind]} {full} image is published there; "
            f"pick another region or set endpoint.image.uri"
        )
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    if kind == "tgi":  # <tag_prefix>-gpu-<py>-<container version>, as the SDK joins them
        tag = f"{entry['tag_prefix']}-gpu-{entry['py_versions'][0]}-{entry['container_version']}"
    else:  # djl-lmi tags carry no processor: the tag prefix is the tag
        tag = entry["tag_prefix"]
    return f"{account}.dkr.ecr.{region}.{domain}/{entry['repository']}:{tag}"


def llm_repository(kind: str, version: str) -> tuple[str, str]:
    """(repository, registry account per region table) of an LLM image, for the role's pull rights."""
    _, entry = _llm_entry(kind, version)
    return entry["repository"], entry["registries"]


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
    repository, registries = llm_repository(endpoint.container, endpoint.llm.version)
    account = registries.get(region)
    return ((account, repository),) if account else ()
