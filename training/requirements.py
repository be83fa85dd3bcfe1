"""`requirements.txt` in the source dir: the container pip-installs it; locally we only check it.

aiops never installs into the user's environment: it reports what is missing and how to add it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class RequirementProblem:
    requirement: str
    reason: str  # "not installed" or "installed X, needs SPEC"


def check_requirements(path: Path) -> list[RequirementProblem]:
    """Each requirement of the file that the current environment does not satisfy."""
    from packaging.requirements import InvalidRequirement, Requirement

    problems: list[RequirementProblem] = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-", "--")):
            continue  # comments and pip options (-r, --index-url, -e) are pip's business
        try:
            req = Requirement(line)
        except InvalidRequirement:
            problems.append(RequirementProblem(line, "not a requirement pip understands"))
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(RequirementProblem(line, "not installed"))
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(RequirementProblem(line, f"installed {installed}, needs {req.specifier}"))
    return problems
