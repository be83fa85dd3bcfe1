"""Fixtures for the inference tests: tiny TorchScript models, handler scripts, live servers."""

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

torch = pytest.importorskip("torch")


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def save_double(folder: Path, name: str = "model.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(Double()), str(folder / name))
    return folder


def save_mlp(folder: Path, sizes=(8, 16, 3), name: str = "model.pt", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model), str(folder / name))
    return folder


def write_script(folder: Path, text: str, name: str = "inference.py") -> Path:
    code = folder / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / name).write_text(text)
    return code / name


@pytest.fixture
def double_dir(tmp_path: Path) -> Path:
    return save_double(tmp_path / "double")


@pytest.fixture
def mlp_dir(tmp_path: Path) -> Path:
    return save_mlp(tmp_path / "mlp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def invoke(self, body, content_type="application/json", accept=None, path="/invocations", **headers):
        h = {"Content-Type": content_type} if content_type else {}
        if accept:
            h["Accept"] = accept
        h.update(headers)
        if isinstance(body, str):
            body = body.encode()
        return self.request("POST", path, body, h)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def wait_ready(server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if server.request("GET", "/ping", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready in {timeout}s:\n{server.log()}")


@pytest.fixture
def start_server(tmp_path: Path, aiops_home: Path):
    started: list[Server] = []

    def start(model, *args: str, env: dict | None = None, wait: bool = True, port: int | None = None) -> Server:
        port = port or free_port()
        log_path = tmp_path / f"server-{port}.log"
        full_env = {**os.environ, "AIOPS_HOME": str(aiops_home), "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": "1", **(env or {})}
        cmd = [sys.executable, "-m", "aiops.cli.app", "serve", str(model), *args]
        if not any(a in ("--port", "-p") for a in args) and "SAGEMAKER_BIND_TO_PORT" not in (env or {}):
            cmd += ["--port", str(port)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=str(tmp_path))
        server = Server(proc, port, log_path)
        started.append(server)
        if wait:
            wait_ready(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
