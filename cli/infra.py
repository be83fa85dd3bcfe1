"""`aiops preview`, `aiops deploy`, `aiops destroy`, `aiops outputs`, `aiops cost`: the infrastructure.

Thin commands: parse, call one function of ``aiops.infra.commands``, render. pulumi, pulumi_aws and
boto3 are imported inside the functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

STACK_HELP = (
    "Stack name: its config is Pulumi.<stack>.yaml in the project folder (default: AIOPS_STACK, else dev)."
)
DIR_HELP = "Project folder (holds Pulumi.yaml and the stack files)."
BACKEND_HELP = "State backend URL (default: a local file backend under the aiops home)."

# The options every stack command shares, declared once.
StackOpt = Annotated[str | None, typer.Option("--stack", "-s", help=STACK_HELP)]
ProjectDirOpt = Annotated[Path, typer.Option("--project-dir", "-C", help=DIR_HELP)]
BackendOpt = Annotated[str | None, typer.Option("--backend", help=BACKEND_HELP)]


def _console(err: bool = False):
    import sys

    from rich.console import Console

    stream = sys.stderr if err else sys.stdout
    return Console(stderr=err, highlight=False, width=None if stream.isatty() else 160)


def _stack_name(stack: str | None) -> str:
    """The one rule (aiops.stack.resolve_stack): --stack > AIOPS_STACK / aiops.toml > dev."""
    from aiops.settings import get_settings
    from aiops.stack import resolve_stack

    return resolve_stack(stack, get_settings())


class _DeployView:
    """How `deploy` shows its progress (aiops.infra.commands.DeployView) on the console."""

    def __init__(self, console) -> None:
        from aiops.infra.automation import event_printer

        self.console = console
        self.event = event_printer(console)

    def model(self, resolved) -> None:
        self.console.print(f"model: {resolved.uri}" + (f" ({resolved.note})" if resolved.note else ""))
        if resolved.program is not None:
            self.console.print(f"SAGEMAKER_PROGRAM: {resolved.program} (from {resolved.program_source})")
        for warning in resolved.warnings:
            _console(err=True).print(f"warning: {warning}")
        if resolved.fit is not None:
            self.console.print(f"GPU fit: {resolved.fit.line()}")

    def planned(self, stack: str, changes) -> None:
        from aiops.infra.automation import summarize

        self.console.print(f"stack {stack}: {summarize(changes)}")

    def cost(self, estimate) -> None:
        from aiops.infra.render import deploy_cost_lines

        for line in deploy_cost_lines(estimate):
            self.console.print(line)

    def confirm(self) -> bool:
        return typer.confirm("apply these changes?", default=False)


def preview(
    offline: bool = typer.Option(
        False, "--offline", help="Run under Pulumi mocks: no CLI, credentials or network."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    stack: StackOpt = None,
    project_dir: ProjectDirOpt = Path("."),
    backend: BackendOpt = None,
    model: Path | None = typer.Option(
        None,
        "--model",
        "-m",
        help="A local model (weights file, folder or model.tar.gz) to check against the endpoint's GPUs "
        "(GPU-fit check: tensor sizes from the files, weights never loaded).",
    ),
) -> None:
    """Show what the stack would create or change (--offline: every resource, under mocks)."""
    from aiops.infra import commands

    stack = _stack_name(stack)
    console = _console()
    on_event = None
    if not offline and not as_json:
        from aiops.infra.automation import event_printer

        on_event = event_printer(console)
    result = commands.preview(
        project_dir, stack, offline=offline, backend=backend, model=model, on_event=on_event
    )
    if offline:
        from aiops.infra.render import print_costs, print_table, to_json

        assert result.plan is not None and result.costs is not None  # an offline preview has both

        if as_json:
            typer.echo(to_json(result.plan, result.costs, result.fit))
        else:
            print_table(result.plan, console)
            print_costs(result.costs, console)
            if result.fit is not None:
                console.print(f"GPU fit: {result.fit.line()}")
        return
    from aiops.infra.automation import summarize

    if as_json:
        import json

        typer.echo(json.dumps({"stack": stack, "changes": result.changes}, indent=2))
    else:
        console.print(f"stack {stack}: {summarize(result.changes)}")


def cost(
    stack: StackOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON."),
    project_dir: ProjectDirOpt = Path("."),
) -> None:
    """Estimated $/hour and $/month of the stack as configured (offline plan, shipped price table)."""
    from aiops.infra import commands

    stack = _stack_name(stack)
    costs = commands.cost(project_dir, stack)
    if as_json:
        import json

        typer.echo(json.dumps({"stack": stack, **costs.to_dict()}, indent=2, sort_keys=True))
    else:
        from aiops.infra.render import print_costs

        print_costs(costs, _console())


def deploy(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="The endpoint's model: s3:// URI, job:TRAINING_JOB, a local run (name or "
        "folder) or model.tar.gz (uploaded to the stack bucket under its content hash), "
        "or uncompressed: an s3://bucket/prefix/ or a folder of model files (uploaded "
        "as a prefix). Checked against the GPUs first. A job's or run's training code "
        "also sets the endpoint's SAGEMAKER_PROGRAM. Without it the current one is kept.",
    ),
    stack: StackOpt = None,
    yes: bool = typer.Option(False, "--yes", "-y", help="Apply without asking."),
    project_dir: ProjectDirOpt = Path("."),
    backend: BackendOpt = None,
) -> None:
    """Create or update the stack (Automation API), optionally switching the endpoint's model."""
    from aiops.infra import commands

    stack = _stack_name(stack)
    console = _console()
    done = commands.deploy(
        project_dir, stack, view=_DeployView(console), model=model, backend=backend, yes=yes
    )
    console.print(f"stack {stack}: {done.result}")
    for key, value in sorted(done.outputs.items()):
        console.print(f"  {key}: {'[secret]' if value.secret else value.value}")


def destroy(
    stack: StackOpt = None,
    yes: bool = typer.Option(False, "--yes", "-y", help="Destroy without asking."),
    project_dir: ProjectDirOpt = Path("."),
    backend: BackendOpt = None,
) -> None:
    """Delete every resource of the stack."""
    from aiops.infra import commands
    from aiops.infra.automation import event_printer

    stack = _stack_name(stack)
    console = _console()

    def confirm() -> bool:
        return yes or typer.confirm(f"destroy every resource of stack {stack!r}?", default=False)

    result = commands.destroy(
        project_dir, stack, confirm=confirm, backend=backend, on_event=event_printer(console)
    )
    console.print(f"stack {stack}: {result}")


def outputs(
    stack: StackOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print the outputs as JSON."),
    project_dir: ProjectDirOpt = Path("."),
    backend: BackendOpt = None,
) -> None:
    """The deployed stack's outputs (bucket, role ARN, KMS key, endpoint name, region, ...)."""
    from aiops.infra import commands

    values = commands.outputs(project_dir, _stack_name(stack), backend=backend)
    if as_json:
        import json

        typer.echo(json.dumps(values, indent=2, sort_keys=True, default=str))
    else:
        for key in sorted(values):
            typer.echo(f"{key}: {values[key]}")


def register(app: typer.Typer, *, panel: str) -> None:
    app.command("preview", rich_help_panel=panel)(preview)
    app.command("deploy", rich_help_panel=panel)(deploy)
    app.command("destroy", rich_help_panel=panel)(destroy)
    app.command("outputs", rich_help_panel=panel)(outputs)
    app.command("cost", rich_help_panel=panel)(cost)
