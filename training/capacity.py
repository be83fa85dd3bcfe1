"""Capacity-aware launch: what counts as "no capacity for this instance type", the name each
attempt gets, and what one attempt came to (`Attempt`, one row of the summary table).

SageMaker says "no capacity" two ways: CreateTrainingJob is refused with ResourceLimitExceeded (an
account quota at 0, or the instances it asks for above it), or the job is created and then fails
with a capacity FailureReason: on-demand, ``CapacityError: Unable to provision requested ML compute
capacity. Please retry using a different ML instance type.`` (the SageMaker SDK raises its
``CapacityError`` on the same word); EC2's ``InsufficientInstanceCapacity`` for spot capacity. Both
mean: the same job may run on another type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiops.errors import AiopsError, UsageError

# In a FailureReason: the SDK's test ("CapacityError" in the reason) and EC2's error code.
CAPACITY_FAILURES = ("CapacityError", "InsufficientInstanceCapacity")
MAX_JOB_NAME = 63


class CapacityRefused(AiopsError):
    """CreateTrainingJob was refused with ResourceLimitExceeded: no job exists. `staged`: what the
    submission had uploaded (remote.Staged), for the next attempt."""

    staged: Any = None


def is_capacity_failure(reason: str | None) -> bool:
    return bool(reason) and any(marker in reason for marker in CAPACITY_FAILURES)  # type: ignore[operator]


def attempt_name(job_name: str, attempt: int) -> str:
    """The first attempt keeps the job's name; attempt N is `<name>-tryN` (within 63 characters)."""
    if attempt <= 1:
        return job_name
    suffix = f"-try{attempt}"
    return job_name[: MAX_JOB_NAME - len(suffix)].rstrip("-") + suffix


def check_max_attempts(max_attempts: int | None, types: list[str]) -> int:
    """How many jobs at most: one per type of the list, fewer with `--max-attempts`."""
    if max_attempts is None:
        return len(types)
    if max_attempts < 1:
        raise UsageError(f"--max-attempts {max_attempts}: needs at least 1.")
    return min(max_attempts, len(types))


@dataclass
class Attempt:
    """One job of a capacity-aware launch."""

    job_name: str
    instance_type: str
    outcome: str  # ResourceLimitExceeded | the job's final status (Completed, Failed, ...) | InProgress
    detail: str = ""  # the refusal or the failure reason
    estimate_usd: float | None = None  # the worst case shown before this attempt

    @property
    def capacity(self) -> bool:
        return self.outcome == "ResourceLimitExceeded" or is_capacity_failure(self.detail)
