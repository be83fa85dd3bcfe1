"""The PyTorch DLC image for a region, version and instance type, from the SageMaker SDK's tables.

`sagemaker.core.image_uris` (package `sagemaker-core`, the `images` extra) resolves offline but
costs ~1.5 s to import, so answers are cached in `<home>/cache/image-uris.json`: the SDK is imported
only when a combination is seen for the first time.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiops.errors import UsageError


def _cache_key(scope: str, region: str, version: str, py_version: str, instance_type: str) -> str:
    return "|".join((scope, region, version, py_version, instance_type))


def pytorch_image_uri(*, scope: str, region: str, version: str, py_version: str, instance_type: str,
                      cache_dir: Path) -> str:
    cache = cache_dir / "image-uris.json"
    key = _cache_key(scope, region, version, py_version, instance_type)
    known: dict[str, str] = {}
    if cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except ValueError:
            known = {}
    if key in known:
        return known[key]
    try:
        from sagemaker.core import image_uris
    except ImportError:
        raise UsageError(
            "resolving the PyTorch container image needs the SageMaker SDK's tables: "
            "pip install 'aiops[images]', or pass --image-uri."
        ) from None
    try:
        uri = image_uris.retrieve(
            "pytorch", region=region, version=version, py_version=py_version, instance_type=instance_type,
            image_scope=scope,
        )
    except ValueError as err:
        raise UsageError(
            f"no PyTorch {scope} image for version {version} / {py_version} / {instance_type} in {region}: "
            f"{' '.join(str(err).split())} Choose another --framework-version, or pass --image-uri."
        ) from None
    known[key] = uri
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known, indent=1, sort_keys=True))
    return uri
