"""`aiops preview`, `aiops deploy`, `aiops destroy`, `aiops outputs`, `aiops cost`: the infrastructure.

Thin commands: pulumi, pulumi_aws and boto3 are imported inside the command functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

STACK_HELP = "Stack name: its config is Pulumi.<stack>.yaml in the project folder (default: AIOPS_STACK, else dev)."
DIR_HELP = "Project folder (holds Pulumi.yaml and the stack files)."
BACKEND_HELP = "State backend URL (default: a local file backend under the aiops home)."


def _console(err: bool = False):
    import sys

    from rich.console import Console

    stream = sys.stderr if err else sys.stdout
    return Console(stderr=err, highlight=False, width=None if stream.isatty() else 160)


def _need_infra_extra() -> None:
    import importlib.util

    from aiops.errors import UsageError

    missing = [m for m in ("pulumi", "pulumi_aws", "yaml") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"{', '.join(missing)} not installed: pip install 'aiops[infra]'")


def _stack_name(stack: Optional[str]) -> str:
    """The one rule (aiops.stack.resolve_stack): --stack > AIOPS_STACK / aiops.toml > dev."""
    from aiops.settings import get_settings
    from aiops.stack import resolve_stack

    return resolve_stack(stack, get_settings())


def _stack_config(project_dir: Path, stack: str, overrides: dict[str, Any] | None = None):
    _need_infra_extra()
    from aiops.infra.config import load_stack_file, stack_file

    return load_stack_file(stack_file(project_dir, stack), stack=stack, overrides=overrides)


def _workspace(project_dir: Path, stack: str, backend: Optional[str]):
    from aiops.infra.automation import workspace_spec
    from aiops.settings import get_settings

    return workspace_spec(stack=stack, project_dir=project_dir, backend=backend, home=get_settings().home)


def _automation_call(fn, *args, **kwargs):
    """Run an Automation API call; its CommandError becomes one line (exit 1)."""
    from pulumi.automation import errors as auto_errors

    from aiops.errors import AiopsError

    try:
        return fn(*args, **kwargs)
    except auto_errors.CommandError as err:
        lines = [ln for ln in str(err).splitlines() if ln.strip() and not ln.startswith(("code:", "stdout:"))]
        raise AiopsError(f"pulumi failed: {lines[-1].strip() if lines else err}") from None


def _output_values(stack) -> dict[str, Any]:
    return {k: v.value for k, v in _automation_call(stack.outputs).items()}


def _save_outputs(stack_name: str, outputs: dict[str, Any]) -> None:
    """Keep the non-secret outputs where `aiops train --remote` reads its defaults."""
    from aiops.settings import get_settings
    from aiops.stack import write_outputs

    write_outputs(get_settings().home, stack_name, {
        k: v.value for k, v in outputs.items() if not getattr(v, "secret", False)})


def preview(
    offline: bool = typer.Option(False, "--offline", help="Run under Pulumi mocks: no CLI, credentials or network."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    stack: Optional[str] = typer.Option(None, "--stack", "-s", help=STACK_HELP),
    project_dir: Path = typer.Option(Path("."), "--project-dir", "-C", help=DIR_HELP),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP),
    model: Optional[Path] = typer.Option(
        None, "--model", "-m",
        help="A local model (weights file, folder or model.tar.gz) to check against the endpoint's GPUs "
        "(GPU-fit check: tensor sizes from the files, weights never loaded).",
    ),
) -> None:
    """Show what the stack would create or change (--offline: every resource, under mocks)."""
    stack = _stack_name(stack)
    cfg = _stack_config(project_dir, stack)
    fit = None
    if model is not None:
        from aiops.infra.fitcheck import check_local_model

        fit = check_local_model(cfg, model)  # a model that cannot fit stops here: one line, exit 2
    if offline:
        from aiops.infra.costs import plan_costs
        from aiops.infra.offline import plan
        from aiops.infra.render import print_costs, print_table, to_json

        result = plan(cfg)
        costs = plan_costs(result)
        if as_json:
            typer.echo(to_json(result, costs, fit))
        else:
            console = _console()
            print_table(result, console)
            print_costs(costs, console)
            if fit is not None:
                console.print(f"GPU fit: {fit.line()}")
        return
    from aiops.infra.automation import event_printer, open_stack, summarize

    spec = _workspace(project_dir, stack, backend)
    console = _console()
    st = _automation_call(open_stack, spec)
    res = _automation_call(st.preview, on_event=None if as_json else event_printer(console))
    if as_json:
        import json

        typer.echo(json.dumps({"stack": stack, "changes": res.change_summary}, indent=2))
    else:
        console.print(f"stack {stack}: {summarize(res.change_summary)}")


def cost(
    stack: Optional[str] = typer.Option(None, "--stack", "-s", help=STACK_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON."),
    project_dir: Path = typer.Option(Path("."), "--project-dir", "-C", help=DIR_HELP),
) -> None:
    """Estimated $/hour and $/month of the stack as configured (offline plan, shipped price table)."""
    stack = _stack_name(stack)
    cfg = _stack_config(project_dir, stack)
    from aiops.infra.costs import plan_costs
    from aiops.infra.offline import plan
    from aiops.infra.render import print_costs

    costs = plan_costs(plan(cfg))
    if as_json:
        import json

        typer.echo(json.dumps({"stack": stack, **costs.to_dict()}, indent=2, sort_keys=True))
    else:
        print_costs(costs, _console())


def _print_cost_summary(project_dir: Path, stack: str, console) -> None:
    """The stack's cost as configured, from the offline plan, before `deploy` asks to apply.

    Run in a child process (`aiops cost --json`): the offline plan installs Pulumi mocks in the
    runtime, which must not share a process with the Automation API program that follows. An
    estimate that cannot be made is reported, never fatal: the deployment does not depend on it.
    """
    import json
    import subprocess
    import sys

    from aiops.infra.costs import PlanCosts
    from aiops.infra.render import cost_total_line

    proc = subprocess.run(
        [sys.executable, "-m", "aiops.cli.app", "cost", "--json", "--stack", stack, "-C", str(project_dir)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        console.print(f"cost estimate unavailable: {proc.stderr.strip().removeprefix('error: ') or proc.returncode}")
        return
    data = json.loads(proc.stdout)
    costs = PlanCosts.from_dict(data, stack=stack)
    console.print(f"estimated cost of the stack as configured (not a diff; prices as of {costs.as_of}):")
    for line in costs.lines:
        console.print(f"  {line.resource}: {line.describe()}"
                      + (f" = ${line.hourly:g}/h, ${line.monthly:,.2f}/month" if line.hourly is not None else ""))
    console.print(f"  {cost_total_line(costs)}")


def deploy(
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="The endpoint's model: s3:// URI, job:TRAINING_JOB, a local model.tar.gz or run folder "
        "(uploaded to the stack bucket under its content hash), or uncompressed: an s3://bucket/prefix/ or a "
        "folder of model files (uploaded as a prefix). Checked against the GPUs first. Without it the current "
        "one is kept.",
    ),
    stack: Optional[str] = typer.Option(None, "--stack", "-s", help=STACK_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Apply without asking."),
    project_dir: Path = typer.Option(Path("."), "--project-dir", "-C", help=DIR_HELP),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP),
) -> None:
    """Create or update the stack (Automation API), optionally switching the endpoint's model."""
    stack = _stack_name(stack)
    from aiops.errors import UsageError

    if model is not None:
        from aiops.infra.artifacts import classify

        classify(model)  # bad --model fails before anything else
    placeholder = {"aiops:endpoint.modelDataUrl": "s3://placeholder-bucket/model.tar.gz"} if model else None
    cfg = _stack_config(project_dir, stack, placeholder)
    if model is not None:
        from aiops.infra.artifacts import precheck

        precheck(model, cfg=cfg, region=cfg.region)  # cannot fit, empty prefix: one line, exit 2, nothing created
    spec = _workspace(project_dir, stack, backend)

    from aiops.infra import artifacts
    from aiops.infra.automation import event_printer, open_stack, set_model, summarize

    console = _console()
    st = _automation_call(open_stack, spec)
    if model is not None:
        resolved = artifacts.resolve_model(model, cfg=cfg, outputs=_output_values(st), region=cfg.region, stack=stack)
        _automation_call(set_model, st, resolved.uri, resolved.size_gb)
        _stack_config(project_dir, stack)  # the file as now written must still validate
        console.print(f"model: {resolved.uri}" + (f" ({resolved.note})" if resolved.note else ""))
        if resolved.fit is not None:
            console.print(f"GPU fit: {resolved.fit.line()}")
    plan = _automation_call(st.preview, on_event=event_printer(console))
    console.print(f"stack {stack}: {summarize(plan.change_summary)}")
    _print_cost_summary(project_dir, stack, console)
    if not yes:
        if not typer.confirm("apply these changes?", default=False):
            raise UsageError("not applied (answer yes, or pass --yes)")
    result = _automation_call(st.up, on_event=event_printer(console))
    console.print(f"stack {stack}: {result.summary.result}")
    for key, value in sorted(result.outputs.items()):
        console.print(f"  {key}: {'[secret]' if value.secret else value.value}")
    _save_outputs(stack, result.outputs)


def destroy(
    stack: Optional[str] = typer.Option(None, "--stack", "-s", help=STACK_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Destroy without asking."),
    project_dir: Path = typer.Option(Path("."), "--project-dir", "-C", help=DIR_HELP),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP),
) -> None:
    """Delete every resource of the stack."""
    stack = _stack_name(stack)
    from aiops.errors import UsageError
    from aiops.infra.automation import event_printer, open_stack

    _stack_config(project_dir, stack)
    spec = _workspace(project_dir, stack, backend)
    if not yes and not typer.confirm(f"destroy every resource of stack {stack!r}?", default=False):
        raise UsageError("nothing destroyed (answer yes, or pass --yes)")
    console = _console()
    st = _automation_call(open_stack, spec)
    result = _automation_call(st.destroy, on_event=event_printer(console))
    console.print(f"stack {stack}: {result.summary.result}")


def outputs(
    stack: Optional[str] = typer.Option(None, "--stack", "-s", help=STACK_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the outputs as JSON."),
    project_dir: Path = typer.Option(Path("."), "--project-dir", "-C", help=DIR_HELP),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP),
) -> None:
    """The deployed stack's outputs (bucket, role ARN, KMS key, endpoint name, region, ...)."""
    stack = _stack_name(stack)
    from aiops.infra.automation import open_stack

    _need_infra_extra()
    spec = _workspace(project_dir, stack, backend)
    raw = _automation_call(_automation_call(open_stack, spec).outputs)
    _save_outputs(stack, raw)
    values = {k: v.value for k, v in raw.items()}
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
