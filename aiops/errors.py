"""Errors that the CLI turns into one clear line instead of a traceback."""

from __future__ import annotations


class AiopsError(Exception):
    """A problem the user can fix. ``str(err)`` is the one line shown; ``exit_code`` is returned.

    Usage and configuration errors exit 2 (the convention of click/typer and of most Unix tools);
    runtime failures (a training script that fails, a server that cannot start) exit 1.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} {hint}")


class UsageError(AiopsError):
    """Bad input: options, files, names, config. Nothing has been started or written."""

    exit_code = 2


class ConfigError(UsageError):
    """A settings or stack-config value is invalid."""
