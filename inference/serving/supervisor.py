"""`aiops serve`: bind once, run N worker processes on the port, keep them alive.

- The supervisor binds the port (so a busy port fails at once, with ``SO_REUSEPORT`` where the OS
  has it) but does not listen; each worker loads the model, then listens on its own socket on that
  port and accepts. Before any worker is ready connections are refused: nothing can see a 200 from
  /ping before the model is loaded.
- A worker that dies after it was ready is replaced (a handler that called ``os._exit``, a call
  stuck past the timeout, the OOM killer). A worker that fails while loading the model stops the
  server with that error (restarting would fail the same way). A worker that reports ``recycle``
  (its RSS passed ``max_worker_rss_mb``) gets a replacement first and is stopped once it is ready.
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
from collections.abc import Callable
from pathlib import Path

from aiops.inference.serving.worker import SPEC_ENV, WorkerSpec

from aiops.errors import AiopsError, UsageError
from aiops.settings import ServeSettings, load_serve_settings

log = logging.getLogger("aiops.serve")


def serve_settings(**cli: object) -> ServeSettings:
    """The serve settings (SAGEMAKER_*, AIOPS_SERVE__*, aiops.toml) with CLI values on top."""
    return load_serve_settings(**cli)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):  # each worker then listens on its own socket: the kernel balances
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


WORKER_MODULE = "aiops.inference.serving.worker"


class Supervisor:
    """``module``: what each worker runs (``python -m MODULE --fd N --ready-fd M``, the spec in the
    environment): the handler worker, or another engine's (the LLM server, aiops.inference.llm.worker)."""

    def __init__(self, spec: WorkerSpec, sock: socket.socket, module: str = WORKER_MODULE) -> None:
        self.module = module
        self.spec = spec
        self.opts = spec.settings
        self.sock = sock
        self.workers: dict[int, dict] = {}  # pid -> {"proc", "read_fd", "ready"}
        self.stopping = False
        self.ever_ready = False

    def _spawn(self, replaces: int | None = None) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, SPEC_ENV: self.spec.model_dump_json()}
        cmd = [
            sys.executable,
            "-m",
            self.module,
            "--fd",
            str(self.sock.fileno()),
            "--ready-fd",
            str(write_fd),
            "--supervisor-pid",  # the worker ends with this process, even when it is SIGKILLed
            str(os.getpid()),
        ]
        proc = subprocess.Popen(cmd, env=env, pass_fds=(self.sock.fileno(), write_fd))
        os.close(write_fd)
        self.workers[proc.pid] = {
            "proc": proc,
            "read_fd": read_fd,
            "ready": False,
            "buf": b"",
            "error": None,
            "replaces": replaces,
            "retired": False,
        }

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
                    old = self.workers.get(w["replaces"]) if w["replaces"] else None
                    if old is not None and old["proc"].poll() is None:
                        old["proc"].send_signal(signal.SIGTERM)  # its replacement serves now: drain it
                    if not self.ever_ready:
                        self.ever_ready = True
                        self.on_ready()
                elif text == "recycle" and not w["retired"]:
                    w["retired"] = True
                    log.warning(
                        "worker %d asked to be replaced (max_worker_rss_mb); starting its replacement",
                        w["proc"].pid,
                    )
                    self._spawn(replaces=w["proc"].pid)
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
                    if self.stopping or w["retired"]:
                        continue
                    if not w["ready"]:
                        self._stop_all()
                        reason = w["error"] or f"the worker exited with code {code} while loading the model"
                        raise (UsageError if w.get("usage") else AiopsError)(reason)
                    log.warning(
                        "worker %d exited (code %s)%s; starting a new one",
                        pid,
                        code,
                        " after a handler call stayed stuck past the timeout" if code == 70 else "",
                    )
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


def serve(
    model: str,
    opts: ServeSettings,
    *,
    runs_dir: Path,
    entry_point: str | None = None,
    source_dir: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Resolve MODEL, bind, start the workers; returns the exit code after a graceful stop."""
    from aiops.inference.handler import find_script

    from aiops import archive
    from aiops.artifacts.resolve import resolve_model

    logging.basicConfig(
        level=getattr(logging, opts.log_level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s [aiops serve] %(levelname)s %(message)s",
    )
    limits = {
        "max_bytes": int(opts.archive_max_gb * archive.GIB),
        "max_ratio": opts.archive_max_ratio,
        "max_members": opts.archive_max_members,
    }
    source = resolve_model(
        model, runs_dir=runs_dir, entry_point=entry_point, source_dir=source_dir, archive_limits=limits
    )
    try:
        # a run's own script (inference.py, or the entry point defining model_fn) unless told otherwise
        program = Path(entry_point).name if entry_point else (opts.program or source.program)
        script = find_script(source.code_dir, program)
        if script is None and entry_point is None and opts.program and source.code_dir is not None:
            raise UsageError(f"SAGEMAKER_PROGRAM={opts.program}: not found in {source.code_dir}")
        if opts.install_requirements:
            install_requirements(source.code_dir)
        cpus = os.cpu_count() or 1
        spec = WorkerSpec(
            settings=opts,
            model_dir=str(source.model_dir),
            code_dir=str(source.code_dir) if source.code_dir else None,
            script=str(script) if script else None,
            torch_threads=None if "OMP_NUM_THREADS" in os.environ else max(1, cpus // opts.workers),
        )
        sock = bind(opts.host, opts.port)
        host, port = sock.getsockname()[:2]
        url = f"http://{host if ':' not in host else '[' + host + ']'}:{port}"
        sup = Supervisor(spec, sock)
        return sup.run(on_ready=(lambda: on_ready(url)) if on_ready else None)
    finally:
        source.cleanup()
