"""`aiops bench`: a load test of a local server or a deployed endpoint (aiops.inference.client.bench)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def bench(
    url: str | None = typer.Option(None, "--url", help="A local server, e.g. http://127.0.0.1:8080."),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="A deployed SageMaker endpoint by name (boto3 sagemaker-runtime)."
    ),
    body: Path | None = typer.Option(
        None, "--body", help="A handler model: the request body, from this file."
    ),
    content_type: str | None = typer.Option(
        None,
        "--content-type",
        "-c",
        help="With --body: its Content-Type [default: from the suffix, else JSON].",
    ),
    accept: str | None = typer.Option(None, "--accept", "-a", help="Accept header."),
    prompts: Path | None = typer.Option(
        None,
        "--prompts",
        help='An LLM: prompts, one a line (or JSON lines with "inputs"), sent in turn as TGI/LMI '
        'generate requests with "stream": true.',
    ),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="With --prompts: parameters.max_new_tokens [default: 128]."
    ),
    concurrency: str = typer.Option(
        "1,4,16", "--concurrency", help="The sweep: clients in flight at each level, comma-separated."
    ),
    duration: float = typer.Option(10.0, "--duration", help="Seconds per level at most (max 3600)."),
    requests: int = typer.Option(10_000, "--requests", help="Requests per level at most (max 1000000)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds a request may wait for each read."),
    slo_p99_ms: float | None = typer.Option(
        None,
        "--slo-p99-ms",
        help="Report the highest level whose p99 latency is at most this, with no errors.",
    ),
    slo_ttft_p99_ms: float | None = typer.Option(
        None,
        "--slo-ttft-p99-ms",
        help="With --prompts: the p99 time to first token must be at most this too.",
    ),
    warmup: int = typer.Option(
        1, "--warmup", help="Requests sent one by one before the sweep, not counted (0: none)."
    ),
    processes: int = typer.Option(
        1,
        "--processes",
        help="Load processes sharing each level's clients: for rates one Python process cannot send "
        "(about a thousand requests/s through boto3).",
    ),
    instances: int = typer.Option(
        1, "--instances", help="Instances behind the target: maxRpsPerInstance is the rate divided by it."
    ),
    write_stack: str | None = typer.Option(
        None,
        "--write-stack",
        help="Write the measured maxRpsPerInstance into Pulumi.<STACK>.yaml "
        "(aiops:endpoint.autoscaling; the rest of the file kept). Needs an SLO.",
    ),
    project_dir: Path = typer.Option(
        Path("."), "--project-dir", "-C", help="With --write-stack: the folder of the stack files."
    ),
    api_key: str | None = typer.Option(None, "--api-key", envvar="AIOPS_SERVE__API_KEY", show_envvar=True),
    inference_component: str | None = typer.Option(
        None,
        "--inference-component",
        help="With --endpoint: the InferenceComponentName [default: the stack's, for the stack's endpoint].",
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Write throughput vs latency as a PNG here."),
    as_json: bool = typer.Option(False, "--json", help="The report as JSON on stdout."),
) -> None:
    """Load-test a local server or a deployed endpoint over a concurrency sweep: requests/s, errors,
    p50/p99 latency (LLMs: time to first token, inter-token latency, output tokens/s), and the
    maxRpsPerInstance that keeps an SLO."""
    from aiops.inference.client import bench as core

    from aiops.errors import AiopsError, UsageError

    plan = core.make_plan(
        url=url,
        endpoint=endpoint,
        body=body,
        content_type=content_type,
        accept=accept,
        prompts=prompts,
        max_new_tokens=max_new_tokens,
        concurrency=concurrency,
        duration_s=duration,
        requests=requests,
        timeout_s=timeout,
        slo_p99_ms=slo_p99_ms,
        slo_ttft_p99_ms=slo_ttft_p99_ms,
        instances=instances,
        warmup=warmup,
        processes=processes,
        api_key=api_key,
        inference_component=inference_component,
    )
    stack_path = None
    if write_stack is not None:
        stack_path = _check_stack(write_stack, project_dir, plan)
    if plot is not None:
        _check_plot(plot)
    if plan.endpoint:
        from aiops.extras import check_extra

        check_extra("aws", "aiops bench --endpoint", "boto3")
        region, component = core.resolve_endpoint(plan.endpoint, plan.inference_component)
        from dataclasses import replace

        plan = replace(plan, region=region, inference_component=component)

    report = _run(core, plan)
    if plot is not None:
        core.plot(report, plot)
    if as_json:
        import json

        sys.stdout.write(json.dumps(report.to_json(), sort_keys=True) + "\n")
    else:
        _table(report)
    if plot is not None:
        typer.echo(f"wrote {plot}", err=True)
    if plan.slo_p99_ms is None and plan.slo_ttft_p99_ms is None:
        return
    if report.max_rps_per_instance is None:
        raise AiopsError(
            f"no level kept {_slo_words(report)} with no errors; nothing to recommend"
            + (f", {write_stack} left as it was" if write_stack else "")
        )
    if stack_path is not None:
        from aiops.infra.stack_file import set_max_rps_per_instance

        try:
            warnings = set_max_rps_per_instance(stack_path, report.max_rps_per_instance)
        except UsageError as err:  # the file changed during the run
            raise AiopsError(str(err)) from None
        for warning in warnings:
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(
            f"wrote aiops:endpoint.autoscaling.maxRpsPerInstance: {report.max_rps_per_instance:g} "
            f"to {stack_path}",
            err=True,
        )


def _check_stack(stack: str, project_dir: Path, plan) -> Path:
    from aiops.errors import UsageError
    from aiops.extras import check_extra

    if plan.slo_p99_ms is None and plan.slo_ttft_p99_ms is None:
        raise UsageError(
            "--write-stack needs an SLO (--slo-p99-ms MS): maxRpsPerInstance is the rate of the levels "
            "that keep it"
        )
    check_extra("infra", "aiops bench --write-stack", "yaml")
    from aiops.infra.stack_file import set_max_rps_per_instance, stack_file

    path = stack_file(project_dir, stack)
    set_max_rps_per_instance(path, 1, write=False)  # editable, and valid once edited: checked before the run
    return path


def _check_plot(path: Path) -> None:
    from aiops.errors import UsageError
    from aiops.extras import check_extra

    if path.suffix.lower() != ".png":
        raise UsageError(f"--plot {path}: name a .png file")
    if not path.parent.is_dir():
        raise UsageError(f"--plot {path}: no folder {path.parent} to write it in")
    check_extra("plot", "aiops bench --plot", "matplotlib")


def _run(core, plan):
    """The sweep with a progress bar on a terminal, one line a level otherwise (on stderr)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, highlight=False)

    def line(level) -> str:
        errors = f"{level.errors} errors"
        return f"c={level.concurrency}: {level.requests} requests ({errors}) in {level.seconds:.1f} s"

    if not console.is_terminal:
        return core.run(plan, on_done=lambda level: typer.echo(line(level), err=True))
    with Progress(
        TextColumn("c={task.fields[level]}"),
        BarColumn(),
        TextColumn("{task.fields[sent]} requests"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("bench", total=plan.duration_s, level="-", sent=0)

        def level_started(concurrency: int) -> None:
            progress.reset(task, total=plan.duration_s, level=concurrency, sent=0)

        def advance(concurrency: int, sent: int, elapsed: float) -> None:
            # whichever bound comes first: the level's duration or its request budget
            part = max(min(elapsed / plan.duration_s, 1.0), sent / plan.requests)
            progress.update(task, completed=part * plan.duration_s, sent=sent)

        return core.run(
            plan,
            on_level=level_started,
            on_progress=advance,
            on_done=lambda level: progress.console.print(line(level)),
        )


def _slo_words(report) -> str:
    parts = []
    if report.slo_p99_ms is not None:
        parts.append(f"p99 <= {report.slo_p99_ms:g} ms")
    if report.slo_ttft_p99_ms is not None:
        parts.append(f"TTFT p99 <= {report.slo_ttft_p99_ms:g} ms")
    return " and ".join(parts)


def _table(report) -> None:
    from aiops.cli.terminal import neutralize
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    llm = report.mode == "llm"
    columns = ["c", "requests", "errors", "req/s", "p50 ms", "p99 ms"]
    if llm:
        columns += ["TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "tokens/s"]
    # what the server or the user wrote is shown as text, never read as rich markup
    title = Text(f"aiops bench: {neutralize(report.target)}")
    table = Table(*columns, title=title, title_justify="left")
    for col in table.columns:
        col.justify = "right"

    def num(value, fmt=".1f") -> str:
        return "-" if value is None else format(value, fmt)

    for lv in report.levels:
        mark = " *" if lv.concurrency == report.best_concurrency else ""
        row = [
            f"{lv.concurrency}{mark}",
            str(lv.requests),
            str(lv.errors),
            num(lv.rps),
            num(lv.p50_ms, ".2f"),
            num(lv.p99_ms, ".2f"),
        ]
        if llm:
            row += [
                num(lv.ttft_p50_ms, ".2f"),
                num(lv.ttft_p99_ms, ".2f"),
                num(lv.inter_token_p50_ms, ".2f"),
                num(lv.inter_token_p99_ms, ".2f"),
                num(lv.output_tokens_per_s),
            ]
        table.add_row(*row)
    console.print(table)
    for lv in report.levels:
        for kind, count in lv.errors_by_kind.items():
            example = lv.error_examples.get(kind, "")
            line = f"c={lv.concurrency}: {count} x {kind}" + (f": {example}" if example else "")
            console.print(neutralize(line), markup=False, soft_wrap=True)
    if report.slo_p99_ms is None and report.slo_ttft_p99_ms is None:
        return
    if report.best_concurrency is None:
        console.print(f"no level kept {_slo_words(report)} with no errors")
        return
    per = f" / {report.instances} instances" if report.instances > 1 else ""
    console.print(
        f"highest concurrency keeping {_slo_words(report)}: {report.best_concurrency} (*); "
        f"maxRpsPerInstance: {report.max_rps_per_instance:g}{per}"
    )


def register(app: typer.Typer, *, panel: str) -> None:
    app.command("bench", rich_help_panel=panel)(bench)
