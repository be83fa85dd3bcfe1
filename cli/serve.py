"""`aiops serve`, `aiops invoke` and `aiops model package`."""

from __future__ import annotations

from pathlib import Path

import typer

model_app = typer.Typer(
    help="Model artifacts: package a model.tar.gz in the SageMaker layout.", no_args_is_help=True
)


def serve(
    model: str = typer.Argument(
        ..., help="A model.tar.gz, a model folder, or the name of a local training run."
    ),
    entry_point: str | None = typer.Option(
        None, "--entry-point", "-e", help="Inference script (overrides the artifact's code/)."
    ),
    source_dir: str | None = typer.Option(
        None, "--source-dir", "-s", help="Folder with the inference script (replaces code/)."
    ),
    # The defaults in these helps are ServeSettings' (importing it here would slow every --help);
    # tests/test_cli_help.py checks that they agree.
    host: str | None = typer.Option(None, help="Interface to bind [default: 127.0.0.1]."),
    port: int | None = typer.Option(
        None, "--port", "-p", help="Port [default: 8080, SAGEMAKER_BIND_TO_PORT]."
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-w", min=1, help="Worker processes [default: 1, SAGEMAKER_MODEL_SERVER_WORKERS]."
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Dynamic batching: max requests per predict [default: 1, SAGEMAKER_TS_BATCH_SIZE].",
    ),
    max_batch_delay: float | None = typer.Option(
        None,
        "--max-batch-delay",
        min=0,
        help="Dynamic batching: max wait in ms [default: 5, SAGEMAKER_TS_MAX_BATCH_DELAY].",
    ),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        min=0.001,
        help="Per-request timeout in s [default: 60, SAGEMAKER_MODEL_SERVER_TIMEOUT].",
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="AIOPS_SERVE__API_KEY",
        show_envvar=True,
        help="Require this key (X-Api-Key) on every route but /ping.",
    ),
    install_requirements: bool = typer.Option(
        False,
        "--install-requirements",
        help="pip install code/requirements.txt first (as the container does).",
    ),
    container: str | None = typer.Option(
        None,
        "--container",
        help="Whose contract to serve: pytorch (the handler script), huggingface (a transformers "
        "pipeline chosen by HF_TASK or config.json), or tgi / lmi (a Hugging Face causal-LM folder "
        "behind that LLM container's HTTP API) [default: pytorch, AIOPS_SERVE__CONTAINER].",
    ),
    max_total_tokens: int | None = typer.Option(
        None,
        "--max-total-tokens",
        min=2,
        help="Prompt plus new tokens per request [default: the model's positions, at most 4096; "
        "MAX_TOTAL_TOKENS].",
        rich_help_panel="LLM (--container)",
    ),
    max_input_tokens: int | None = typer.Option(
        None,
        "--max-input-tokens",
        min=1,
        help="Prompt tokens per request [default: max total - 1; MAX_INPUT_TOKENS].",
        rich_help_panel="LLM (--container)",
    ),
    max_batch_size: int | None = typer.Option(
        None,
        "--max-batch-size",
        min=1,
        help="Sequences decoded together [default: 16; MAX_BATCH_SIZE].",
        rich_help_panel="LLM (--container)",
    ),
) -> None:
    """Serve a model with the SageMaker PyTorch handler contract (GET /ping, POST /invocations), the
    Hugging Face inference container's (--container huggingface), or a Hugging Face causal LM with an
    LLM container's API (--container tgi|lmi)."""
    from aiops.inference.serving.supervisor import serve as run_server
    from aiops.inference.serving.supervisor import serve_settings

    from aiops.errors import UsageError
    from aiops.settings import get_settings

    opts = serve_settings(
        host=host,
        port=port,
        workers=workers,
        batch_size=batch_size,
        max_batch_delay_ms=max_batch_delay,
        timeout_seconds=timeout,
        api_key=api_key,
        install_requirements=install_requirements or None,
        container=container,
        max_total_tokens=max_total_tokens,
        max_input_tokens=max_input_tokens,
        max_batch_size=max_batch_size,
    )
    if opts.container in ("tgi", "lmi"):
        if entry_point or source_dir:
            raise UsageError(
                "--entry-point and --source-dir serve a handler: --container serves a model folder"
            )
        from aiops.inference.llm.server import serve as serve_llm

        def llm_ready(url: str) -> None:
            typer.echo(f"serving {model} with the {opts.container} API on {url}; Ctrl-C to stop", err=True)

        raise typer.Exit(serve_llm(model, opts, runs_dir=get_settings().runs_dir, on_ready=llm_ready))

    def ready(url: str) -> None:
        typer.echo(
            f"serving {model} on {url} ({opts.workers} worker{'s' if opts.workers > 1 else ''}"
            f"{f', batch {opts.batch_size}' if opts.batch_size > 1 else ''}); Ctrl-C to stop",
            err=True,
        )

    code = run_server(
        model,
        opts,
        runs_dir=get_settings().runs_dir,
        entry_point=entry_point,
        source_dir=source_dir,
        on_ready=ready,
    )
    raise typer.Exit(code)


def invoke(
    data: str = typer.Option(..., "--data", "-d", help="Request body: a file (or @file), or inline JSON."),
    url: str | None = typer.Option(None, "--url", help="A local server [default: http://127.0.0.1:8080]."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="A deployed SageMaker endpoint (boto3)."),
    content_type: str | None = typer.Option(
        None, "--content-type", "-c", help="Content-Type [default: from the file suffix, else JSON]."
    ),
    accept: str | None = typer.Option(None, "--accept", "-a", help="Accept header."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="AIOPS_SERVE__API_KEY", show_envvar=True),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the response body to this file."),
    stream: bool = typer.Option(
        False,
        "--stream",
        help="Print chunks as they arrive (chunked /invocations, or "
        "InvokeEndpointWithResponseStream with --endpoint), with time to first byte and chunks/s.",
    ),
    async_: bool = typer.Option(
        False,
        "--async",
        help="With --endpoint: InvokeEndpointAsync. The body is uploaded to "
        "the stack's bucket (async-inference/input/), then the result is read from the "
        "OutputLocation once it is there.",
    ),
    timeout: float = typer.Option(
        600.0, "--timeout", min=0, help="With --async: how long to wait for the result, in s."
    ),
    inference_component: str | None = typer.Option(
        None,
        "--inference-component",
        help="With --endpoint: the InferenceComponentName to route to [default: the "
        "stack's inferenceComponentName when --endpoint is the stack's endpoint].",
    ),
    max_response_mb: float | None = typer.Option(
        None,
        "--max-response-mb",
        min=0.001,
        help="The largest response body accepted; past it one error "
        "line, nothing kept [default: 64 for a body held in memory to print; no limit with --output or "
        "--stream, which never hold the body].",
    ),
) -> None:
    """Send one request and print the response and its latency."""
    from aiops.inference.client import synchronous as client
    from aiops.inference.client.invoke import Target, send

    target = Target(
        url=url,
        endpoint=endpoint,
        inference_component=inference_component,
        asynchronous=async_,
        timeout=timeout,
    )
    target.check(stream=stream)
    body, ctype = client.load_payload(data, content_type)
    limit = int(max_response_mb * client.MIB) if max_response_mb is not None else None
    if stream:
        return _invoke_stream(
            body,
            ctype,
            url=url,
            endpoint=endpoint,
            accept=accept,
            api_key=api_key,
            output=output,
            limit=limit,
        )
    if output is not None:
        with client.FileBody(output, limit) as sink:  # renamed over the file only once complete
            answer = send(target, body, content_type=ctype, accept=accept, api_key=api_key, sink=sink)
        typer.echo(f"wrote {answer.size} bytes to {output}", err=True)
    else:
        sink = client.MemoryBody(limit if limit is not None else client.DEFAULT_MAX_RESPONSE_MB * client.MIB)
        answer = send(target, body, content_type=ctype, accept=accept, api_key=api_key, sink=sink)
        _render(answer.body, answer.content_type)
    typer.echo(_safe(answer.summary), err=True)


def _render(body: bytes, content_type: str | None) -> None:
    """A response body printed when it is text (control characters neutralized on a terminal), else
    its size and type."""
    import sys

    from aiops.cli.terminal import is_terminal, neutralize

    ctype = content_type or ""
    text = ctype.startswith(("application/json", "text/"))
    if not text and ctype in ("", "binary/octet-stream"):  # an S3 object stored without a type
        try:
            body.decode("utf-8")
            text = True
        except UnicodeDecodeError:
            pass
    if not text:
        typer.echo(f"<{len(body)} bytes of {neutralize(str(content_type))}; use --output to save them>")
        return
    shown = body.decode("utf-8", "replace").rstrip("\n")
    if is_terminal(sys.stdout):
        typer.echo(neutralize(shown))
    else:  # a pipe gets the text as it came (color=True: click would strip some escapes, not all)
        typer.echo(shown, color=True)


def _invoke_stream(
    body: bytes, ctype: str, *, url, endpoint, accept, api_key, output: Path | None, limit: int | None
) -> None:
    import contextlib
    import sys

    from aiops.cli.terminal import TerminalWriter, is_terminal
    from aiops.inference.client import stream as stream_client
    from aiops.inference.client import synchronous as client

    from aiops.errors import AiopsError
    from aiops.settings import get_settings

    # --output: a private temporary file beside FILE, renamed over it once the stream is complete (a
    # failed stream leaves FILE as it was). Else each chunk as it arrives: on a terminal decoded and
    # neutralized, into a pipe the bytes as they are. Nothing is held either way.
    terminal = TerminalWriter(sys.stdout) if output is None and is_terminal(sys.stdout) else None
    sink: client.BodySink
    if output is not None:
        sink = client.FileBody(output, limit)
    else:
        sink = client.PassBody(
            terminal.write if terminal else sys.stdout.buffer.write,
            limit,
            flush=None if terminal else sys.stdout.buffer.flush,
        )
    last = [b"\n"]

    def show(chunk: bytes) -> None:
        sink.write(chunk)
        sink.flush()
        last[0] = chunk[-1:]

    with sink if output is not None else contextlib.nullcontext():
        try:
            if endpoint:
                from aiops.stack import endpoint_region

                result = stream_client.stream_endpoint(
                    endpoint,
                    body,
                    content_type=ctype,
                    accept=accept,
                    region=endpoint_region(get_settings()),
                    on_chunk=show,
                )
            else:
                result = stream_client.stream_url(
                    url or get_settings().serve.url,
                    body,
                    content_type=ctype,
                    accept=accept,
                    api_key=api_key,
                    on_chunk=show,
                )
        finally:
            if terminal is not None:
                terminal.close()
        if not result.ok:
            raise AiopsError(client.error_message(result))
    if output is None and last[0] != b"\n":
        typer.echo("")
    typer.echo(_safe(result.summary()) + (f"; wrote {output}" if output is not None else ""), err=True)


def _safe(line: str) -> str:
    """A line that quotes the server (its content type) with control characters neutralized."""
    from aiops.cli.terminal import neutralize

    return neutralize(line)


@model_app.command("package")
def package(
    model: str = typer.Argument(..., help="A local training run name, or a model folder."),
    out: Path = typer.Option(
        Path("model.tar.gz"),
        "--out",
        "-o",
        help="Where to write model.tar.gz (an existing folder: FOLDER/model.tar.gz).",
    ),
    entry_point: Path | None = typer.Option(None, "--entry-point", "-e", help="Inference script -> code/."),
    source_dir: Path | None = typer.Option(None, "--source-dir", "-s", help="Folder copied into code/."),
    requirements: Path | None = typer.Option(None, "--requirements", "-r", help="-> code/requirements.txt"),
) -> None:
    """Write model.tar.gz in the SageMaker layout (weights at the root, code/inference.py); deterministic."""
    from aiops.artifacts.package import package
    from aiops.artifacts.programs import DEFAULT_PROGRAM
    from aiops.settings import get_settings

    done = package(
        model,
        out,
        runs_dir=get_settings().runs_dir,
        entry_point=entry_point,
        source_dir=source_dir,
        requirements=requirements,
    )
    for warning in done.warnings:
        typer.echo(f"warning: {warning}", err=True)
    summary, program = done.summary, done.program
    for name in summary["files"]:
        typer.echo(f"  {name}")
    typer.echo(f"wrote {summary['path']} ({summary['bytes']} bytes, {len(summary['files'])} files)")
    if program is not None and program != DEFAULT_PROGRAM:
        typer.echo(
            f"inference script: code/{program} (the training script defines "
            f"model_fn); deploy it with SAGEMAKER_PROGRAM={program} (aiops "
            f"serve {out} --entry-point {program}), as estimator.deploy() does"
        )


def register(app: typer.Typer, *, panel: str) -> None:
    app.command("serve", rich_help_panel=panel)(serve)
    app.command("invoke", rich_help_panel=panel)(invoke)
    app.add_typer(model_app, name="model", rich_help_panel=panel)
