"""One serving worker: a lean ASGI app on uvicorn (httptools, uvloop when installed).

The event loop only parses HTTP; every handler call runs on one inference thread per worker,
which takes requests from a queue and, when batching is on and the handler is batchable, runs
whatever is queued (up to ``batch_size``) through ``predict_fn`` together. A worker is started by
the supervisor (``aiops.inference.supervisor``) with the already bound listening socket; it
loads the model first and only then starts accepting, so ``/ping`` can only answer once the
model is loaded.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from aiops.inference import codecs

log = logging.getLogger("aiops.serve")

CONFIG_ENV = "AIOPS_SERVE_WORKER_CONFIG"
MAX_CUSTOM_ATTRIBUTES = 1024
PING_BODY = b'{"status":"Healthy"}\n'


@dataclass
class WorkerConfig:
    model_dir: str
    code_dir: str | None
    script: str | None
    default_accept: str = codecs.JSON
    timeout_seconds: float = 60.0
    max_payload_bytes: int = 6 * 1024 * 1024
    batch_size: int = 1
    max_batch_delay_ms: float = 5.0
    api_key: str | None = None
    graceful_shutdown_seconds: float = 30.0
    torch_threads: int | None = None
    log_level: str = "INFO"
    variant: str = "AllTraffic"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerConfig":
        return cls(**json.loads(text))


class _Item:
    __slots__ = ("body", "ctype", "accept", "ctx", "fut", "loop")

    def __init__(self, body, ctype, accept, ctx, fut, loop):
        self.body, self.ctype, self.accept, self.ctx, self.fut, self.loop = body, ctype, accept, ctx, fut, loop


def _resolve(fut: asyncio.Future, result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


class InferenceThread:
    """Runs the handler off the event loop; batches when asked and the handler allows it."""

    def __init__(self, handler, batch_size: int, max_delay_s: float) -> None:
        self.handler = handler
        self.batch_size = max(1, batch_size) if handler.batchable else 1
        self.max_delay_s = max(0.0, max_delay_s)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="aiops-inference", daemon=True)
        self.thread.start()

    def submit(self, item: _Item) -> None:
        self.queue.put(item)

    def _gather(self, first: _Item) -> list[_Item]:
        batch = [first]
        q = self.queue
        while len(batch) < self.batch_size:  # take what is already waiting, no delay
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                break
        if len(batch) > 1 and len(batch) < self.batch_size and self.max_delay_s > 0:
            # Under load (more than one waiting) give stragglers up to max_delay to join, but stop
            # as soon as the arrivals pause: a lone request never waits.
            deadline = time.monotonic() + self.max_delay_s
            gap = min(self.max_delay_s, 0.0005)
            while len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(q.get(timeout=min(gap, remaining)))
                except queue.Empty:
                    break
        return [it for it in batch if not it.fut.done()]  # drop requests that already timed out

    def _run(self) -> None:
        handler = self.handler
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = self._gather(first)
            if not batch:
                continue
            if len(batch) == 1:
                it = batch[0]
                try:
                    result = handler.invoke(it.body, it.ctype, it.accept, it.ctx)
                except Exception as err:  # noqa: BLE001 - answered as an error response
                    result = err
                it.loop.call_soon_threadsafe(_resolve, it.fut, result)
                continue
            results = handler.invoke_batch([(it.body, it.ctype, it.accept, it.ctx) for it in batch])
            for it, result in zip(batch, results):
                it.loop.call_soon_threadsafe(_resolve, it.fut, result)


def _expire(fut: asyncio.Future, timeout: float) -> None:
    if not fut.done():
        fut.set_result(codecs.HttpError(f"the model did not answer within {timeout:g} s", 504))


def _json_headers(request_id: str, extra: list | None = None) -> list:
    headers = [(b"content-type", b"application/json"), (b"x-amzn-requestid", request_id.encode())]
    return headers + (extra or [])


class App:
    """The raw ASGI application: /ping, /invocations, /endpoints/{name}/invocations."""

    def __init__(self, handler, config: WorkerConfig) -> None:
        from aiops.inference.handler import Context

        self.handler = handler
        self.config = config
        self.Context = Context
        self.runner = InferenceThread(handler, config.batch_size, config.max_batch_delay_ms / 1000.0)
        self.api_key = config.api_key.encode() if config.api_key else None
        self.variant = config.variant.encode()
        self.max_bytes = config.max_payload_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        path = scope["path"]
        method = scope["method"]
        if path == "/ping":
            if method not in ("GET", "HEAD"):
                return await self._error(send, codecs.MethodNotAllowed("use GET /ping"), _rid())
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": PING_BODY if method == "GET" else b""})
            return
        if path == "/invocations" or (path.startswith("/endpoints/") and path.endswith("/invocations")
                                      and path.count("/") == 3 and len(path) > len("/endpoints//invocations")):
            if method != "POST":
                return await self._error(send, codecs.MethodNotAllowed("use POST"), _rid())
            return await self._invoke(scope, receive, send)
        return await self._error(send, codecs.NotFound(f"no route {path!r}; use /ping or /invocations"), _rid())

    async def _invoke(self, scope, receive, send) -> None:
        request_id = None
        ctype = accept = attrs = auth = None
        length = None
        api_key = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                ctype = value.decode("latin-1")
            elif name == b"accept":
                accept = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"x-amzn-sagemaker-custom-attributes":
                attrs = value
            elif name == b"x-amzn-sagemaker-inference-id":
                request_id = value.decode("latin-1")[:64]
            elif name == b"x-api-key":
                api_key = value
            elif name == b"authorization":
                auth = value
        rid = _rid()
        extra = []
        if attrs is not None:
            if len(attrs) > MAX_CUSTOM_ATTRIBUTES:
                return await self._error(send, codecs.BadRequest(
                    f"X-Amzn-SageMaker-Custom-Attributes is longer than {MAX_CUSTOM_ATTRIBUTES} characters"), rid)
            extra.append((b"x-amzn-sagemaker-custom-attributes", attrs))
        if self.api_key is not None:
            given = api_key
            if given is None and auth is not None and auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if given is None or not hmac.compare_digest(given, self.api_key):
                return await self._error(send, codecs.Unauthorized("missing or wrong API key (X-Api-Key header)"),
                                         rid, extra=[(b"www-authenticate", b"Bearer")])
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await self._error(send, codecs.BadRequest("bad Content-Length"), rid)
            if declared > self.max_bytes:
                return await self._error(send, self._too_large(), rid, close=True)
        # Read the body, refusing (without keeping) anything past the limit.
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_bytes:
                    return await self._error(send, self._too_large(), rid, close=True)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        ctx = self.Context(model_dir=self.config.model_dir, request_id=request_id or rid, content_type=ctype,
                           accept=accept, custom_attributes=attrs.decode("latin-1") if attrs is not None else None,
                           headers=None)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        timer = loop.call_later(self.config.timeout_seconds, _expire, fut, self.config.timeout_seconds)
        self.runner.submit(_Item(body, ctype, accept, ctx, fut, loop))
        result = await fut
        timer.cancel()
        if isinstance(result, BaseException):
            return await self._error(send, result, rid, extra=extra)
        out, out_type = result
        headers = [(b"content-type", out_type.encode("latin-1")), (b"content-length", str(len(out)).encode()),
                   (b"x-amzn-requestid", rid.encode()), (b"x-amzn-invoked-production-variant", self.variant)]
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    def _too_large(self) -> codecs.HttpError:
        mb = self.max_bytes / (1024 * 1024)
        return codecs.PayloadTooLarge(f"the request body is larger than {mb:g} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)")

    async def _error(self, send, err: BaseException, rid: str, *, extra: list | None = None,
                     close: bool = False) -> None:
        if isinstance(err, codecs.HttpError):
            status, message, etype = err.status_code, err.message, err.error_type
        elif isinstance(getattr(err, "status_code", None), int) and 400 <= err.status_code < 500:
            # e.g. sagemaker_inference.errors.BaseInferenceToolkitError raised by a user's script
            status, message, etype = err.status_code, str(getattr(err, "message", err))[:500], "ValidationError"
        else:
            status, etype = 500, "ModelError"
            message = f"the inference handler raised {type(err).__name__}; see the server log for request {rid}"
            log.error("request %s: handler error\n%s", rid,
                      "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip())
        if status >= 500 and status != 500:
            log.error("request %s: %s", rid, message)
        body = json.dumps({"error": message, "code": etype, "status": status, "request_id": rid}).encode() + b"\n"
        headers = _json_headers(rid, extra) + [(b"x-amzn-errortype", etype.encode()),
                                               (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_RID_PREFIX = uuid.uuid4().hex[:12]
_rid_counter = iter(range(1, 1 << 62))


def _rid() -> str:
    return f"{_RID_PREFIX}-{next(_rid_counter):08x}"


# ---------------------------------------------------------------- worker process


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s [worker {os.getpid()}] %(levelname)s %(message)s")


def _make_server(app: App, config: WorkerConfig):
    import contextlib

    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"

    uconfig = uvicorn.Config(app, loop=loop, http=http, lifespan="off", access_log=False, log_config=None,
                             log_level=config.log_level.lower(), server_header=False, date_header=False,
                             timeout_graceful_shutdown=config.graceful_shutdown_seconds,
                             timeout_keep_alive=60, backlog=2048)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # exit 0 after a graceful stop instead of re-raising SIGTERM
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self.handle_exit)
            yield

    return Server(uconfig)


def worker_main(fd: int, ready_fd: int | None, config: WorkerConfig) -> int:
    import socket

    from aiops.errors import AiopsError, UsageError
    from aiops.inference.handler import Handler

    _configure_logging(config.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C reaches it too
    stop_early = []
    signal.signal(signal.SIGTERM, lambda *_: stop_early.append(1))

    def report(line: str) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, (line.replace("\n", " ")[:2000] + "\n").encode())
            except OSError:
                pass

    try:
        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        handler = Handler(config.model_dir, script=_path(config.script), code_dir=_path(config.code_dir),
                          default_accept=config.default_accept)
        handler.load()
    except AiopsError as err:  # "usage-error": bad input (no model file, ...), the CLI exits 2
        report(f"{'usage-error' if isinstance(err, UsageError) else 'error'}: {err}")
        return 3
    except Exception as err:  # noqa: BLE001 - the user's model_fn failed
        log.error("loading the model failed\n%s", traceback.format_exc().rstrip())
        report(f"error: loading the model failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}")
        return 3
    if stop_early:
        return 0
    sock = socket.socket(fileno=fd)
    sock.listen(2048)
    app = App(handler, config)
    server = _make_server(app, config)
    report("ready")
    log.info("ready: %s, batch size %d", handler.describe(), app.runner.batch_size)
    server.run(sockets=[sock])
    return 0


def _path(value: str | None):
    from pathlib import Path

    return Path(value) if value else None


def main() -> None:  # python -m aiops.inference.server --fd N [--ready-fd M]
    import argparse

    parser = argparse.ArgumentParser(prog="aiops-serve-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, default=None)
    args = parser.parse_args()
    config = WorkerConfig.from_json(os.environ[CONFIG_ENV])
    code = worker_main(args.fd, args.ready_fd, config)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the inference thread is a daemon; do not wait on torch's atexit work


if __name__ == "__main__":
    main()
