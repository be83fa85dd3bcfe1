"""What `aiops preview / cost / deploy / destroy / outputs` do, one function a command; the CLI
(``cli/infra.py``) parses, calls one of these, and renders what it returns.

The Automation API parts drive the ``pulumi`` binary (``infra/automation.py``); its failures become
one line (``automation_call``). What a command shows while it runs (resource events, the model it
resolved, the cost, the question before applying) goes through the small ``DeployView`` the CLI
passes in, so nothing here prints. pulumi is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiops.errors import AiopsError, UsageError
from aiops.extras import check_extra

if TYPE_CHECKING:
    from aiops.infra.config import StackConfig
    from aiops.infra.costs import PlanCosts
    from aiops.infra.fitcheck import ResolvedModel
    from aiops.infra.offline import Plan

    from aiops.gpufit import Fit

OnEvent = Callable[[Any], None]


def stack_config(project_dir: Path, stack: str, overrides: dict[str, Any] | None = None) -> StackConfig:
    """``Pulumi.<stack>.yaml`` of the project folder, validated (the infra extra must be there)."""
    check_extra("infra", "this command", "pulumi", "pulumi_aws", "yaml")
    from aiops.infra.stack_file import load_stack_file, stack_file

    return load_stack_file(stack_file(project_dir, stack), stack=stack, overrides=overrides)


def automation_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an Automation API call; its CommandError becomes one line (exit 1)."""
    from pulumi.automation import errors as auto_errors

    try:
        return fn(*args, **kwargs)
    except auto_errors.CommandError as err:
        lines = [ln for ln in str(err).splitlines() if ln.strip() and not ln.startswith(("code:", "stdout:"))]
        raise AiopsError(f"pulumi failed: {lines[-1].strip() if lines else err}") from None


def _workspace(project_dir: Path, stack: str, backend: str | None) -> Any:
    """The checked workspace (the pulumi binary, the passphrase): a usage error before anything runs."""
    from aiops.infra.automation import workspace_spec

    from aiops.settings import get_settings

    return workspace_spec(stack=stack, project_dir=project_dir, backend=backend, home=get_settings().home)


def _open(spec: Any) -> Any:
    from aiops.infra.automation import open_stack

    return automation_call(open_stack, spec)


def _save_outputs(stack: str, outputs: dict[str, Any]) -> dict[str, Any]:
    """Keep the non-secret outputs where `aiops train --remote` reads its defaults; all their values."""
    from aiops.settings import get_settings
    from aiops.stack import write_outputs

    write_outputs(
        get_settings().home,
        stack,
        {k: v.value for k, v in outputs.items() if not getattr(v, "secret", False)},
    )
    return {k: v.value for k, v in outputs.items()}


# --------------------------------------------------------------------------- preview and cost


@dataclass
class Preview:
    """`aiops preview`: offline, the plan under mocks and its costs; else the engine's change summary."""

    stack: str
    plan: Plan | None = None
    costs: PlanCosts | None = None
    fit: Fit | None = None
    changes: dict[str, int] | None = None


def preview(
    project_dir: Path,
    stack: str,
    *,
    offline: bool,
    backend: str | None = None,
    model: Path | None = None,
    on_event: OnEvent | None = None,
) -> Preview:
    """What the stack would create or change; with ``model``, its GPU fit first (a model that cannot
    fit stops here: one line, exit 2)."""
    cfg = stack_config(project_dir, stack)
    fit = None
    if model is not None:
        from aiops.infra.fitcheck import check_local_model

        fit = check_local_model(cfg, model)
    if offline:
        from aiops.infra.costs import plan_costs
        from aiops.infra.offline import plan

        result = plan(cfg)
        return Preview(stack, plan=result, costs=plan_costs(result), fit=fit)
    res = automation_call(_open(_workspace(project_dir, stack, backend)).preview, on_event=on_event)
    return Preview(stack, changes=res.change_summary, fit=fit)


def cost(project_dir: Path, stack: str) -> PlanCosts:
    """The stack's $/hour and $/month as configured (the offline plan, the shipped price table)."""
    from aiops.infra.costs import plan_costs
    from aiops.infra.offline import plan

    return plan_costs(plan(stack_config(project_dir, stack)))


@dataclass(frozen=True)
class CostEstimate:
    """`cost` made in a child process: the costs, or why there are none (never fatal)."""

    costs: PlanCosts | None
    error: str | None = None


def isolated_cost(project_dir: Path, stack: str) -> CostEstimate:
    """``cost`` in a fresh (spawned) process: the offline plan installs Pulumi mocks in the runtime,
    which must not share a process with the Automation API program that deploy runs next."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return CostEstimate(pool.submit(cost, Path(project_dir), stack).result())
    except AiopsError as err:
        return CostEstimate(None, str(err))
    except Exception as err:  # noqa: BLE001 - an estimate that cannot be made is reported, never fatal
        return CostEstimate(None, f"{type(err).__name__}: {err}")


# --------------------------------------------------------------------------- deploy, destroy, outputs


class DeployView(Protocol):
    """What `deploy` shows while it runs, and the question before it applies."""

    def event(self, event: Any) -> None: ...  # an Automation API engine event
    def model(self, resolved: ResolvedModel) -> None: ...  # the model it set in the stack file
    def planned(self, stack: str, changes: dict[str, int] | None) -> None: ...
    def cost(self, estimate: CostEstimate) -> None: ...
    def confirm(self) -> bool: ...  # apply the changes?


@dataclass(frozen=True)
class Deployed:
    stack: str
    result: str  # the update's result (succeeded, ...)
    outputs: dict[str, Any]  # every output (Pulumi OutputValue: .value, .secret)


def deploy(
    project_dir: Path,
    stack: str,
    *,
    view: DeployView,
    model: str | None = None,
    backend: str | None = None,
    yes: bool = False,
) -> Deployed:
    """Create or update the stack, optionally switching the endpoint's model first.

    Bad ``model`` input, a config that does not validate, or a model that cannot fit stop before
    anything is created (not even the stack's state); the preview, its cost and the question come
    before ``up``; the outputs are saved where `aiops train --remote` reads them."""
    from aiops.infra import fitcheck
    from aiops.infra.automation import set_model

    from aiops.artifacts.endpoint import classify

    runs_dir = None
    if model is not None:
        from aiops.settings import get_settings

        runs_dir = get_settings().runs_dir
        classify(model, runs_dir=runs_dir)  # bad --model fails before anything else
    placeholder = {"aiops:endpoint.modelDataUrl": "s3://placeholder-bucket/model.tar.gz"} if model else None
    cfg = stack_config(project_dir, stack, placeholder)
    if model is not None:  # cannot fit, empty prefix: one line, exit 2, nothing created
        fitcheck.precheck(model, cfg=cfg, region=cfg.region, runs_dir=runs_dir)
    st = _open(_workspace(project_dir, stack, backend))
    if model is not None:
        outputs = {k: v.value for k, v in automation_call(st.outputs).items()}
        resolved = fitcheck.resolve_for_endpoint(
            model, cfg=cfg, outputs=outputs, region=cfg.region, stack=stack, runs_dir=runs_dir
        )
        automation_call(set_model, st, resolved.uri, resolved.size_gb, resolved.program)
        stack_config(project_dir, stack)  # the file as now written must still validate
        view.model(resolved)
    plan = automation_call(st.preview, on_event=view.event)
    view.planned(stack, plan.change_summary)
    view.cost(isolated_cost(project_dir, stack))
    if not yes and not view.confirm():
        raise UsageError("not applied (answer yes, or pass --yes)")
    result = automation_call(st.up, on_event=view.event)
    _save_outputs(stack, result.outputs)
    return Deployed(stack, result.summary.result, dict(result.outputs))


def destroy(
    project_dir: Path,
    stack: str,
    *,
    confirm: Callable[[], bool],
    backend: str | None = None,
    on_event: OnEvent | None = None,
) -> str:
    """Delete every resource of the stack (after ``confirm()``); the result."""
    stack_config(project_dir, stack)
    spec = _workspace(project_dir, stack, backend)
    if not confirm():
        raise UsageError("nothing destroyed (answer yes, or pass --yes)")
    return automation_call(_open(spec).destroy, on_event=on_event).summary.result


def outputs(project_dir: Path, stack: str, *, backend: str | None = None) -> dict[str, Any]:
    """The deployed stack's outputs (saved for `aiops train --remote`, secrets left out of the file)."""
    check_extra("infra", "this command", "pulumi", "pulumi_aws", "yaml")
    return _save_outputs(stack, automation_call(_open(_workspace(project_dir, stack, backend)).outputs))
