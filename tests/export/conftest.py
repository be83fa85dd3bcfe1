"""Fixtures for the export tests: the session's digits run (tests/conftest.py), the CLI, live servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import CliResult, Server, launch_server, run_aiops, run_aiops_in_process, stop_all, wait_ready

pytest.importorskip("torch")


def _cli(home: Path, cwd: Path, *args: str, timeout: float = 300) -> CliResult:
    return run_aiops(home, cwd, *args, timeout=timeout)


@pytest.fixture(scope="session")
def digits_run(digits_default_run: dict) -> dict:
    """The session's Completed local run of the digits example (tests/conftest.py): {home, data, run, ...}."""
    return digits_default_run


@pytest.fixture
def cli(digits_run: dict, tmp_path: Path):
    """Run `aiops ...` against the session's AIOPS_HOME, in tmp_path."""

    def run(*args: str, timeout: float = 300) -> CliResult:
        return _cli(digits_run["home"], tmp_path, *args, timeout=timeout)

    return run


@pytest.fixture
def cli_in_process(digits_run: dict, tmp_path: Path):
    """`cli`'s twin calling the same entry in this process (torch is loaded here already): for the
    bad-input cases and repeated exports, whose subject is what the command answers and writes."""

    def run(*args: str) -> CliResult:
        return run_aiops_in_process(digits_run["home"], tmp_path, *args)

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
