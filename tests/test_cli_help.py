"""`aiops ... --help` shows every bracketed note its options' help texts carry ([default: ...],
[fp32: ...], [SAGEMAKER_...]): rich must not read them as markup and swallow them."""

from __future__ import annotations

import re

import typer
import typer.rich_utils

from aiops.cli.app import app, main


def _tree(command, path=()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _tree(sub, (*path, name))


def test_every_bracketed_default_is_shown(monkeypatch, capsys) -> None:
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 400)  # one line per option: nothing wraps
    checked = []
    for path, command in _tree(typer.main.get_command(app)):
        notes = [n for param in command.params for n in re.findall(r"\[[^\]]*\]", getattr(param, "help", "") or "")]
        assert main([*path, "--help"]) == 0
        shown = " ".join(capsys.readouterr().out.split())
        for note in notes:
            assert note in shown, (" ".join(path), note)
            checked.append(note)
    assert "[default: 127.0.0.1]" in checked and len(checked) >= 10


def test_serve_host_default(capsys, monkeypatch) -> None:
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 400)
    main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "Interface to bind [default: 127.0.0.1]." in out
    assert "Interface to bind ." not in out
