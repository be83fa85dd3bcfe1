"""The LLM containers' routes, without HTTP: which parser answers which path, per container.

``parse(container, path, body, context)`` gives the :class:`~aiops.inference.llm.calls.Call` the HTTP layer
runs (see calls.py for the whole loop) or raises :class:`~aiops.inference.llm.calls.ApiError` with the
container's refusal; ``None`` when the container has no such POST route (404). ``get`` answers the
containers' GET routes that need no engine (``/info``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from aiops.inference.llm import api_lmi, api_openai, api_tgi
from aiops.inference.llm.calls import Call, ModelContext, Reply, dumps
from aiops.inference.llm.chat_template import find_chat_template
from aiops.inference.llm.generation import Limits

Container = Literal["tgi", "lmi"]
CONTAINERS: tuple[Container, ...] = ("tgi", "lmi")

Parser = Callable[[bytes, ModelContext], Call]

POST_ROUTES: dict[Container, dict[str, Parser]] = {
    "tgi": {
        "/": api_tgi.parse_compat,
        "/invocations": api_tgi.parse_invocations,
        "/generate": lambda body, context: api_tgi.parse_generate(body, context, stream=False),
        "/generate_stream": lambda body, context: api_tgi.parse_generate(body, context, stream=True),
        "/v1/chat/completions": api_openai.parse_chat,
        "/v1/completions": api_openai.parse_completions,
    },
    "lmi": {
        "/invocations": api_lmi.parse_invocations,
    },
}


def parse(container: Container, path: str, body: bytes, context: ModelContext) -> Call | None:
    parser = POST_ROUTES[container].get(path)
    return None if parser is None else parser(body, context)


def get(container: Container, path: str, context: ModelContext) -> Reply | None:
    if container == "tgi" and path == "/info":
        return Reply(200, dumps(api_tgi.info(context)))
    return None


def model_context(
    folder: Path, container: Container, limits: Limits | None = None, model_id: str | None = None
) -> ModelContext:
    """What the APIs know of a served folder: its id (the container's HF_MODEL_ID, else the folder's name),
    limits and chat template (rendered as each container renders it)."""
    template = find_chat_template(folder, trim_blocks=container == "lmi")
    return ModelContext(model_id=model_id or folder.name, limits=limits or Limits(), chat_template=template)
