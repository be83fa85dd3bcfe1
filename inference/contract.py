"""The contract between the serving core and whatever answers requests: one typed protocol.

The worker (:mod:`aiops.inference.serving`) calls an :class:`InferenceHandler` and nothing else: one
request through :meth:`~InferenceHandler.invoke`, several through
:meth:`~InferenceHandler.invoke_batch` when the handler is :attr:`~InferenceHandler.batchable`.
An answer is ``(body, content type)``; the body is ``bytes``, or an iterator of chunks (``bytes`` or
``str``, one chunk per item) when the answer streams (:func:`aiops.inference.streaming.is_stream`
tells them apart). The server frames a stream for the route (chunked, event-stream frames, or the
whole body for a client that cannot stream); the handler never sees HTTP.

:class:`aiops.inference.handler.Handler` is the SageMaker PyTorch toolkit's contract (``model_fn``,
``input_fn``, ``predict_fn``, ``output_fn`` / ``transform_fn``) behind this protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiops.settings import ServeSettings

#: a whole body, or a stream of chunks (each item ``bytes`` or ``str``)
Body = bytes | Iterator[Any]
#: ``(body, content type)``
Answer = tuple[Body, str]


@dataclass
class Context:
    """What a handler taking a trailing ``context`` argument receives.

    ``system_properties`` mirrors TorchServe's (``model_dir``, ``gpu_id``) for scripts written
    against the stock container.
    """

    model_dir: str
    request_id: str | None = None
    content_type: str | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    batch_size: int = 1
    #: inside a batched ``predict_fn`` call: each row's own request context, in row order (the
    #: batch's context itself carries no request's attributes, so none leaks into another's)
    batch: list[Context] = field(default_factory=list)

    @property
    def system_properties(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "gpu_id": None}


#: one request as :meth:`InferenceHandler.invoke_batch` takes it: body, content type, Accept, context
BatchRequest = tuple[bytes, str | None, str | None, Context]


class InferenceHandler(Protocol):
    """What the worker calls. ``content_type`` is None when the request sent none; ``accept`` is the
    client's Accept as sent (None when absent)."""

    #: several requests may be run in one :meth:`invoke_batch` call
    batchable: bool

    def load(self) -> Any:
        """Load the model (once, before the worker reports ready)."""

    def describe(self) -> str:
        """One line for the worker's log: what serves."""

    def invoke(self, body: bytes, content_type: str | None, accept: str | None, ctx: Context) -> Answer:
        """One request: its answer, or raise (a typed error keeps its status, anything else is a 500)."""

    def invoke_batch(self, requests: Sequence[BatchRequest]) -> list[Answer | BaseException]:
        """Several requests: per request its answer or the exception it raised, in order; one bad
        request never fails its neighbours."""


def create_handler(
    settings: ServeSettings, model_dir: str, *, script: Path | None, code_dir: Path | None
) -> InferenceHandler:
    """The handler of the container whose contract ``settings.container`` names: the SageMaker PyTorch
    container's (:class:`aiops.inference.handler.Handler`) or the Hugging Face inference container's
    (:class:`aiops.inference.huggingface.HuggingFaceHandler`)."""
    if settings.container == "huggingface":
        from aiops.inference.huggingface import HuggingFaceHandler

        return HuggingFaceHandler(model_dir, script=script, code_dir=code_dir, task=settings.hf_task)
    from aiops.inference.handler import Handler

    return Handler(model_dir, script=script, code_dir=code_dir, default_accept=settings.default_accept)
