"""The PyTorch training image for a region, version and instance type: ``aiops.images`` (the one
source: the SageMaker SDK's tables, read offline, cached in ``<home>/cache/image-uris.json``) with
the CLI's options in its errors."""

from __future__ import annotations

from pathlib import Path

from aiops import images
from aiops.errors import UsageError


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
