"""Helpers shared by every test area: the real CLI in a subprocess, free ports, live servers.

Importable as `helpers` (pytest's `pythonpath = ["tests"]`); fixtures stay in the conftest files.
"""

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
from functools import partial
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_aiops(
    home: Path,
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    input: str | None = None,
) -> CliResult:
    """Run the real `aiops` entry in a fresh process, as a user would."""
    full_env = {**os.environ, "AIOPS_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "aiops.cli.app", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=str(cwd),
        timeout=timeout,
        input=input,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def run_aiops_in_process(home: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> CliResult:
    """The same `aiops` entry (``aiops.cli.app.main``) called in this process, with the environment,
    working folder and settings a fresh process would have. For tests whose subject is what a command
    answers, not the process: an offline preview costs ~4 s of imports in a fresh process and ~0.1 s
    here once pulumi_aws is loaded. Each command keeps at least one test through ``run_aiops``."""
    import contextlib
    import io

    from aiops.cli.app import main

    from aiops import settings

    saved_env, saved_cwd, saved_path, saved_modules = (
        dict(os.environ),
        os.getcwd(),
        list(sys.path),
        set(sys.modules),
    )
    out, err = io.StringIO(), io.StringIO()
    os.environ.update({"AIOPS_HOME": str(home), **(env or {})})
    os.chdir(cwd)
    settings.get_settings.cache_clear()
    settings.get_serve_settings.cache_clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        settings.get_settings.cache_clear()
        settings.get_serve_settings.cache_clear()
        sys.path[:] = saved_path
        _forget_user_modules(saved_modules)
    return CliResult(code, out.getvalue(), err.getvalue())


def _forget_user_modules(before: set[str]) -> None:
    """Drop the modules a command imported from a user's folder (a handler's inference.py, say), so
    the next call imports its own: a fresh process would. Installed packages and the project stay."""
    installed = (sys.prefix, sys.base_prefix)
    for name in set(sys.modules) - before:
        path = getattr(sys.modules[name], "__file__", None)
        if path and not name.startswith("aiops") and not os.path.abspath(path).startswith(installed):
            del sys.modules[name]


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Server:
    """An `aiops serve` process on 127.0.0.1:port, with a tiny HTTP client."""

    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict | None = None,
        timeout: float = 30,
    ) -> Response:
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

    def post(self, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
        response = self.request("POST", "/invocations", body, {"Content-Type": content_type}, timeout=60)
        return response.status, response.body

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


def launch_server(
    model: Path | str,
    *args: str,
    home: Path,
    cwd: Path,
    env: dict | None = None,
    port: int | None = None,
    open_files: int | None = None,
) -> Server:
    """Start `aiops serve MODEL ARGS` (on a free port unless the args or env choose one); ``open_files``:
    its soft and hard open-file limit (RLIMIT_NOFILE), as a container's ulimit would set it."""
    port = port or free_port()
    log_path = Path(cwd) / f"server-{port}.log"
    full_env = {
        **os.environ,
        "AIOPS_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "aiops.cli.app", "serve", str(model), *args]
    if not any(a in ("--port", "-p") for a in args) and "SAGEMAKER_BIND_TO_PORT" not in (env or {}):
        cmd += ["--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd),
            preexec_fn=None if open_files is None else partial(_limit_open_files, open_files),
        )
    return Server(proc, port, log_path)


def _limit_open_files(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def start_server(model: Path | str, root: Path, *args: str, env: dict | None = None) -> Server:
    """`aiops serve MODEL ARGS` with its home and log under ``root``, once it answers /ping (stopped when
    it does not)."""
    server = launch_server(model, *args, home=root / "home", cwd=root, env=env)
    try:
        wait_ready(server)
    except BaseException:
        stop_all([server])
        raise
    return server


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (read from /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def run_orphaned_worker(module: str) -> subprocess.CompletedProcess:
    """A serving worker started by this test while naming another process (pid 1) as its supervisor:
    it must stop before anything else."""
    return subprocess.run(
        [sys.executable, "-m", module, "--fd", "0", "--supervisor-pid", "1"],
        env={k: v for k, v in os.environ.items() if k != "AIOPS_SERVE_WORKER_SPEC"},
        capture_output=True,
        timeout=120,
    )


def wait_until(predicate, what: str, timeout: float = 120, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (and return that): waiting on a real event
    (a file written, a counter bumped), never a fixed sleep. `timeout` only turns a hang into a
    failure naming `what`; it is no assertion about speed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout} s")
        time.sleep(interval)


def built_once(tmp_path_factory, name: str, build) -> dict:
    """A session's expensive, JSON-able result made once for all pytest-xdist workers: the first
    worker here runs ``build(folder)`` under a file lock and saves what it returns; the others wait
    on the lock and read it. Without xdist it is simply built."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    # under xdist each worker's basetemp is basetemp/popen-gwN: its parent is shared by the workers
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    folder.mkdir(exist_ok=True)
    with FileLock(str(folder / ".lock")):
        done = folder / "result.json"
        if done.is_file():
            return json.loads(done.read_text())
        result = build(folder)
        done.write_text(json.dumps(result))
        return result


def tiny_llm_folder(tmp_path_factory) -> Path:
    """`aiops example tiny-llm` (default sizes, seed 0), made once for every xdist worker: the one tiny
    Hugging Face causal LM of the suite, read-only for the tests."""

    def make(root: Path) -> dict:
        made = run_aiops(root / "home", root, "example", "tiny-llm", str(root / "tiny-llm"))
        assert made.returncode == 0, made.output
        return {"model": str(root / "tiny-llm"), "stdout": made.stdout}

    return Path(built_once(tmp_path_factory, "tiny-llm", make)["model"])


def runtime_client(url: str):
    """An unmodified boto3 ``sagemaker-runtime`` client pointed at ``url`` (dummy credentials)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client(
        "sagemaker-runtime", endpoint_url=url, config=Config(retries={"max_attempts": 1}, read_timeout=60)
    )


# The fine-tuning example's reference run (tests/training/test_finetune.py, the e2e fine-tune journey)
FINETUNE_DIR = Path(__file__).resolve().parents[1] / "training" / "examples" / "finetune"
FINETUNE_SCRIPT = FINETUNE_DIR / "train.py"
FINETUNE_STEPS = 6
FINETUNE_HPS = {
    "max-steps": FINETUNE_STEPS,
    "batch-size": 4,
    "logging-steps": 1,
    "save-steps": 3,
    "eval-samples": 16,
    "lr": 0.005,
    "lora-dropout": 0,
    "threads": 1,
    "seed": 0,
}


def finetune_hp_args(**hps) -> list[str]:
    """`--hp KEY=VALUE` of the reference hyperparameters, `hps` over them."""
    return [a for key, value in {**FINETUNE_HPS, **hps}.items() for a in ("--hp", f"{key}={value}")]


def finetune_args(model: Path, data: Path, *extra: str, **hps) -> list[str]:
    """`aiops train` of the fine-tuning example on the model and data channels, locally."""
    args = [
        "train",
        "train.py",
        "--source-dir",
        str(FINETUNE_DIR),
        "--channel",
        f"model={model}",
        "--channel",
        f"train={data / 'train'}",
        "--channel",
        f"test={data / 'test'}",
    ]
    return [*args, *finetune_hp_args(**hps), *extra]


def finetuned_reference(tmp_path_factory, tiny_llm: Path, channels: Path) -> dict:
    """The reference fine-tune through `aiops train` (one process), made once for every xdist
    worker: {"home", "run_dir", "summary", "output"}."""

    def train(root: Path) -> dict:
        result = run_aiops(
            root / "home", root, *finetune_args(tiny_llm, channels, "--job-name", "ref", "--json")
        )
        assert result.returncode == 0, result.output
        summary = json.loads(result.stdout)
        return {
            "home": str(root / "home"),
            "run_dir": summary["run_dir"],
            "summary": summary,
            "output": result.stderr,
        }

    built = built_once(tmp_path_factory, "finetune-reference-run", train)
    return {**built, "home": Path(built["home"]), "run_dir": Path(built["run_dir"])}


def aiops_answers(server: Server, requests: list[tuple[dict, bytes]]) -> list[dict]:
    """`aiops serve`'s answers to (headers, body) POSTs on /invocations, in the shape the toolkit oracles
    record: status, content type, body."""
    answers = []
    for headers, body in requests:
        resp = server.request("POST", "/invocations", body, headers)
        answers.append(
            {"status": resp.status, "content_type": resp.headers.get("content-type"), "body": resp.body}
        )
    return answers
