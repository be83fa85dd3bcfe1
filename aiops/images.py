"""The one source of SageMaker framework image URIs: the SageMaker SDK's own tables, read offline.

``sagemaker-core`` ships ``sagemaker/core/image_uri_config/<framework>.json`` (registry account per
region, repository, Python versions, tag parts); ``sagemaker.core.image_uris.retrieve`` joins them
into a URI. Importing the SDK costs ~1.5 s and a large dependency tree, so the JSON files are read
as files (the package is located with ``importlib.util.find_spec``, which runs none of it) and the
URIs are joined here the way ``retrieve`` joins them. Answers are cached in
``<home>/cache/image-uris.json`` when a cache folder is given.

One difference from the SDK, on purpose: the processor (``cpu`` / ``gpu``) is decided by the GPU
table (``aiops/data/gpus.json``: a family with NVIDIA GPUs runs the CUDA image), not by the
family's first letter, so ``ml.g4ad.*`` (AMD GPUs, no CUDA) gets the CPU image.

Used by remote training (``training/``: the PyTorch and Hugging Face training images) and by the
stack (``infra/``: PyTorch, Hugging Face, LMI and TGI images).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path

from aiops.errors import ConfigError
from aiops.extras import require_extra
from aiops.stack import dns_suffix

#: ``endpoint.container`` -> the SDK framework of its image
LLM_FRAMEWORKS = {"lmi": "djl-lmi", "tgi": "huggingface-llm"}
#: the Hugging Face inference container's table: transformers versions, each over PyTorch base versions
HUGGINGFACE_FRAMEWORK = "huggingface"
_CACHE_FILE = "image-uris.json"


class ImageNotFound(ConfigError):
    """No image for that combination. ``field`` names what to change ('version', 'base_version',
    'py_version', 'region', 'processor'); ``reason`` is the line without the caller's option names."""

    def __init__(self, reason: str, *, field: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _package_dirs(name: str) -> list[Path]:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


@cache
def sdk_table(framework: str) -> dict:
    """``sagemaker/core/image_uri_config/<framework>.json`` of the installed sagemaker-core."""
    for folder in _package_dirs("sagemaker"):
        path = folder / "core" / "image_uri_config" / f"{framework}.json"
        if path.is_file():
            return json.loads(path.read_text())
    raise require_extra(
        "images",
        "resolving a container image URI",
        missing="the SageMaker SDK's tables (sagemaker-core)",
        instead="name the image yourself (--image-uri, or endpoint.image.uri in the stack)",
    )


def scope_table(framework: str, scope: str) -> dict:
    """The table of one image scope (``training``, ``inference``); tables without scopes are their own."""
    data = sdk_table(framework)
    return (
        data[scope] if scope in data and isinstance(data[scope], dict) and "versions" in data[scope] else data
    )


def known_versions(framework: str, scope: str) -> list[str]:
    table = scope_table(framework, scope)
    return sorted(set(table.get("version_aliases", {})) | set(table["versions"]) | {"latest"})


def _release(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def _label(framework: str, scope: str) -> str:
    names = {"pytorch": f"PyTorch {scope}", "huggingface": f"Hugging Face {scope}"}
    return names.get(framework, framework)


def full_version(framework: str, scope: str, version: str) -> str:
    table = scope_table(framework, scope)
    full = table.get("version_aliases", {}).get(version, version)
    if (
        full == "latest" and "latest" not in table["versions"]
    ):  # the newest release, as the SDK's LLM helpers pick
        full = max(table["versions"], key=_release)
    if full not in table["versions"]:
        raise ImageNotFound(
            f"no {_label(framework, scope)} image known for it; allowed: "
            f"{', '.join(known_versions(framework, scope))}",
            field="version",
        )
    return full


def version_entry(framework: str, scope: str, version: str) -> tuple[str, dict]:
    full = full_version(framework, scope, version)
    return full, scope_table(framework, scope)["versions"][full]


# --------------------------------------------------------------------------- processor


def instance_family(instance_type: str) -> str:
    """``ml.g5.xlarge`` -> ``g5`` (``g5.xlarge`` too)."""
    parts = instance_type.split(".")
    return parts[1] if parts[0] == "ml" and len(parts) >= 3 else parts[0]


@lru_cache(maxsize=1)
def cuda_families() -> frozenset[str]:
    """The instance families with NVIDIA GPUs, from the GPU table (aiops/data/gpus.json)."""
    from aiops.gpufit import load_gpus

    return frozenset(
        instance_family(s.instance_type) for s in load_gpus().all() if s.gpu_model.startswith("NVIDIA")
    )


def processor_for(instance_type: str | None, available: Sequence[str] | None = ("cpu", "gpu")) -> str | None:
    """The image's processor: ``gpu`` for a family with NVIDIA GPUs (the GPU table), ``cpu``
    otherwise; None for images without one (LMI); the only one when there is one; ``cpu`` for
    serverless (no instance type)."""
    available = list(available or [])
    if not available:
        return None
    if len(available) == 1:
        return available[0]
    if instance_type is None:
        return "cpu"
    family = instance_family(instance_type)
    if family in available:  # images built for one family carry its name (the SDK's rule)
        return family
    if family.startswith(("inf", "trn")):
        raise ImageNotFound(
            f"{instance_type} runs AWS Neuron images, which this framework table does not have",
            field="processor",
        )
    return "gpu" if family in cuda_families() and "gpu" in available else "cpu"


# --------------------------------------------------------------------------- URIs


def registry(framework: str, scope: str, version: str, region: str) -> str | None:
    """The registry account of that image in that region (None: not published there)."""
    return version_entry(framework, scope, version)[1].get("registries", {}).get(region)


def image_uri(
    framework: str,
    *,
    scope: str,
    region: str,
    version: str,
    py_version: str | None = None,
    instance_type: str | None = None,
    pin: bool = False,
) -> str:
    """The URI ``sagemaker.core.image_uris.retrieve(framework, region, version, py_version,
    instance_type, image_scope=scope)`` gives, but for the processor rule (see the module).

    The tag carries the version as asked (the SDK's rule: ``2.5`` -> ``:2.5-gpu-py311``); ``pin``
    puts the full version the alias stands for instead (``:2.5.1-gpu-py311``), as the stack does."""
    table = scope_table(framework, scope)
    full, entry = version_entry(framework, scope, version)
    py_versions = entry.get("py_versions") or table.get("py_versions") or []
    if py_version is None and len(py_versions) == 1:
        py_version = py_versions[0]
    if py_versions and py_version not in py_versions:
        raise ImageNotFound(
            f"{_label(framework, scope)} {full} images exist for {', '.join(py_versions)} only",
            field="py_version",
        )
    entry = entry.get(py_version) or entry if py_version else entry
    account = entry["registries"].get(region)
    if account is None:
        raise ImageNotFound(
            f"no {_label(framework, scope)} {full} image is published there; pick another region",
            field="region",
        )
    processor = processor_for(instance_type, table.get("processors") or entry.get("processors"))
    container = (entry.get("container_version") or {}).get(processor) if processor else None
    tag_version = full if pin or version == "latest" else version
    parts = (entry.get("tag_prefix", tag_version), processor, py_version if py_versions else None, container)
    tag = "-".join(x for x in parts if x)
    return f"{account}.dkr.ecr.{region}.{dns_suffix(region)}/{entry['repository']}:{tag}"


def pytorch_image_uri(
    *,
    scope: str,
    region: str,
    version: str,
    py_version: str,
    instance_type: str | None,
    cache_dir: Path | None = None,
    pin: bool = False,
) -> str:
    """The PyTorch DLC (``training`` or ``inference``), cached in ``<cache_dir>/image-uris.json``."""
    cache = cache_dir / _CACHE_FILE if cache_dir is not None else None
    key = "|".join(
        (scope, region, version, py_version, instance_type or "serverless") + (("pinned",) if pin else ())
    )
    known: dict[str, str] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except ValueError:
            known = {}
    if key in known:
        return known[key]
    uri = image_uri(
        "pytorch",
        scope=scope,
        region=region,
        version=version,
        py_version=py_version,
        instance_type=instance_type,
        pin=pin,
    )
    if cache is not None:
        known[key] = uri
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1, sort_keys=True))
    return uri


def llm_image_uri(kind: str, *, region: str, version: str) -> str:
    """The LMI (``djl-lmi``) or TGI (``huggingface-llm``, its GPU image) URI."""
    return image_uri(LLM_FRAMEWORKS[kind], scope="inference", region=region, version=version)


def huggingface_base(transformers_version: str, pytorch_version: str | None) -> tuple[str, str, dict]:
    """(full transformers version, full ``pytorchX.Y.Z`` base, its table entry) of the Hugging Face
    inference image; ``pytorch_version`` None: the one base the table pairs with that transformers."""
    full, entry = version_entry(HUGGINGFACE_FRAMEWORK, "inference", transformers_version)
    bases = sorted(k for k in entry if k.startswith("pytorch"))
    if pytorch_version is None:
        if len(bases) != 1:
            raise ImageNotFound(
                f"transformers {full} images exist for PyTorch {', '.join(b[7:] for b in bases)}: pick one",
                field="base_version",
            )
        base = bases[0]
    else:
        wanted = f"pytorch{pytorch_version}"
        base = entry.get("version_aliases", {}).get(wanted, wanted)
        if base not in bases:
            raise ImageNotFound(
                f"no Hugging Face inference image pairs transformers {full} with PyTorch {pytorch_version}; "
                f"allowed: {', '.join(b[7:] for b in bases) or 'none (a TensorFlow-only release)'}",
                field="base_version",
            )
    return full, base, entry[base]


def huggingface_image_uri(
    *, region: str, transformers_version: str, pytorch_version: str | None, instance_type: str | None
) -> str:
    """The Hugging Face inference DLC (``huggingface-pytorch-inference``), as
    ``sagemaker.core.image_uris.retrieve("huggingface", region, version=transformers_version,
    base_framework_version="pytorchX.Y.Z", instance_type=..., image_scope="inference")`` gives it, with
    both full versions in the tag (``2.6.0-transformers4.51.3-gpu-py312-cu124-ubuntu22.04``) and the
    processor from the GPU table (see the module)."""
    full, base, entry = huggingface_base(transformers_version, pytorch_version)
    account = entry["registries"].get(region)
    if account is None:
        raise ImageNotFound(
            f"no Hugging Face inference image of transformers {full} is published there; pick another region",
            field="region",
        )
    table = scope_table(HUGGINGFACE_FRAMEWORK, "inference")
    processor = processor_for(instance_type, table.get("processors") or entry.get("processors"))
    container = (entry.get("container_version") or {}).get(processor) if processor else None
    py_version = max(entry.get("py_versions") or [""], key=lambda v: _release(v.removeprefix("py")))
    parts = (f"{base.removeprefix('pytorch')}-transformers{full}", processor, py_version, container)
    tag = "-".join(x for x in parts if x)
    return f"{account}.dkr.ecr.{region}.{dns_suffix(region)}/{entry['repository']}:{tag}"


# --------------------------------------------------------------------------- Hugging Face training


def huggingface_pytorch_versions(transformers_version: str) -> list[str]:
    """The PyTorch versions the Hugging Face training images of that transformers version are built
    on, as the SDK names them (``pytorch2.5.1`` -> ``2.5.1``); ImageNotFound for an unknown version."""
    full, entry = version_entry(HUGGINGFACE_FRAMEWORK, "training", transformers_version)
    return [key[len("pytorch") :] for key in entry if key.startswith("pytorch")]


def huggingface_pytorch_version(transformers_version: str) -> str:
    """The PyTorch version of that transformers version's image, derived as the SDK derives it
    (``ModelBuilder``'s ``_get_supported_version``): the highest of the table's, shortened to
    major.minor when the transformers version is given as major.minor."""
    versions = huggingface_pytorch_versions(transformers_version)
    if not versions:
        raise ImageNotFound(
            f"the Hugging Face training images of transformers {transformers_version} are not built on "
            "PyTorch",
            field="version",
        )
    if len(transformers_version.split(".")) == 2:
        versions = [".".join(v.split(".")[:-1]) for v in versions]
    return sorted(versions, reverse=True)[0]


def huggingface_image_entry(transformers_version: str, pytorch_version: str) -> tuple[str, dict]:
    """(the full transformers version, the table's entry of its PyTorch image), as ``retrieve``
    reads them: the PyTorch version through the entry's aliases (``pytorch2.5`` -> ``pytorch2.5.1``)."""
    full, entry = version_entry(HUGGINGFACE_FRAMEWORK, "training", transformers_version)
    base = f"pytorch{pytorch_version}"
    base = entry.get("version_aliases", {}).get(base, base)
    if base not in entry or base == "version_aliases":
        known = sorted(set(huggingface_pytorch_versions(transformers_version)))
        raise ImageNotFound(
            f"the Hugging Face training images of transformers {full} are built on PyTorch "
            f"{', '.join(known)} only, not {pytorch_version}",
            field="pytorch_version",
        )
    return full, entry[base]


def huggingface_training_image_uri(
    *,
    region: str,
    transformers_version: str,
    pytorch_version: str,
    py_version: str | None,
    instance_type: str,
) -> str:
    """The URI the SDK v2 ``HuggingFace`` estimator trains with (``training_image_uri()``): the tag
    is ``<pytorch as given>-transformers<transformers as given>-gpu-<py>-<cuda/os>``, so 4.49 / 2.5
    gives the image's short tag ``2.5-transformers4.49-...`` and 4.49.0 / 2.5.1 its full one.
    sagemaker-core 2.x's ``get_training_image_uri`` pairs the full transformers version with a short
    PyTorch one (``2.5-transformers4.49.0-...``), a tag neither the DLC image list nor SDK v2 uses.
    The images are GPU only (the table's one processor): an instance type without NVIDIA GPUs is
    refused, as the SDK does."""
    full, entry = huggingface_image_entry(transformers_version, pytorch_version)
    py_versions = entry.get("py_versions") or []
    if py_version is None and py_versions:
        py_version = py_versions[-1]
    if py_versions and py_version not in py_versions:
        raise ImageNotFound(
            f"the Hugging Face training image of transformers {full} / PyTorch {pytorch_version} exists "
            f"for {', '.join(py_versions)} only",
            field="py_version",
        )
    account = entry["registries"].get(region)
    if account is None:
        raise ImageNotFound(
            f"no Hugging Face training image of transformers {full} is published there; pick another region",
            field="region",
        )
    processors = scope_table(HUGGINGFACE_FRAMEWORK, "training").get("processors") or ["gpu"]
    processor = processor_for(instance_type, ["cpu", "gpu"])
    if processor not in processors:
        raise ImageNotFound(
            f"the Hugging Face training images are {'/'.join(processors)} only and {instance_type} has "
            "no NVIDIA GPU; pick a GPU instance type (e.g. ml.g5.xlarge)",
            field="processor",
        )
    container = (entry.get("container_version") or {}).get(processor)
    tag = "-".join(
        x
        for x in (f"{pytorch_version}-transformers{transformers_version}", processor, py_version, container)
        if x
    )
    return f"{account}.dkr.ecr.{region}.{dns_suffix(region)}/{entry['repository']}:{tag}"
