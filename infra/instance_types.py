"""What an instance type is: which families have NVIDIA GPUs, which have local NVMe storage, and
the shape of a SageMaker type's name. The stack config's checks and the components read them.
"""

from __future__ import annotations

import re

from aiops.images import cuda_families, instance_family

# SageMaker instance families whose ML storage is local NVMe, encrypted by the instance's hardware
# module: CreateEndpointConfig fails if a KmsKeyId is given for them (AWS API reference, KmsKeyId).
LOCAL_STORAGE_FAMILIES = (
    "g4dn",
    "g5",
    "g6",
    "g6e",
    "p3dn",
    "p4d",
    "p4de",
    "p5",
    "p5e",
    "p5en",
    "m5d",
    "c5d",
    "r5d",
    "m6id",
    "c6id",
    "r6id",
    "trn1",
    "inf2",
)
ML_INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9-]+\.[0-9a-z]+$")  # ml.<family>.<size>


def is_gpu_type(instance_type: str, prefix: str = "") -> bool:
    """A type of a family with NVIDIA GPUs. The families come from the one GPU table
    (``aiops/data/gpus.json`` through ``aiops.images.cuda_families``), the same one that picks the
    CUDA image and answers the fit check; EC2 names (``prefix=""``) share SageMaker's families."""
    parts = instance_type.split(".")
    if prefix:
        if parts[0] != prefix.rstrip("."):
            return False
        parts = parts[1:]
    return (
        len(parts) == 2 and re.fullmatch(r"[0-9a-z]+", parts[1]) is not None and parts[0] in cuda_families()
    )


def gpu_hint(prefix: str = "") -> str:
    return "a GPU type: " + ", ".join(f"{prefix}{f}.*" for f in sorted(cuda_families())[:6]) + ", ..."


def has_local_storage(instance_type: str) -> bool:
    return instance_family(instance_type) in LOCAL_STORAGE_FAMILIES
