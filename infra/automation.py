"""`aiops deploy/preview/destroy/outputs`: the real program through the Pulumi Automation API.

The Automation API drives the ``pulumi`` CLI binary. State goes to a local file backend by
default (``file://<aiops home>/pulumi``: no Pulumi Cloud account), secrets use the passphrase
provider (``PULUMI_CONFIG_PASSPHRASE`` or ``PULUMI_CONFIG_PASSPHRASE_FILE``). The program runs
in-process (an inline program calling the same ``program.build``), reading the stack's config
from ``Pulumi.<stack>.yaml`` in the project folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiops.infra.config import PROJECT

from aiops.errors import UsageError

INSTALL_HINT = (
    "the pulumi CLI is not installed (the Automation API runs it): install it with "
    "`curl -fsSL https://get.pulumi.com | sh` (see https://www.pulumi.com/docs/install/), "
    "or use `aiops preview --offline`, which needs no CLI"
)
PASSPHRASE_VARS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")


def find_pulumi(env: dict[str, str] | None = None) -> Path | None:
    """The pulumi binary: on PATH, else where the installer puts it (``$PULUMI_HOME/bin``,
    ``~/.pulumi/bin``)."""
    env = dict(os.environ if env is None else env)
    found = shutil.which("pulumi", path=env.get("PATH"))
    if found:
        return Path(found)
    homes = [env.get("PULUMI_HOME"), str(Path.home() / ".pulumi")]
    for home in filter(None, homes):
        candidate = Path(home) / "bin" / "pulumi"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def default_backend(home: Path) -> str:
    return (Path(home).expanduser().resolve() / "pulumi").as_uri()


@dataclass
class WorkspaceSpec:
    """What the Automation API is given; built and checked without the pulumi binary."""

    stack: str
    project_dir: Path
    backend_url: str
    pulumi_binary: Path
    env_vars: dict[str, str] = field(default_factory=dict)
    secrets_provider: str = "passphrase"


def workspace_spec(
    *, stack: str, project_dir: Path, backend: str | None, home: Path, env: dict[str, str] | None = None
) -> WorkspaceSpec:
    env = dict(os.environ if env is None else env)
    binary = find_pulumi(env)
    if binary is None:
        raise UsageError(INSTALL_HINT)
    if not any(v in env for v in PASSPHRASE_VARS):
        raise UsageError(
            "set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE): the stack's secrets are "
            "encrypted with it (passphrase secrets provider)"
        )
    backend_url = backend or default_backend(home)
    if backend_url.startswith("file://"):
        Path(backend_url[len("file://") :]).mkdir(parents=True, exist_ok=True)
    env_vars = {"PULUMI_BACKEND_URL": backend_url, "PULUMI_SKIP_UPDATE_CHECK": "true"}
    for var in PASSPHRASE_VARS:
        if var in env:
            env_vars[var] = env[var]
    return WorkspaceSpec(
        stack=stack,
        project_dir=Path(project_dir).resolve(),
        backend_url=backend_url,
        pulumi_binary=binary,
        env_vars=env_vars,
    )


def inline_program() -> None:
    from aiops.infra.config import from_pulumi_config
    from aiops.infra.program import build, export

    export(build(from_pulumi_config()))


def open_stack(spec: WorkspaceSpec, program: Callable[[], None] = inline_program):
    """Create or select the stack (file backend, passphrase secrets) around the inline program."""
    from pulumi import automation as auto

    command = auto.PulumiCommand(root=str(spec.pulumi_binary.parent.parent))
    opts = auto.LocalWorkspaceOptions(
        work_dir=str(spec.project_dir),
        env_vars=spec.env_vars,
        secrets_provider=spec.secrets_provider,
        project_settings=auto.ProjectSettings(name=PROJECT, runtime="python"),
        pulumi_command=command,
    )
    return auto.create_or_select_stack(
        stack_name=spec.stack, project_name=PROJECT, program=program, opts=opts
    )


def model_config(uri: str, size_gb: float | None = None, program: str | None = None) -> dict[str, str]:
    """The stack-file keys `aiops deploy --model` sets: the model, its size (which sets the start-up
    timeouts and the volume), and its SAGEMAKER_PROGRAM when the training code names one (a
    model.tar.gz cannot; see `aiops.artifacts.endpoint.choose`)."""
    values = {f"{PROJECT}:endpoint.modelDataUrl": uri}
    if size_gb is not None:
        values[f"{PROJECT}:endpoint.modelSizeGb"] = str(size_gb)
    if program is not None:
        values[f"{PROJECT}:endpoint.program"] = program
    return values


def set_model(stack: Any, uri: str, size_gb: float | None = None, program: str | None = None) -> None:
    """Record the endpoint's model (size, program) in the stack file, so later deploys keep them."""
    from pulumi import automation as auto

    for key, value in model_config(uri, size_gb, program).items():
        stack.set_config(key, auto.ConfigValue(value=value), path=True)


def summarize(changes: dict[str, int] | None) -> str:
    changes = {k: v for k, v in (changes or {}).items() if k != "same" and v}
    return ", ".join(f"{v} to {k}" for k, v in sorted(changes.items())) or "no changes"


def event_printer(console: Any) -> Callable[[Any], None]:
    """Live resource events (one line per resource step outcome)."""

    def on_event(event: Any) -> None:
        pre = getattr(event, "resource_pre_event", None)
        out = getattr(event, "res_outcome_event", None)
        failed = getattr(event, "res_op_failed_event", None)
        diag = getattr(event, "diagnostic_event", None)
        if pre is not None and pre.metadata.op.value not in ("same", "read"):
            console.print(
                f"[dim]…[/dim] {pre.metadata.op.value:<8} "
                f"{pre.metadata.type} {pre.metadata.urn.split('::')[-1]}"
            )
        elif out is not None and out.metadata.op.value not in ("same", "read"):
            console.print(
                f"[green]✓[/green] {out.metadata.op.value:<8} "
                f"{out.metadata.type} {out.metadata.urn.split('::')[-1]}"
            )
        elif failed is not None:
            console.print(f"[red]✗ failed[/red] {failed.metadata.type} {failed.metadata.urn.split('::')[-1]}")
        elif diag is not None and diag.severity in ("error", "warning"):
            console.print(
                f"[{'red' if diag.severity == 'error' else 'yellow'}]{diag.severity}[/]: "
                f"{diag.message.strip()}"
            )

    return on_event
