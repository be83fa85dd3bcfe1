"""Handler calls as the worker makes them: one request or a batch through the handler contract,
every failure captured as that request's result, a streamed result's first chunk made inside the
call; and the run-queue reading that tells a slow call from a call that waited for a CPU."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from aiops.inference import streaming
from aiops.inference.contract import Context, InferenceHandler
from aiops.inference.serving.stream_sender import ChunkStream
from aiops.inference.serving.work import Request, Streamed


class HandlerCalls:
    """What a request becomes: ``(body, content type)``, a :class:`Streamed`, or the exception the
    handler raised (any, even ``SystemExit``: that request's 500, never the worker's end)."""

    def __init__(self, handler: InferenceHandler, model_dir: str) -> None:
        self.handler = handler
        self.model_dir = model_dir

    def context(self, req: Request) -> Context:
        return Context(
            model_dir=self.model_dir,
            request_id=req.inference_id or req.rid,
            content_type=req.ctype,
            accept=req.accept,
            custom_attributes=req.attrs.decode("latin-1") if req.attrs is not None else None,
            headers={},
        )

    def one(self, req: Request):
        try:
            out, ctype = self.handler.invoke(req.body, req.ctype, req.accept, self.context(req))
            return self._prime(out, ctype)
        except BaseException as err:  # noqa: BLE001 - even SystemExit: that request's 500, not the worker's end
            return err

    def batch(self, batch: list[Request]) -> list:
        try:
            results = self.handler.invoke_batch([(r.body, r.ctype, r.accept, self.context(r)) for r in batch])
        except BaseException as err:  # noqa: BLE001 - invoke_batch captures per request; this is a backstop
            return [err] * len(batch)
        out = []
        for result in results:
            # a whole answer (bytes) never streams: no iterator check for it
            if isinstance(result, tuple) and type(result[0]) is not bytes:
                try:
                    result = self._prime(*result)
                except BaseException as err:  # noqa: BLE001
                    result = err
            out.append(result)
        return out

    @staticmethod
    def _prime(out, ctype):
        if not streaming.is_stream(out):
            return out, ctype
        stream = ChunkStream(out)
        stream.prime()  # the first chunk is part of the handler call (its errors are ordinary errors)
        return Streamed(stream, ctype)


_SCHED = threading.local()


def runqueue_wait() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat), or None.
    One pread on a descriptor kept per thread (~3 µs)."""
    fd = getattr(_SCHED, "fd", None)
    if fd is None:
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            fd = -1
        _SCHED.fd = fd
    if fd < 0:
        return None
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def off_cpu_since(waited: float | None) -> Callable[[], float | None] | None:
    """For a call that began with run-queue reading ``waited`` (None: not read): a function giving
    the seconds the thread has waited for a CPU since, or None when unknown (the policy asks it only
    for a call over its budget, so a fast call costs no reading)."""
    if waited is None:
        return None

    def off_cpu() -> float | None:
        now = runqueue_wait()
        return None if now is None else now - waited

    return off_cpu
