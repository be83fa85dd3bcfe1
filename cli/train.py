"""`aiops train` and `aiops jobs`."""

from __future__ import annotations

import typer


def register(app: typer.Typer, *, panel: str) -> None:
    pass
