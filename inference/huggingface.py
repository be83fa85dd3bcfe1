"""The Hugging Face inference container's contract: a ``transformers`` pipeline behind the handler protocol.

What the SageMaker Hugging Face inference container runs is sagemaker-huggingface-inference-toolkit's
``HuggingFaceHandlerService``; this module follows its 2.6.0 sources (``handler_service.py``,
``transformers_utils.py``, ``decoder_encoder.py``), and tests/inference/test_huggingface.py runs that
service on the same folders as the oracle.

- **The model.** A folder with no ``model_fn`` is served by ``transformers.pipeline(task, model=folder,
  tokenizer=folder, device=...)`` (a ``feature_extractor`` instead of the tokenizer for the vision and audio
  tasks). The task is ``HF_TASK`` when set, else the one the toolkit infers from ``config.json``'s first
  architecture (``...ForSequenceClassification`` -> ``text-classification``, ``...ForCausalLM`` ->
  ``text-generation``, the table below).
- **A request.** ``application/json`` and ``text/csv`` bodies are decoded as UTF-8 text, then
  ``input_fn(body, content_type)``: JSON as it parses (``{"inputs": ..., "parameters": {...}}``); CSV with
  a header row naming ``inputs`` (or ``question``/``context``) as ``{"inputs": [...]}``; NPY as an array;
  images as ``{"inputs": PIL image}`` (at most ``max_decoded_mb`` as RGB); audio as ``{"inputs": bytes}``.
  ``predict_fn`` pops ``inputs`` (the whole dict when absent) and ``parameters`` and calls
  ``pipeline(inputs, **parameters)``; ``output_fn``
  encodes the answer in the Accept type (JSON when none or ``*/*``), which is the response's content type.
  Content types are matched exactly, as the toolkit matches them (``application/json; charset=utf-8`` is
  not ``application/json``).
- **A script** (``code/inference.py``, or ``SAGEMAKER_PROGRAM``) overrides ``model_fn(model_dir)``,
  ``input_fn(input_data, content_type)``, ``predict_fn(data, model)``, ``output_fn(prediction, accept)``
  or ``transform_fn(model, input_data, content_type, accept)``; each may take one more argument, the
  context (the toolkit's rule: one parameter more than that list, counted as declared). ``transform_fn``
  with any of the other three is refused at load, as the toolkit refuses it.
- **Errors.** As the toolkit's ``handle``: whatever a request raises is a 400 with its message (the
  traceback in the server log). Where aiops answers differently on purpose: a Content-Type the default
  ``input_fn`` cannot decode is a 415 and an Accept the default ``output_fn`` cannot encode a 406 (the
  toolkit: 400), and NPY is read and written without pickles.

Not served: ``HF_MODEL_ID`` (downloading from the Hub at start-up), diffusers folders (``model_index.json``,
``text-to-image``), AWS Neuron, ``HF_TRUST_REMOTE_CODE``. Requests are not batched (the toolkit has no
batching). ``transformers`` (and torch) are imported when the handler is made, in the worker.
"""

from __future__ import annotations

import base64
import csv
import datetime
import inspect
import io
import json
import logging
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiops.inference import codecs
from aiops.inference.contract import Answer, BatchRequest, Context
from aiops.inference.errors import (
    BadRequest,
    HttpError,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from aiops.inference.handler import load_module

from aiops.errors import UsageError

log = logging.getLogger("aiops.serve")

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
ANY = "*/*"
UTF8_TYPES = (JSON, CSV)
IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/tiff",
    "image/bmp",
    "image/gif",
    "image/webp",
    "image/x-image",
)
AUDIO_TYPES = ("audio/x-flac", "audio/mpeg", "audio/wave", "audio/ogg", "audio/x-audio")
DECODABLE = (JSON, CSV, NPY, *IMAGE_TYPES, *AUDIO_TYPES)
ENCODABLE = (JSON, CSV, NPY, *IMAGE_TYPES)

#: transformers_utils.ARCHITECTURES_2_TASK, in its order: the last suffix that matches wins, as there
#: (so ``TapasForQuestionAnswering`` gives ``question-answering``, as in the container)
TASK_BY_ARCHITECTURE = {
    "TapasForQuestionAnswering": "table-question-answering",
    "ForQuestionAnswering": "question-answering",
    "ForTokenClassification": "token-classification",
    "ForSequenceClassification": "text-classification",
    "ForMultipleChoice": "multiple-choice",
    "ForMaskedLM": "fill-mask",
    "ForCausalLM": "text-generation",
    "ForConditionalGeneration": "text2text-generation",
    "MTModel": "text2text-generation",
    "EncoderDecoderModel": "text2text-generation",
    "GPT2LMHeadModel": "text-generation",
    "T5WithLMHeadModel": "text2text-generation",
}
#: tasks whose pipeline gets the folder as its feature extractor rather than its tokenizer
FEATURE_EXTRACTOR_TASKS = frozenset(
    {
        "automatic-speech-recognition",
        "image-segmentation",
        "image-classification",
        "audio-classification",
        "object-detection",
        "zero-shot-image-classification",
    }
)
#: tasks whose inputs are nested, which a CSV body cannot carry (the toolkit's preprocess refuses them)
NO_CSV_TASKS = frozenset({"zero-shot-classification", "table-question-answering"})

#: the toolkit's handler methods and how many parameters each takes with the context
CONTRACT = {"model_fn": 2, "input_fn": 3, "predict_fn": 3, "output_fn": 3, "transform_fn": 5}


# ---------------------------------------------------------------- the task


def supported_tasks() -> list[str]:
    """The pipeline tasks (aliases included) of the installed transformers."""
    from transformers.pipelines import get_supported_tasks

    return list(get_supported_tasks())


def check_task(task: str) -> str:
    """``task`` if transformers has a pipeline for it (aliases and ``translation_xx_to_yy`` included),
    else :class:`UsageError` naming the valid ones."""
    from transformers.pipelines import check_task as transformers_check

    if task == "text-to-image":
        raise UsageError(
            "HF_TASK=text-to-image: diffusers pipelines are not served by aiops serve; serve the "
            "folder with a code/inference.py that loads it (model_fn), or pick a transformers task"
        )
    try:
        transformers_check(task)
    except KeyError:
        raise UsageError(
            f"HF_TASK={task!r} is not a transformers pipeline task; valid: {', '.join(supported_tasks())}"
        ) from None
    return task


def infer_task(model_dir: Path) -> str:
    """The task the toolkit infers from ``config.json``'s first architecture (ARCHITECTURES_2_TASK)."""
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(
            f"{config_path}: cannot read it as JSON ({err}); save the model with save_pretrained"
        ) from None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if not isinstance(architecture, str):
        raise UsageError(
            f"{config_path} names no architectures, so the task cannot be inferred; set HF_TASK "
            "(e.g. HF_TASK=text-classification)"
        )
    task = None
    for suffix, candidate in TASK_BY_ARCHITECTURE.items():
        if architecture.endswith(suffix):
            task = candidate
    if task is None:
        raise UsageError(
            f"the task cannot be inferred from the architecture {architecture} ({config_path}): the "
            f"container infers it only for names ending in {', '.join(TASK_BY_ARCHITECTURE)}; set HF_TASK"
        )
    return task


def check_model_dir(model_dir: Path) -> None:
    """A folder the default ``model_fn`` can load: a transformers model (``config.json``)."""
    if (model_dir / "config.json").is_file():
        return
    if (model_dir / "model_index.json").is_file():
        raise UsageError(
            f"{model_dir} is a diffusers pipeline (model_index.json), which aiops serve does not serve; "
            "load it in a code/inference.py model_fn"
        )
    raise UsageError(
        f"{model_dir} is not a transformers model: no config.json; save the model and its tokenizer "
        "there with save_pretrained, or define model_fn in code/inference.py"
    )


def load_pipeline(model_dir: Path, task: str):
    """``transformers.pipeline`` as the toolkit's ``get_pipeline`` builds it, on GPU 0 when there is one."""
    import torch
    from transformers import pipeline

    device = 0 if torch.cuda.is_available() else -1
    loader = "feature_extractor" if task in FEATURE_EXTRACTOR_TASKS else "tokenizer"
    return pipeline(
        task=task, model=str(model_dir), device=device, trust_remote_code=False, **{loader: str(model_dir)}
    )


# ---------------------------------------------------------------- bodies (decoder_encoder.py)


def decode(body: Any, content_type: str | None, task: str | None = None) -> Any:
    """The default ``input_fn``: the body (``str`` for the UTF-8 types) as the pipeline's input."""
    if content_type == CSV and task in NO_CSV_TASKS:
        raise BadRequest(f"content type {content_type} not support with {task}, use different content_type")
    if content_type == JSON:
        return json.loads(body)
    if content_type == CSV:
        return _decode_csv(body)
    if content_type == NPY:
        return codecs.decode(bytes(body), codecs.NPY)  # aiops' reader: bounded, no pickles
    if content_type in IMAGE_TYPES:
        return {"inputs": _decode_image(body)}
    if content_type in AUDIO_TYPES:
        return {"inputs": bytes(body)}
    raise UnsupportedMediaType(
        f"Content-Type {content_type!r} is not one the Hugging Face container decodes (matched exactly, "
        f"no parameters); send one of {', '.join(DECODABLE)}, or define input_fn"
        if content_type
        else f"the request has no Content-Type; send one of {', '.join(DECODABLE)}"
    )


def _decode_csv(text: str) -> dict:
    lines = text.splitlines()
    if not lines or not any(name in lines[0].lower() for name in ("question", "context", "inputs")):
        raise BadRequest(
            "You need to provide the correct CSV with Header columns to use it with the inference "
            "toolkit default handler."
        )
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and "inputs" in rows[0]:
        return {"inputs": [row["inputs"] for row in rows]}
    return {"inputs": rows}


def _decode_image(body: bytes):
    """The image as RGB; its decoded size is checked from the header first (``max_decoded_mb``, 413):
    a few compressed megabytes can hold gigabytes of pixels."""
    from PIL import Image

    image = Image.open(io.BytesIO(body))  # reads the header only
    width, height = image.size
    if width * height * 3 > codecs.LIMITS.max_decoded_bytes:
        raise PayloadTooLarge(
            f"the image is {width}x{height} pixels: {width * height * 3} bytes as RGB, over the "
            f"{codecs.LIMITS.max_decoded_bytes} bytes a body may decode to (max_decoded_mb)"
        )
    return image.convert("RGB")


def _json_default(obj: Any) -> Any:
    """decoder_encoder._JSONEncoder: numpy scalars, anything with ``tolist``, datetimes, images (PNG)."""
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, datetime.datetime):
        return str(obj)
    if _is_image(obj):
        out = io.BytesIO()
        obj.save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode("utf-8")
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _is_image(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "save")


def encode(prediction: Any, accept: str) -> bytes:
    """The default ``output_fn``: the prediction in the Accept type."""
    if accept == JSON:
        text = json.dumps(
            prediction,
            ensure_ascii=False,
            allow_nan=False,
            indent=None,
            default=_json_default,
            separators=(",", ":"),
        )
        return text.encode("utf-8")
    if accept == CSV:
        rows = prediction if isinstance(prediction, list) else list(prediction)
        stream = io.StringIO()
        writer = csv.DictWriter(stream, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
        return stream.getvalue().encode("utf-8")
    if accept == NPY:
        import numpy as np

        out = io.BytesIO()
        np.save(out, prediction, allow_pickle=False)
        return out.getvalue()
    if accept in IMAGE_TYPES:
        out = io.BytesIO()
        prediction.save(out, format="PNG" if accept == "image/x-image" else accept.split("/")[-1].upper())
        return out.getvalue()
    raise NotAcceptable(
        f"Accept {accept[:200]!r} is not one the Hugging Face container encodes (matched exactly); ask for "
        f"one of {', '.join(ENCODABLE)} (or */*), or define output_fn"
    )


def default_predict(data: Any, model: Any) -> Any:
    """The toolkit's ``predict``: ``model(inputs, **parameters)``, both popped from the decoded body."""
    inputs = data.pop("inputs", data)
    parameters = data.pop("parameters", None)
    if parameters is not None:
        return model(inputs, **parameters)
    return model(inputs)


# ---------------------------------------------------------------- the handler


def _takes_context(name: str, fn: Callable) -> bool:
    """The toolkit's ``function_extra_arg``: the context is passed when the function declares as many
    parameters as the default's (context included), not when one fewer; anything else is refused."""
    try:
        declared = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    full = CONTRACT[name]
    if declared == full:
        return True
    if declared == full - 1:
        return False
    raise UsageError(
        f"{name} takes {declared} arguments; the contract is {full - 1} or {full} (with the context)"
    )


class HuggingFaceHandler:
    """The toolkit's handler service behind :class:`aiops.inference.contract.InferenceHandler`."""

    batchable = False

    def __init__(
        self,
        model_dir: str | Path,
        *,
        script: Path | None = None,
        code_dir: Path | None = None,
        task: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.script = script
        module = load_module(script, code_dir or script.parent) if script is not None else None
        self.user: dict[str, tuple[Callable, bool]] = {}
        for name in CONTRACT:
            fn = getattr(module, name, None) if module is not None else None
            if callable(fn):
                self.user[name] = (fn, _takes_context(name, fn))
        if "transform_fn" in self.user and any(
            n in self.user for n in ("input_fn", "predict_fn", "output_fn")
        ):
            both = ", ".join(n for n in ("input_fn", "predict_fn", "output_fn") if n in self.user)
            raise UsageError(
                f"{script}: transform_fn cannot be used together with {both}; define one or the other"
            )
        if "model_fn" not in self.user:
            check_model_dir(self.model_dir)
        self.task = check_task(task) if task else None
        if self.task is None and "model_fn" not in self.user:
            self.task = infer_task(self.model_dir)
        self.model: Any = None

    def describe(self) -> str:
        model = "model_fn" if "model_fn" in self.user else f"{self.task} pipeline"
        code = f"{self.script.name} ({', '.join(self.user)})" if self.script else "no script"
        return f"Hugging Face container: {model}, {code}"

    def _call(self, name: str, default: Callable, args: tuple, ctx: Context) -> Any:
        entry = self.user.get(name)
        if entry is None:
            return default(*args)
        fn, with_ctx = entry
        return fn(*args, ctx) if with_ctx else fn(*args)

    def load(self) -> Any:
        ctx = Context(model_dir=str(self.model_dir))
        self.model = self._call("model_fn", self._default_model_fn, (str(self.model_dir),), ctx)
        return self.model

    def _default_model_fn(self, model_dir: str) -> Any:
        assert self.task is not None  # set in __init__ whenever there is no model_fn
        return load_pipeline(Path(model_dir), self.task)

    def _transform(self, body: Any, content_type: str | None, accept: str, ctx: Context) -> Any:
        """The toolkit's default ``transform_fn``: input_fn, predict_fn, output_fn."""
        data = self._call("input_fn", lambda b, c: decode(b, c, self.task), (body, content_type), ctx)
        prediction = self._call("predict_fn", default_predict, (data, self.model), ctx)
        return self._call("output_fn", encode, (prediction, accept), ctx)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None, ctx: Context) -> Answer:
        """One request as the toolkit's ``handle``: Accept defaults to JSON, the UTF-8 types arrive as
        text, the answer's content type is the Accept."""
        if not accept or accept == ANY:
            accept = JSON
        try:
            data: Any = body
            if content_type in UTF8_TYPES:
                data = bytes(body).decode("utf-8")
            entry = self.user.get("transform_fn")
            if entry is None:
                result = self._transform(data, content_type, accept, ctx)
            else:
                fn, with_ctx = entry
                args = (self.model, data, content_type, accept)
                result = fn(*args, ctx) if with_ctx else fn(*args)
        except HttpError:
            raise
        except Exception as err:  # the toolkit's handle: any failure is the client's 400
            log.warning("request %s failed\n%s", ctx.request_id, traceback.format_exc().rstrip())
            raise BadRequest(" ".join(f"{type(err).__name__}: {err}".split())[:1000]) from err
        return _answer(result, accept)

    def invoke_batch(self, requests: Sequence[BatchRequest]) -> list[Answer | BaseException]:
        results: list[Answer | BaseException] = []
        for body, content_type, accept, ctx in requests:
            try:
                results.append(self.invoke(body, content_type, accept, ctx))
            except BaseException as err:  # noqa: BLE001 - reported per request
                results.append(err)
        return results


def _answer(result: Any, accept: str) -> Answer:
    """The response: the body ``output_fn``/``transform_fn`` returned (``str`` as UTF-8), typed as the
    Accept; a ``(body, content_type)`` pair names its own type."""
    content_type = accept
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        result, content_type = result
    if isinstance(result, str):
        return result.encode("utf-8"), content_type
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result), content_type
    raise HttpError(
        f"output_fn/transform_fn returned {type(result).__name__}; it must return bytes or str (or a "
        "(body, content_type) pair)"
    )
