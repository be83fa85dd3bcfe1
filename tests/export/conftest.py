"""Fixtures for the export tests: one short digits training run per session, the CLI, live servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import CliResult, Server, launch_server, run_aiops, stop_all, wait_ready

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "training" / "examples" / "digits"
RUN = "digits"


def _cli(home: Path, cwd: Path, *args: str, timeout: float = 300) -> CliResult:
    return run_aiops(home, cwd, *args, timeout=timeout)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A Completed local run of the digits example (5 epochs, ~6 s): {home, data, run}."""
    root = tmp_path_factory.mktemp("export-digits")
    home, data = root / "home", root / "data"
    r = _cli(home, root, "example", "digits-data", str(data))
    assert r.returncode == 0, r.output
    r = _cli(home, root, "train", str(DIGITS / "train.py"), "--channel", f"train={data / 'train'}",
             "--channel", f"test={data / 'test'}", "--hp", "epochs=5", "--job-name", RUN, "--json")
    assert r.returncode == 0, r.output
    return {"home": home, "data": data, "run": RUN, "root": root}


@pytest.fixture
def cli(digits_run: dict, tmp_path: Path):
    """Run `aiops ...` against the session's AIOPS_HOME, in tmp_path."""

    def run(*args: str, timeout: float = 300) -> CliResult:
        return _cli(digits_run["home"], tmp_path, *args, timeout=timeout)

    return run


@pytest.fixture
def serve(digits_run: dict, tmp_path: Path):
    """`serve(model)`: `aiops serve MODEL` on a free 127.0.0.1 port, ready; stopped after the test."""
    started: list[Server] = []

    def start(model: Path | str, timeout: float = 90) -> Server:
        server = launch_server(model, home=digits_run["home"], cwd=tmp_path)
        started.append(server)
        wait_ready(server, timeout=timeout)
        return server

    yield start
    stop_all(started)


def summary(result: CliResult) -> dict:
    return json.loads(result.stdout)
