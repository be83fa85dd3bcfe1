"""Fixtures for the export tests: one short digits training run per session, the CLI, live servers."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "training" / "examples" / "digits"
RUN = "digits"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _cli(home: Path, cwd: Path, *args: str, timeout: float = 300) -> Result:
    env = {**os.environ, "AIOPS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "aiops.cli.app", *args], capture_output=True, text=True,
                          env=env, cwd=str(cwd), timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


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

    def run(*args: str, timeout: float = 300) -> Result:
        return _cli(digits_run["home"], tmp_path, *args, timeout=timeout)

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path

    def post(self, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def ping(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status
        finally:
            conn.close()


@pytest.fixture
def serve(digits_run: dict, tmp_path: Path):
    """`serve(model)`: `aiops serve MODEL` on a free 127.0.0.1 port, ready; stopped after the test."""
    started: list[Server] = []

    def start(model: Path | str, timeout: float = 90) -> Server:
        port = free_port()
        log_path = tmp_path / f"serve-{port}.log"
        env = {**os.environ, "AIOPS_HOME": str(digits_run["home"]), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "aiops.cli.app", "serve", str(model), "--port", str(port)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
        server = Server(proc, port, log_path)
        started.append(server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if server.ping() == 200:
                    return server
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout}s:\n{log_path.read_text()}")

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


def summary(result: Result) -> dict:
    return json.loads(result.stdout)
