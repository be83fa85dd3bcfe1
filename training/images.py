"""The training image for a region, framework, version and instance type: ``aiops.images`` (the one
source: the SageMaker SDK's tables, read offline, cached in ``<home>/cache/image-uris.json``) with
the CLI's options in its errors.

Two frameworks, as the SDK's estimators: ``pytorch`` (the PyTorch DLC, ``--framework-version``)
and ``huggingface`` (the Hugging Face DLC, ``--transformers-version``; its PyTorch version is
``--framework-version`` when given, else derived from the table as the SDK derives it). Both images
run the same sagemaker-training toolkit entry (``sagemaker_pytorch_container.training:main``), so
the script's contract is the same; what differs is the transformers the image has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiops import images
from aiops.errors import UsageError

FRAMEWORKS = ("pytorch", images.HUGGINGFACE_FRAMEWORK)


@dataclass(frozen=True)
class Framework:
    """The framework of a job's image, resolved: ``pytorch_version`` is the image's PyTorch (the
    SDK's ``framework_version`` / ``pytorch_version``); for Hugging Face, the transformers version
    as asked and the full one the image has, and its Python."""

    name: str = "pytorch"
    pytorch_version: str | None = None
    transformers_version: str | None = None  # as asked (major.minor or full)
    image_transformers: str | None = None  # the full version the image has
    py_version: str | None = None

    @property
    def huggingface(self) -> bool:
        return self.name == images.HUGGINGFACE_FRAMEWORK


def _versions_line() -> str:
    table = images.scope_table(images.HUGGINGFACE_FRAMEWORK, "training")
    return ", ".join(sorted(table["versions"], key=images._release))


def resolve_framework(
    framework: str | None, transformers_version: str | None, framework_version: str | None
) -> Framework:
    """`--framework`, `--transformers-version` and `--framework-version` as one image choice
    (UsageError, one line, for a combination with no image). `--transformers-version` alone means
    huggingface, as the SDK's HuggingFace estimator takes it."""
    name = framework or (images.HUGGINGFACE_FRAMEWORK if transformers_version else "pytorch")
    if name not in FRAMEWORKS:
        raise UsageError(f"--framework {name}: choose one of {', '.join(FRAMEWORKS)}.")
    if name == "pytorch":
        if transformers_version:
            raise UsageError(
                "--transformers-version picks a Hugging Face image: use it with --framework huggingface "
                "(or drop it: the PyTorch image pip-installs requirements.txt)."
            )
        return Framework(name, pytorch_version=framework_version)
    if not transformers_version:
        raise UsageError(
            "--framework huggingface needs --transformers-version; the Hugging Face training images "
            f"exist for transformers {_versions_line()}."
        )
    try:
        full = images.full_version(images.HUGGINGFACE_FRAMEWORK, "training", transformers_version)
    except images.ImageNotFound:
        raise UsageError(
            f"--transformers-version {transformers_version}: no Hugging Face training image has it; "
            f"the images exist for transformers {_versions_line()} (or their major.minor)."
        ) from None
    try:
        pytorch = framework_version or images.huggingface_pytorch_version(transformers_version)
        _, entry = images.huggingface_image_entry(transformers_version, pytorch)
    except images.ImageNotFound as err:
        raise UsageError(
            f"--framework-version {framework_version}: {err.reason}; drop --framework-version to get "
            "the image's own."
        ) from None
    py_versions = entry.get("py_versions") or [None]
    return Framework(
        name,
        pytorch_version=pytorch,
        transformers_version=transformers_version,
        image_transformers=full,
        py_version=py_versions[-1],
    )


def installed_transformers_note(framework: Framework) -> str | None:
    """A local run of a Hugging Face job runs on this machine's transformers: the line saying so
    when it is not the image's (None when they agree, or for a PyTorch job)."""
    if not framework.huggingface:
        return None
    from importlib import metadata

    try:
        here = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        here = None
    if here == framework.image_transformers:
        return None
    return (
        f"ran on the installed transformers {here or '(none installed)'}, not the "
        f"{framework.image_transformers} of the Hugging Face image (--transformers-version "
        f"{framework.transformers_version}); a remote job runs on the image's."
    )


def pytorch_image_uri(
    *, scope: str, region: str, version: str, py_version: str, instance_type: str, cache_dir: Path
) -> str:
    try:
        return images.pytorch_image_uri(
            scope=scope,
            region=region,
            version=version,
            py_version=py_version,
            instance_type=instance_type,
            cache_dir=cache_dir,
        )
    except images.ImageNotFound as err:
        raise UsageError(
            f"no PyTorch {scope} image for version {version} / {py_version} / {instance_type} in {region}: "
            f"{err.reason}. Choose another --framework-version, or pass --image-uri."
        ) from None


def huggingface_image_uri(framework: Framework, *, region: str, instance_type: str) -> str:
    assert framework.huggingface and framework.transformers_version and framework.pytorch_version
    try:
        return images.huggingface_training_image_uri(
            region=region,
            transformers_version=framework.transformers_version,
            pytorch_version=framework.pytorch_version,
            py_version=framework.py_version,
            instance_type=instance_type,
        )
    except images.ImageNotFound as err:
        raise UsageError(
            f"no Hugging Face training image for transformers {framework.transformers_version} / PyTorch "
            f"{framework.pytorch_version} / {instance_type} in {region}: {err.reason}. Pass --image-uri "
            "for an image of your own."
        ) from None


def training_image_uri(
    framework: Framework, *, region: str, version: str, py_version: str, instance_type: str, cache_dir: Path
) -> str:
    """The job's image: the Hugging Face DLC for a huggingface framework, else the PyTorch DLC of
    `version`."""
    if framework.huggingface:
        return huggingface_image_uri(framework, region=region, instance_type=instance_type)
    return pytorch_image_uri(
        scope="training",
        region=region,
        version=version,
        py_version=py_version,
        instance_type=instance_type,
        cache_dir=cache_dir,
    )
