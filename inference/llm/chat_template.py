"""A model folder's chat template: where the containers find it and how they render ``messages`` with it.

Where (first found wins): ``chat_template.json`` (TGI reads it and lets it override the tokenizer's),
``chat_template.jinja`` (where transformers >= 4.50 saves it), then ``tokenizer_config.json``'s
``chat_template`` (a string, or a list of ``{"name", "template"}`` of which TGI takes ``default``).

How: with jinja2's sandbox, the variables TGI passes (``messages`` with string contents, ``bos_token``,
``eos_token``, ``add_generation_prompt=True``) and transformers' helpers (``raise_exception``,
``strftime_now``, a ``tojson`` that does not escape HTML). ``trim_blocks``/``lstrip_blocks`` are off for TGI
(its minijinja environment keeps the defaults) and on for LMI (transformers' ``apply_chat_template``).
A last message from the assistant is continued rather than closed, as TGI and transformers' pipelines do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from aiops.inference.llm.generation import LLMError

TEMPLATE_FILES = ("chat_template.json", "chat_template.jinja", "tokenizer_config.json")


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    bos_token: str | None = None
    eos_token: str | None = None
    origin: str = ""  # the file it came from, for messages
    trim_blocks: bool = False  # TGI's minijinja: off; transformers: on

    @cached_property
    def _template(self):
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(
                x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
            )

        env = ImmutableSandboxedEnvironment(
            trim_blocks=self.trim_blocks, lstrip_blocks=self.trim_blocks, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        # TGI's edits (router/src/infer/chat_template.rs): contents are flat strings, and the training-only
        # {% generation %} markers go
        source = self.source.replace("messages[0]['content'][0]['text']", "messages[0]['content']")
        source = source.replace("{% generation %}", "").replace("{% endgeneration %}", "")
        try:
            return env.from_string(source)
        except jinja2.TemplateError as exc:
            raise LLMError(f"Template error: {exc}", "template_error") from None

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for ``messages`` (each ``{"role", "content"}`` with a string content); LLMError
        ("template_error") when the template fails or raises."""
        import jinja2

        try:
            text = self._template.render(
                messages=messages,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=True,
            )
        except jinja2.TemplateError as exc:
            raise LLMError(f"Template error: {exc}", "template_error") from None
        except Exception as exc:  # noqa: BLE001 - a template is user code: any failure is the request's
            raise LLMError(f"Template error: {type(exc).__name__}: {exc}", "template_error") from None
        if messages and messages[-1].get("role") == "assistant":
            # continue the final message: cut the rendering right after its content
            content = messages[-1].get("content", "")
            at = text.rfind(content)
            if at >= 0:
                text = text[: at + len(content)].rstrip()
        return text


def find_chat_template(folder: Path, *, trim_blocks: bool = False) -> ChatTemplate | None:
    """The folder's chat template, or None when it has none (a chat request then gets TGI's 422)."""
    config = _read_json(folder / "tokenizer_config.json") or {}
    bos, eos = _token(config.get("bos_token")), _token(config.get("eos_token"))
    standalone = _read_json(folder / "chat_template.json")
    candidates = [
        ("chat_template.json", standalone.get("chat_template") if isinstance(standalone, dict) else None),
        ("chat_template.jinja", _read_text(folder / "chat_template.jinja")),
        ("tokenizer_config.json", config.get("chat_template")),
    ]
    for origin, value in candidates:
        source = _pick(value)
        if source:
            return ChatTemplate(source, bos, eos, origin, trim_blocks)
    return None


def _pick(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": ..., "template": ...}]: TGI takes "default"
        for item in value:
            if (
                isinstance(item, dict)
                and item.get("name") == "default"
                and isinstance(item.get("template"), str)
            ):
                return item["template"]
    return None


def _token(value) -> str | None:
    """tokenizer_config.json's bos/eos: a string or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None
