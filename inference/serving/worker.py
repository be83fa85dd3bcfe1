"""One serving worker process: it loads the handler, opens its own listening socket on the shared
port and serves it on one asyncio loop (uvloop when installed), until SIGTERM drains it.

Process model (see docs/architecture.md): the supervisor binds the port; each worker process loads
the model, then opens its own listening socket on that port with ``SO_REUSEPORT`` (the kernel
spreads new connections over the workers that are listening). Everything a request meets inside
the worker is :class:`aiops.inference.serving.app.App`. The supervisor starts it as
``python -m aiops.inference.serving.worker --fd N [--ready-fd M]`` with the :class:`WorkerSpec` in
the environment; the worker reports ``ready``, ``recycle`` or one ``error:`` line on the pipe.
With ``--supervisor-pid`` it ends with its supervisor, however that ends (SIGKILL included): a
parent-death signal on Linux, and the loop's check that its parent is still that process.

The steps every worker process takes, whatever it serves (:func:`start_process`,
:func:`report_load_failure`, :func:`listen`, :func:`raise_fd_limit`, :func:`fit_connections`,
:func:`new_event_loop`, :func:`supervisor_gone`, :func:`drain`, :func:`run_process`), are the LLM
worker's (:mod:`aiops.inference.llm.worker`) too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from aiops.settings import ServeSettings

if TYPE_CHECKING:
    from aiops.inference.serving.app import App
    from aiops.inference.serving.http.listener import Listener

log = logging.getLogger("aiops.serve")

SPEC_ENV = "AIOPS_SERVE_WORKER_SPEC"


class WorkerSpec(BaseModel):
    """What a worker process receives: the serve settings model itself plus the resolved paths."""

    settings: ServeSettings
    model_dir: str
    code_dir: str | None = None
    script: str | None = None
    torch_threads: int | None = None


# what a worker module's entry runs: (listening fd, report pipe fd, spec, supervisor pid) -> exit code
WorkerMain = Callable[[int, "int | None", WorkerSpec, "int | None"], int]


class ServingApp(Protocol):
    """What the shared process steps need of a worker's app (the handler server's ``App``, the LLM
    server's ``LLMApp``)."""

    healthy: bool
    draining: bool
    max_connections: int

    @property
    def busy(self) -> bool: ...

    def close_idle(self) -> None: ...

    def sweep(self) -> None: ...


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        stream=sys.stderr,
        format=f"%(asctime)s [worker {os.getpid()}] %(levelname)s %(message)s",
    )


def listen(fd: int) -> socket.socket:
    """This worker's listening socket: its own on the shared port (SO_REUSEPORT), else the shared one."""
    shared = socket.socket(fileno=fd)
    if hasattr(socket, "SO_REUSEPORT") and shared.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.bind(shared.getsockname()[:2])
        shared.close()
        sock = own
    else:
        sock = shared
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def raise_fd_limit() -> int | None:
    """Raise this process's open-file limit to its hard limit; the limit now (None: unknown)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        return soft if soft != resource.RLIM_INFINITY else None
    except (ImportError, ValueError, OSError):
        return None


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_supervisor(supervisor_pid: int | None) -> None:
    """SIGTERM this worker when its supervisor's process ends, even by SIGKILL (Linux's parent-death
    signal; the loop also checks its parent every tick, for other systems). A supervisor that ended
    before the signal was asked for is seen here: the parent is then another process."""
    if supervisor_pid is None:
        return
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != supervisor_pid:
        os._exit(0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def start_process(log_level: str, ready_fd: int | None) -> tuple[Callable[[str], None], list[int]]:
    """What a worker process does first, whatever it serves: its log format, SIGINT ignored (the
    supervisor decides; Ctrl-C reaches it too), a SIGTERM that comes while the model loads remembered.
    Returns the function that writes one line to the supervisor's pipe, and that SIGTERM's list."""
    configure_logging(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_early: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_early.append(1))

    def report(line: str) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, (line.replace("\n", " ")[:2000] + "\n").encode())
            except OSError:
                pass

    return report, stop_early


def report_load_failure(err: BaseException, report: Callable[[str], None]) -> int:
    """Call inside the ``except`` of a failed load: the one line the supervisor shows (``usage-error``,
    bad input such as no model file: the CLI exits 2), the traceback in the log for anything else
    (the user's model_fn, transformers), and the worker's exit code."""
    from aiops.errors import AiopsError, UsageError

    if isinstance(err, AiopsError):
        report(f"{'usage-error' if isinstance(err, UsageError) else 'error'}: {err}")
    else:
        log.error("loading the model failed\n%s", traceback.format_exc().rstrip())
        report(f"error: loading the model failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}")
    return 3


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The worker's loop (uvloop when installed), set as the thread's current one."""
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def supervisor_gone(supervisor_pid: int | None) -> bool:
    """The supervisor this worker was started by has ended (its parent is now another process)."""
    if supervisor_pid is not None and os.getppid() != supervisor_pid:
        log.warning("the supervisor (pid %d) has ended; this worker stops", supervisor_pid)
        return True
    return False


async def drain(app: ServingApp, listener: Listener, seconds: float) -> None:
    """A graceful stop: health says unhealthy and every answer from now on closes its connection. The
    connections already queued on the listener are taken before it closes (closing resets them); then
    everything read or being read is answered (queued requests included) and idle connections close,
    for at most ``seconds``."""
    app.healthy = False
    app.draining = True
    listener.close()
    deadline = time.monotonic() + seconds
    await asyncio.sleep(0.05)  # read what already arrived on accepted connections before closing idle ones
    while time.monotonic() < deadline:
        app.close_idle()
        if not app.busy:
            break
        app.sweep()
        await asyncio.sleep(0.02)


def worker_main(fd: int, ready_fd: int | None, spec: WorkerSpec, supervisor_pid: int | None = None) -> int:
    from aiops.inference import codecs
    from aiops.inference.contract import create_handler
    from aiops.inference.serving.app import App

    s = spec.settings
    report, stop_early = start_process(s.log_level, ready_fd)
    codecs.configure(
        max_decoded_bytes=int(s.max_decoded_mb * 1024 * 1024),
        json_max_depth=s.json_max_depth,
        json_max_elements=s.json_max_elements,
    )
    try:
        set_torch_threads(spec.torch_threads)
        handler = create_handler(s, spec.model_dir, script=_path(spec.script), code_dir=_path(spec.code_dir))
        handler.load()
    except BaseException as err:  # noqa: BLE001 - the user's model_fn failed (even with sys.exit)
        return report_load_failure(err, report)
    if stop_early:
        return 0
    fd_limit = raise_fd_limit()
    # Two threads share the GIL (the loop, the inference thread or a stream's producer): a thread
    # that needs it waits until the holder blocks or this interval passes. 5 ms (the default) was
    # added to a streamed token's delivery and to a /ping during a Python-heavy handler.
    sys.setswitchinterval(0.001)
    sock = listen(fd)
    app = App(handler, s, spec.model_dir)
    fit_connections(app, fd_limit)
    return _serve(app, sock, report, stop_early, supervisor_pid)


def set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


FDS_PER_CONNECTION = 2
# Connections taken past the /ping-only ones: each is answered 503 and closed, or makes room by closing
# an older one, and holds its descriptors until that close completes (the next loop iteration)
CLOSING_SPARE = 32
# Descriptors kept free past those open when the model has loaded: the handler's later files, pipes
SPARE_FDS = 32


def open_descriptors() -> int | None:
    """How many descriptors this process has open (None: the system does not say)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return None


def connection_capacity(app: ServingApp) -> int:
    """The most connections a worker holds open at once (what its listener accepts up to)."""
    from aiops.inference.serving.http.admission import PING_ONLY_CONNECTIONS

    return app.max_connections + PING_ONLY_CONNECTIONS + CLOSING_SPARE


def fit_connections(app: ServingApp, fd_limit: int | None) -> None:
    """Keep max_connections (and the connections past it) inside the open-file limit: past it
    accept() fails, and nothing, /ping included, gets in."""
    if fd_limit is None:
        return
    # each connection holds two descriptors: its socket and the duplicate the inference thread writes
    # to (http/connection.py); kept apart: those open now (the model's files, the listener) and a spare
    in_use = open_descriptors()
    reserved = (64 if in_use is None else in_use) + SPARE_FDS
    room = (fd_limit - reserved) // FDS_PER_CONNECTION - (connection_capacity(app) - app.max_connections)
    if app.max_connections > room:
        log.warning(
            "max_connections=%d does not fit the open-file limit %d; using %d",
            app.max_connections,
            fd_limit,
            max(1, room),
        )
        app.max_connections = max(1, room)


def open_listener(loop: asyncio.AbstractEventLoop, sock: socket.socket, app: ServingApp) -> Listener:
    """The worker's accept loop, taking connections up to its :func:`connection_capacity`."""
    from aiops.inference.serving.http.connection import Connection
    from aiops.inference.serving.http.listener import Listener

    return Listener(
        loop,
        sock,
        lambda release: Connection(app, release),  # type: ignore[arg-type]  # App or the LLM's App-like
        connection_capacity(app),
    )


def _serve(app: App, sock: socket.socket, report, stop_early: list, supervisor_pid: int | None = None) -> int:
    from aiops.inference.serving.work import STOP

    loop = new_event_loop()
    app.loop = loop
    s = app.settings
    exit_code = [0]
    stopping = asyncio.Event()

    def stop(code: int = 0) -> None:
        exit_code[0] = exit_code[0] or code
        stopping.set()

    loop.add_signal_handler(signal.SIGTERM, stop)
    if stop_early:
        stop()

    async def main() -> None:
        listener = open_listener(loop, sock, app)
        app.start_threads()
        listener.start()
        report("ready")
        log.info("ready: %s, batch size %d", app.handler.describe(), app.batch_size)
        rss_cap = int(s.max_worker_rss_mb * 1024 * 1024) if s.max_worker_rss_mb else 0
        recycling = False
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
            app.sweep()
            if app.watchdog.stuck():
                app.watchdog.exit_stuck()
            if supervisor_gone(supervisor_pid):
                stop()
                break
            if s.max_blocked_streams and not recycling:
                blocked = app.watchdog.blocked_streams()
                if blocked > s.max_blocked_streams:
                    recycling = True
                    log.warning(
                        "%d stream generators are still blocked %g s after they were told to stop "
                        "(max_blocked_streams=%d); asking for a replacement",
                        blocked,
                        app.timeout,
                        s.max_blocked_streams,
                    )
                    report("recycle")
            if rss_cap and not recycling and _rss_bytes() > rss_cap:
                recycling = True
                log.warning(
                    "worker RSS %d MB is over max_worker_rss_mb=%g; asking for a replacement",
                    _rss_bytes() // (1024 * 1024),
                    s.max_worker_rss_mb,
                )
                report("recycle")
        await drain(app, listener, s.graceful_shutdown_seconds)
        app.work.put(STOP)

    try:
        loop.run_until_complete(main())
    finally:
        app.inference.join(1.0)
    return exit_code[0]


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def run_process(prog: str, worker_main: WorkerMain) -> None:
    """A worker process's entry (``python -m MODULE --fd N [--ready-fd M] [--supervisor-pid P]``, the
    :class:`WorkerSpec` in the environment): it ends with its supervisor, runs ``worker_main`` and
    exits with its code."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--supervisor-pid", type=int, default=None)
    args = parser.parse_args()
    end_with_supervisor(args.supervisor_pid)
    spec = WorkerSpec.model_validate_json(os.environ[SPEC_ENV])
    code = worker_main(args.fd, args.ready_fd, spec, args.supervisor_pid)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait on torch's atexit work


def main() -> None:  # python -m aiops.inference.serving.worker --fd N [--ready-fd M] [--supervisor-pid P]
    run_process("aiops-serve-worker", worker_main)


if __name__ == "__main__":
    main()
