"""`aiops serve MODEL_DIR --container tgi|lmi`: a Hugging Face causal LM behind the HTTP API of the LLM
container the endpoint runs, a second engine beside the handler server.

The command: MODEL resolved as for handlers, checked as a causal-LM folder, the engine's bounds checked
(:func:`limits_for`), then the handler server's supervisor (bind once, workers on the port, replaced when
they die, SIGTERM drains) runs workers of :mod:`aiops.inference.llm.worker` instead of the handler
worker. Inside a worker, one module an idea, as the handler server's:

- :mod:`~aiops.inference.llm.worker`: the process (load, loop, drain), with the handler worker's steps;
- :mod:`~aiops.inference.llm.app`: admission, each request's task, the answers, the timeouts;
- :mod:`~aiops.inference.llm.routes`: which route goes to which API adapter (:mod:`.protocols`), the
  health and information routes, what InvokeEndpoint's routes answer;
- :mod:`~aiops.inference.llm.stream_sender`: a streamed answer, chunked or as event-stream frames;
- the HTTP layer itself is the handler server's (:mod:`aiops.inference.serving.http`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from aiops.inference.llm.folder import DEFAULT_MAX_TOTAL_TOKENS, check_causal_lm_folder, max_positions
from aiops.inference.llm.generation import Limits

from aiops.errors import UsageError
from aiops.settings import ServeSettings


def limits_for(opts: ServeSettings, config: dict) -> Limits:
    """The engine's bounds from the serve settings and the model's positions; UsageError naming the option."""
    positions = max_positions(config)
    total = opts.max_total_tokens
    if total is None:
        total = min(DEFAULT_MAX_TOTAL_TOKENS, positions or DEFAULT_MAX_TOTAL_TOKENS)
    elif positions is not None and total > positions:
        raise UsageError(
            f"--max-total-tokens {total} is more than the model's {positions} positions "
            f"(config.json max_position_embeddings): use at most {positions}"
        )
    try:
        return Limits(
            max_total_tokens=total,
            max_batch_size=opts.max_batch_size or Limits.max_batch_size,
            max_input_tokens=opts.max_input_tokens,
            max_queue=opts.max_queue,
        )
    except ValueError as exc:
        raise UsageError(f"LLM bounds: {exc} (--max-total-tokens, --max-input-tokens)") from None


def serve(
    model: str,
    opts: ServeSettings,
    *,
    runs_dir: Path,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """MODEL (a folder, a model.tar.gz or a local run, as for handlers) checked as a causal-LM folder and
    the bounds checked, then bind and run the workers; the exit code after a graceful stop."""
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
    source = resolve_model(model, runs_dir=runs_dir, archive_limits=limits)
    try:
        return _serve_folder(source.model_dir.resolve(), opts, on_ready)
    finally:
        source.cleanup()


def _serve_folder(folder: Path, opts: ServeSettings, on_ready: Callable[[str], None] | None) -> int:
    from aiops.inference.llm.worker import MODULE
    from aiops.inference.serving.supervisor import Supervisor, bind
    from aiops.inference.serving.worker import WorkerSpec

    config = check_causal_lm_folder(folder)
    limits = limits_for(opts, config)
    opts = opts.model_copy(
        update={
            "max_total_tokens": limits.max_total_tokens,
            "max_batch_size": limits.max_batch_size,
        }
    )
    cpus = os.cpu_count() or 1
    spec = WorkerSpec(
        settings=opts,
        model_dir=str(folder),
        torch_threads=None if "OMP_NUM_THREADS" in os.environ else max(1, cpus // opts.workers),
    )
    sock = bind(opts.host, opts.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else '[' + host + ']'}:{port}"
    supervisor = Supervisor(spec, sock, module=MODULE)
    return supervisor.run(on_ready=(lambda: on_ready(url)) if on_ready else None)
