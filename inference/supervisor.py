"""`aiops serve`: bind once, run N worker processes on the shared socket, keep them alive.

- The supervisor binds the socket (so a busy port fails at once) but does not listen; each
  worker loads the model, then listens and accepts. Before any worker is ready connections are
  refused: nothing can see a 200 from /ping before the model is loaded.
- A worker that dies after it was ready is replaced. A worker that fails while loading the model
  stops the server with that error (restarting would fail the same way).
- SIGTERM/SIGINT: the supervisor closes its copy of the socket and passes SIGTERM to the workers,
  which stop accepting, finish in-flight requests within the grace period, and exit; then exit 0.
  Workers still running after the grace period are killed.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiops.errors import AiopsError, UsageError
from aiops.inference.server import CONFIG_ENV, WorkerConfig

log = logging.getLogger("aiops.serve")

SAGEMAKER_ENV = {
    "SAGEMAKER_PROGRAM": "program",
    "SAGEMAKER_BIND_TO_PORT": "port",
    "SAGEMAKER_MODEL_SERVER_WORKERS": "workers",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "timeout_seconds",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": "max_payload_mb",
    "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "default_accept",
    "SAGEMAKER_TS_BATCH_SIZE": "batch_size",
    "SAGEMAKER_TS_MAX_BATCH_DELAY": "max_batch_delay_ms",
}


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    timeout_seconds: float = 60.0
    max_payload_mb: float = 6.0
    default_accept: str = "application/json"
    batch_size: int = 1
    max_batch_delay_ms: float = 5.0
    graceful_shutdown_seconds: float = 30.0
    api_key: str | None = None
    program: str | None = None
    log_level: str = "INFO"
    install_requirements: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


def options_from_settings(environ: dict[str, str] | None = None, **cli: object) -> ServeOptions:
    """Settings (AIOPS_SERVE__*, aiops.toml), overridden by SAGEMAKER_* env, overridden by CLI flags."""
    from aiops.settings import get_settings

    env = os.environ if environ is None else environ
    settings = get_settings()
    s = settings.serve
    values: dict[str, object] = {
        "host": s.host, "port": s.port, "workers": s.workers, "timeout_seconds": s.timeout_seconds,
        "max_payload_mb": s.max_payload_mb, "default_accept": s.default_accept,
        "batch_size": s.batch_size, "max_batch_delay_ms": s.max_batch_delay_ms,
        "graceful_shutdown_seconds": s.graceful_shutdown_seconds, "api_key": s.api_key,
        "log_level": settings.log_level,
    }
    kinds = {"port": int, "workers": int, "batch_size": int, "timeout_seconds": float, "max_payload_mb": float,
             "max_batch_delay_ms": float, "program": str, "default_accept": str}
    for var, key in SAGEMAKER_ENV.items():
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = kinds[key](raw.strip())
        except ValueError:
            raise UsageError(f"{var}={raw!r}: expected {kinds[key].__name__}") from None
        values[key] = value
    for key, value in cli.items():
        if value is not None:
            values[key] = value
    opts = ServeOptions(**values)  # type: ignore[arg-type]
    _validate(opts)
    return opts


def _validate(o: ServeOptions) -> None:
    if not 0 <= o.port <= 65535:
        raise UsageError(f"port {o.port}: must be 0..65535")
    if o.workers < 1:
        raise UsageError(f"workers {o.workers}: must be at least 1")
    if o.batch_size < 1:
        raise UsageError(f"batch size {o.batch_size}: must be at least 1")
    if o.timeout_seconds <= 0 or o.max_payload_mb <= 0 or o.max_batch_delay_ms < 0:
        raise UsageError("timeout and max payload must be positive, the batch delay not negative")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def install_requirements(code_dir: Path | None) -> None:
    req = code_dir / "requirements.txt" if code_dir else None
    if req is None or not req.is_file():
        return
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(req)])
    if proc.returncode != 0:
        raise AiopsError(f"pip install -r {req} failed (exit {proc.returncode})")


class Supervisor:
    def __init__(self, config: WorkerConfig, opts: ServeOptions, sock: socket.socket) -> None:
        self.config = config
        self.opts = opts
        self.sock = sock
        self.workers: dict[int, dict] = {}  # pid -> {"proc", "read_fd", "ready"}
        self.stopping = False
        self.ever_ready = False

    def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, **self.opts.extra_env, CONFIG_ENV: self.config.to_json()}
        cmd = [sys.executable, "-m", "aiops.inference.server", "--fd", str(self.sock.fileno()),
               "--ready-fd", str(write_fd)]
        proc = subprocess.Popen(cmd, env=env, pass_fds=(self.sock.fileno(), write_fd))
        os.close(write_fd)
        self.workers[proc.pid] = {"proc": proc, "read_fd": read_fd, "ready": False, "buf": b"", "error": None}

    def _read_reports(self, timeout: float) -> None:
        fds = {w["read_fd"]: w for w in self.workers.values() if w["read_fd"] is not None}
        if not fds:
            time.sleep(timeout)
            return
        try:
            readable, _, _ = select.select(list(fds), [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            w = fds[fd]
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                os.close(fd)
                w["read_fd"] = None
                continue
            w["buf"] += data
            while b"\n" in w["buf"]:
                line, w["buf"] = w["buf"].split(b"\n", 1)
                text = line.decode(errors="replace")
                if text == "ready":
                    w["ready"] = True
                    if not self.ever_ready:
                        self.ever_ready = True
                        self.on_ready()
                elif text.startswith(("error: ", "usage-error: ")):
                    kind, _, w["error"] = text.partition(": ")
                    w["usage"] = kind == "usage-error"

    def on_ready(self) -> None:
        pass

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        if on_ready is not None:
            self.on_ready = on_ready  # type: ignore[method-assign]

        def stop(signum, frame):
            self.stopping = True

        old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.opts.workers):
                self._spawn()
            while not self.stopping:
                self._read_reports(0.2)
                for pid, w in list(self.workers.items()):
                    code = w["proc"].poll()
                    if code is None:
                        continue
                    del self.workers[pid]
                    if w["read_fd"] is not None:
                        os.close(w["read_fd"])
                    if self.stopping:
                        continue
                    if not w["ready"]:
                        self._stop_all()
                        reason = w["error"] or f"the worker exited with code {code} while loading the model"
                        raise (UsageError if w.get("usage") else AiopsError)(reason)
                    log.warning("worker %d exited (code %s); starting a new one", pid, code)
                    self._spawn()
            self._stop_all()
            return 0
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _stop_all(self) -> None:
        try:
            self.sock.close()  # new connections are refused once the workers close theirs
        except OSError:
            pass
        for w in self.workers.values():
            if w["proc"].poll() is None:
                try:
                    w["proc"].send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.opts.graceful_shutdown_seconds + 5
        for w in self.workers.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                w["proc"].wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within the grace period; killing it", w["proc"].pid)
                w["proc"].kill()
                w["proc"].wait()
            if w["read_fd"] is not None:
                os.close(w["read_fd"])
                w["read_fd"] = None
        self.workers.clear()


def serve(model: str, opts: ServeOptions, *, runs_dir: Path, entry_point: str | None = None,
          source_dir: str | None = None, on_ready: Callable[[str], None] | None = None) -> int:
    """Resolve MODEL, bind, start the workers; returns the exit code after a graceful stop."""
    from aiops.inference.artifacts import resolve_model
    from aiops.inference.handler import find_script

    logging.basicConfig(level=getattr(logging, opts.log_level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s [aiops serve] %(levelname)s %(message)s")
    source = resolve_model(model, runs_dir=runs_dir, entry_point=entry_point, source_dir=source_dir)
    try:
        # a run's own script (inference.py, or the entry point defining model_fn) unless told otherwise
        program = Path(entry_point).name if entry_point else (opts.program or source.program)
        script = find_script(source.code_dir, program)
        if script is None and entry_point is None and opts.program and source.code_dir is not None:
            raise UsageError(f"SAGEMAKER_PROGRAM={opts.program}: not found in {source.code_dir}")
        if opts.install_requirements:
            install_requirements(source.code_dir)
        cpus = os.cpu_count() or 1
        config = WorkerConfig(
            model_dir=str(source.model_dir), code_dir=str(source.code_dir) if source.code_dir else None,
            script=str(script) if script else None, default_accept=opts.default_accept,
            timeout_seconds=opts.timeout_seconds, max_payload_bytes=int(opts.max_payload_mb * 1024 * 1024),
            batch_size=opts.batch_size, max_batch_delay_ms=opts.max_batch_delay_ms, api_key=opts.api_key,
            graceful_shutdown_seconds=opts.graceful_shutdown_seconds,
            torch_threads=None if "OMP_NUM_THREADS" in os.environ else max(1, cpus // opts.workers),
            log_level=opts.log_level,
        )
        sock = bind(opts.host, opts.port)
        host, port = sock.getsockname()[:2]
        url = f"http://{host if ':' not in host else '[' + host + ']'}:{port}"
        sup = Supervisor(config, opts, sock)
        return sup.run(on_ready=(lambda: on_ready(url)) if on_ready else None)
    finally:
        source.cleanup()
