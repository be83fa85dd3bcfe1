"""The deployed stack's outputs as the CLI reads them, without importing Pulumi.

`aiops deploy` / `aiops outputs` save the stack's outputs to `<home>/stacks/<stack>.outputs.json`;
remote training and deployments read their defaults (bucket, role, KMS key, region) from there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiops.errors import ConfigError


def outputs_path(home: Path, stack: str) -> Path:
    return home / "stacks" / f"{stack}.outputs.json"


def read_stack_outputs(home: Path, stack: str) -> dict[str, Any]:
    """The saved outputs, or {} when the stack was never deployed from here."""
    path = outputs_path(home, stack)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); run 'aiops outputs --stack {stack}' to refresh it.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object; run 'aiops outputs --stack {stack}' to refresh it.")
    return data


def write_stack_outputs(home: Path, stack: str, outputs: dict[str, Any]) -> Path:
    path = outputs_path(home, stack)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outputs, indent=2, sort_keys=True))
    return path
