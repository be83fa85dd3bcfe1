"""Fixtures shared by every test area (tests/<area>/conftest.py holds the area's own)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def aiops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated AIOPS_HOME for the test (local runs, state)."""
    home = tmp_path / "aiops-home"
    monkeypatch.setenv("AIOPS_HOME", str(home))
    monkeypatch.delenv("AIOPS_CONFIG", raising=False)
    return home


@pytest.fixture
def run_cli(aiops_home: Path, tmp_path: Path):
    """Run the real `aiops` console entry in a fresh process, as a user would."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300,
            input: str | None = None) -> CliResult:
        full_env = {**os.environ, "AIOPS_HOME": str(aiops_home), "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "aiops.cli.app", *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=str(cwd or tmp_path),
            timeout=timeout,
            input=input,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run
