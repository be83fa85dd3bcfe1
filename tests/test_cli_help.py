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
        notes = [
            n for param in command.params for n in re.findall(r"\[[^\]]*\]", getattr(param, "help", "") or "")
        ]
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


def test_every_option_with_a_default_shows_it(monkeypatch, capsys) -> None:
    """Walk every command: an option whose default is a value (not None, an off flag or an empty
    list) has "[default: ...]" on its own row of --help."""
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 400)  # one row per option
    checked = []
    for path, command in _tree(typer.main.get_command(app)):
        assert main([*path, "--help"]) == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"^│\s+[*]?\s*-", line)]
        for param in command.params:
            if param.param_type_name != "option" or param.hidden or param.default in (None, False, (), []):
                continue
            name = max(param.opts, key=len)
            pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
            # its own row names it first; another option's help may name it further along
            row = min((m.start(), r) for r in rows if (m := pattern.search(r)))[1]
            assert "[default: " in row, (" ".join(path), name, param.default, row)
            checked.append((path, name))
    assert (("preview",), "--project-dir") in checked and (("export",), "--bench-seconds") in checked
    assert len(checked) >= 12


def test_serve_help_defaults_are_the_serve_settings(monkeypatch, capsys) -> None:
    """`aiops serve --help` spells ServeSettings' defaults (so that --help stays light): they agree."""
    from aiops.settings import ServeSettings

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 400)
    assert main(["serve", "--help"]) == 0
    rows = capsys.readouterr().out.splitlines()
    options = {
        "host": "--host",
        "port": "--port",
        "workers": "--workers",
        "batch_size": "--batch-size",
        "max_batch_delay_ms": "--max-batch-delay",
        "timeout_seconds": "--timeout",
    }
    for field, option in options.items():
        default = ServeSettings.model_fields[field].default
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        (row,) = [r for r in rows if re.search(rf"│\s+{option}\s", r)]
        assert re.search(rf"\[default: {re.escape(shown)}[,\]]", row), (field, shown, row)
