"""One LLM worker process, as :mod:`aiops.inference.serving.worker` is the handler server's (and with its
steps: the start, the listening socket on the shared port, the open-file limit, the loop, the drain):
it loads the folder into an :class:`~aiops.inference.llm.engine.LLMEngine`, starts the engine's decode
thread and serves :class:`~aiops.inference.llm.app.LLMApp` on one asyncio loop until SIGTERM drains it.
The supervisor starts it as ``python -m aiops.inference.llm.worker --fd N [--ready-fd M]
[--supervisor-pid P]``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiops.inference.serving.worker import (
    WorkerSpec,
    drain,
    fit_connections,
    listen,
    new_event_loop,
    open_listener,
    raise_fd_limit,
    report_load_failure,
    run_process,
    set_torch_threads,
    start_process,
    supervisor_gone,
)

if TYPE_CHECKING:
    from aiops.inference.llm.app import LLMApp
    from aiops.inference.llm.protocols import Container

log = logging.getLogger("aiops.serve")

MODULE = "aiops.inference.llm.worker"  # what the supervisor runs for --container tgi|lmi
SWEEP_SECONDS = 0.1


def worker_main(fd: int, ready_fd: int | None, spec: WorkerSpec, supervisor_pid: int | None = None) -> int:
    from aiops.inference.llm import protocols
    from aiops.inference.llm.app import LLMApp
    from aiops.inference.llm.folder import check_causal_lm_folder
    from aiops.inference.llm.server import limits_for

    s = spec.settings
    report, stop_early = start_process(s.log_level, ready_fd)
    container: Container = "lmi" if s.container == "lmi" else "tgi"
    try:
        set_torch_threads(spec.torch_threads)
        from aiops.inference.llm.engine import LLMEngine

        folder = Path(spec.model_dir)
        limits = limits_for(s, check_causal_lm_folder(folder))
        engine = LLMEngine.from_folder(folder, limits)
        context = protocols.model_context(folder, container, limits)
    except BaseException as err:  # noqa: BLE001 - transformers failed to load the folder
        return report_load_failure(err, report)
    if stop_early:
        return 0
    fd_limit = raise_fd_limit()
    sys.setswitchinterval(0.001)  # the loop and the engine thread share the GIL: hand it over promptly
    loop = new_event_loop()
    engine.start()
    try:
        app = LLMApp(engine, context, container, s, loop)
        fit_connections(app, fd_limit)
        return _serve(app, listen(fd), report, stop_early, supervisor_pid)
    finally:
        engine.close(timeout=5)


def _serve(
    app: LLMApp,
    sock: socket.socket,
    report: Callable[[str], None],
    stop_early: list,
    supervisor_pid: int | None = None,
) -> int:

    loop = app.loop
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    if stop_early:
        stopping.set()

    async def main() -> None:
        listener = open_listener(loop, sock, app)
        listener.start()
        report("ready")
        limits = app.context.limits
        log.info(
            "ready: %s API, max_total_tokens %d, max_batch_size %d",
            app.container,
            limits.max_total_tokens,
            limits.max_batch_size,
        )
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), SWEEP_SECONDS)
            except asyncio.TimeoutError:
                pass
            app.sweep()
            if supervisor_gone(supervisor_pid):
                break
        await drain(app, listener, app.settings.graceful_shutdown_seconds)

    loop.run_until_complete(main())
    return 0


def main() -> None:  # python -m aiops.inference.llm.worker --fd N [--ready-fd M] [--supervisor-pid P]
    run_process("aiops-llm-worker", worker_main)


if __name__ == "__main__":
    main()
