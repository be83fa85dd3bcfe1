"""The `aiops` command line: thin commands that parse, call one function, render.

Each command module keeps its heavy imports (torch, boto3, pulumi, httptools) inside the command
functions, so `aiops --help` stays fast. Sub-apps and commands are grouped in help panels.
"""

from __future__ import annotations

import errno
import re
import sys

import typer

from aiops import __version__

PANEL_TRAIN = "Training"
PANEL_SERVE = "Inference"
PANEL_INFRA = "Infrastructure"
PANEL_MISC = "Setup"

app = typer.Typer(
    name="aiops",
    help="Train PyTorch models on SageMaker GPUs, serve them behind autoscaling endpoints, "
    "with the infrastructure as reviewed Pulumi code.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aiops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """aiops: from a laptop PyTorch script to SageMaker training and autoscaling endpoints."""


def _register() -> None:
    # Imported here (not at module top) only to keep registration in one place; these modules
    # are light: their commands import heavy libraries when they run.
    from aiops.cli import bench, examples, export, infra, serve, train, tune

    train.register(app, panel=PANEL_TRAIN)
    tune.register(app, panel=PANEL_TRAIN)
    serve.register(app, panel=PANEL_SERVE)
    bench.register(app, panel=PANEL_SERVE)
    export.register(app, panel=PANEL_SERVE)
    infra.register(app, panel=PANEL_INFRA)
    examples.register(app, panel=PANEL_MISC)


_register()


# What rich reads as a markup tag: `[` then a lowercase letter, #, / or @ (rich.markup's own pattern).
# Help texts here are plain text, so "[default: 127.0.0.1]" or "[fp32: 1e-4]" must be shown, not
# swallowed as an unknown style; rich_markup_mode stays "rich" for the help panels.
_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def _escape_markup(text: str | None) -> str | None:
    if not text:
        return text
    return _MARKUP_TAG.sub(lambda m: m.group(1) * 2 + "\\" + m.group(2), text)


def _plain_help(command) -> None:
    """Escape rich markup in every command's and option's help, the whole tree down."""
    command.help = _escape_markup(command.help)
    command.short_help = _escape_markup(getattr(command, "short_help", None))
    for param in command.params:
        if getattr(param, "help", None):
            param.help = _escape_markup(param.help)
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


def _one_line(text: str) -> str:
    """The error line: whitespace collapsed, control characters (a server's message may carry
    terminal escapes) shown as ``\\xNN``."""
    from aiops.cli.terminal import neutralize

    return neutralize(" ".join(str(text).split()))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: errors become one line on stderr and an exit code."""
    from aiops.errors import AiopsError

    try:  # typer >= 0.29 vendors click
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover - older typer on the real click
        from click import exceptions as click_exc  # type: ignore[no-redef]  # the same module

    args = sys.argv[1:] if argv is None else argv
    try:
        command = typer.main.get_command(app)
        _plain_help(command)
        result = command.main(args=args, prog_name="aiops", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted.", err=True)
        return 130
    except click_exc.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # help was already printed
            return 0
        where = exc.ctx.command_path if exc.ctx is not None else "aiops"
        typer.echo(f"error: {_one_line(exc.format_message())} (see '{where} --help')", err=True)
        return 2
    except click_exc.ClickException as exc:
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        return exc.exit_code
    except AiopsError as exc:
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted.", err=True)
        return 130
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        # any path a command looks up (a model, a run, an output): a name past the file system's
        # limits is a usage error, however deep the lookup that met it
        name = str(exc.filename or "")
        shown = name if len(name) <= 80 else f"{name[:60]}... ({len(name)} characters)"
        typer.echo(
            f"error: {_one_line(shown)}: name too long for the file system (at most 255 characters a "
            "name, 4096 a path); give a shorter one",
            err=True,
        )
        return 2
    except ModuleNotFoundError as exc:  # an optional extra that is not installed
        from aiops.extras import for_missing_module

        hint = for_missing_module(exc)
        if hint is None:
            raise
        typer.echo(f"error: {hint}", err=True)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
