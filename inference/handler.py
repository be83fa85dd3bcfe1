"""The SageMaker PyTorch inference handler contract: load a user's script, fill in the defaults.

A script (``code/inference.py`` or ``SAGEMAKER_PROGRAM``) may define

- ``model_fn(model_dir[, context])`` -> model
- ``input_fn(body, content_type[, context])`` -> data
- ``predict_fn(data, model[, context])`` -> prediction
- ``output_fn(prediction, accept[, context])`` -> body or ``(body, content_type)``
- or ``transform_fn(model, body, content_type, accept[, context])`` instead of the three above
  (defining it together with any of them is an error at load time, as in sagemaker-inference)
- optional ``pre_model_fn(model_dir[, context])`` and ``model_warmup_fn(model_dir, model[, context])``
- optional ``aiops_batch = True``: ``predict_fn`` takes a batch along dim 0 and answers row by row,
  so the server may run several requests' inputs in one call (dynamic batching).

A response streams when ``predict_fn``, ``output_fn`` or ``transform_fn`` returns an iterator or a
generator instead of bytes (each item one chunk; :mod:`aiops.inference.streaming`). :class:`Handler`
is this contract behind the server's :class:`aiops.inference.contract.InferenceHandler` protocol.

Whatever is missing behaves as sagemaker-pytorch-inference's ``DefaultPytorchInferenceHandler``.
``body`` is ``str`` for ``application/json`` and ``text/csv`` (as the toolkit decodes UTF-8 types
before calling the script) and ``bytes`` otherwise; ``content_type`` is the request's media type, or
None (and ``body`` the raw bytes) when it sent no Content-Type, as the toolkit passes them. torch is
imported when the model is loaded.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from aiops.inference import codecs, streaming
from aiops.inference.contract import Answer, BatchRequest, Context

from aiops.artifacts.programs import DEFAULT_PROGRAM
from aiops.errors import UsageError

log = logging.getLogger("aiops.serve")

DEFAULT_MODEL_FILENAME = "model.pt"
HANDLER_NAMES = (
    "model_fn",
    "input_fn",
    "predict_fn",
    "output_fn",
    "transform_fn",
    "pre_model_fn",
    "model_warmup_fn",
)
_ARITY = {
    "model_fn": 1,
    "input_fn": 2,
    "predict_fn": 2,
    "output_fn": 2,
    "transform_fn": 4,
    "pre_model_fn": 1,
    "model_warmup_fn": 2,
}


class HandlerError(Exception):
    """A failure inside the user's handler (or the default one): a 500 for the client."""


# ---------------------------------------------------------------- defaults


_DEVICE: list = []


def _device():
    """The serving device, looked up once (torch.cuda.is_available() costs a call per request)."""
    if not _DEVICE:
        import torch

        _DEVICE.append(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return _DEVICE[0]


def default_model_fn(model_dir: str):
    """``model.pt``, else the single ``.pt``/``.pth`` file, loaded with ``torch.jit.load``."""
    import torch

    path = os.path.join(model_dir, DEFAULT_MODEL_FILENAME)
    if not os.path.exists(path):
        found = sorted(
            f
            for f in os.listdir(model_dir)
            if os.path.splitext(f)[1] in (".pt", ".pth") and os.path.isfile(os.path.join(model_dir, f))
        )
        if len(found) != 1:
            raise UsageError(
                f"{model_dir}: exactly one .pt or .pth file is needed for the default model_fn, found "
                f"{found or 'none'}; save a TorchScript model.pt or define model_fn in your inference script"
            )
        path = os.path.join(model_dir, found[0])
    try:
        model = torch.jit.load(path, map_location=_device())
    except (RuntimeError, ValueError) as err:
        raise UsageError(
            f"{path} is not a TorchScript model ({str(err).splitlines()[0][:120]}); save it with "
            "torch.jit.save(torch.jit.script(model)) or define model_fn in your inference script"
        ) from None
    model = model.to(_device())
    model.eval()
    return model


def default_input_fn(input_data: Any, content_type: str):
    """JSON, CSV, NPY or NPZ -> a tensor (float32 for JSON/CSV, the array's dtype otherwise)."""
    import numpy as np
    import torch

    ctype = codecs.media_type(content_type)
    array = codecs.decode(input_data, ctype, np.float32)  # no Content-Type: 415
    try:
        if ctype in codecs.UTF8_TYPES:
            tensor = torch.from_numpy(array.astype(np.float32, copy=False))
        else:
            if not array.flags.writeable:
                array = array.copy()
            tensor = torch.from_numpy(array)
    except (TypeError, ValueError, RuntimeError) as err:
        raise codecs.BadRequest(f"cannot make a tensor of the {ctype} body: {codecs._short(err)}") from None
    device = _device()
    return tensor if device.type == "cpu" else tensor.to(device)


def default_predict_fn(data: Any, model: Any):
    """``model(data)`` in eval mode under ``torch.no_grad()``."""
    import torch

    return _predict_under(torch.no_grad(), data, model)


def _default_predict_inference_mode(data: Any, model: Any):
    """``default_predict_fn`` under ``torch.inference_mode()`` instead of ``no_grad()``: the same
    kernels and outputs, less per-op bookkeeping (no version counters / view tracking). Used only
    when output_fn is the default too, as an inference tensor cannot be updated in place outside
    inference mode, which a user's output_fn might do."""
    import torch

    return _predict_under(torch.inference_mode(), data, model)


def _predict_under(grad_mode: Any, data: Any, model: Any):
    with grad_mode:
        if getattr(model, "training", False):
            model.eval()
        if hasattr(data, "to"):
            device = _device()
            if device.type != "cpu":
                data = data.to(device)
        return model(data)


def default_output_fn(prediction: Any, accept: str, *, default_accept: str = codecs.JSON):
    """Encode per Accept (JSON, CSV, NPY); returns ``(body, content_type)``."""
    ctype = codecs.choose_accept(accept, default_accept)
    if hasattr(prediction, "detach"):
        prediction = prediction.detach().cpu().numpy()
    return codecs.encode(prediction, ctype), ctype


# ---------------------------------------------------------------- loading


def _takes_context(name: str, fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params.values()):
        return True
    n = len(params)
    if n == _ARITY[name]:
        return False
    if n == _ARITY[name] + 1:
        return True
    raise UsageError(f"{name} takes {n} arguments; the contract is {_ARITY[name]} (plus an optional context)")


def load_module(script: Path, code_dir: Path):
    """Import the user's script as the container does (its folder first on sys.path)."""
    name = script.stem
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise UsageError(f"{script}: cannot import it as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's import-time code failed
        sys.modules.pop(name, None)
        raise UsageError(f"{script}: importing it failed: {type(err).__name__}: {err}") from err
    return module


class Handler:
    """The user's functions with the defaults filled in; ``load()`` then ``invoke()``."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        script: Path | None = None,
        code_dir: Path | None = None,
        default_accept: str = codecs.JSON,
    ) -> None:
        self.model_dir = str(model_dir)
        self.default_accept = default_accept
        self.script = script
        module = load_module(script, code_dir or script.parent) if script is not None else None
        self.module = module
        user = {
            n: getattr(module, n)
            for n in HANDLER_NAMES
            if module is not None and callable(getattr(module, n, None))
        }
        if "transform_fn" in user and any(n in user for n in ("input_fn", "predict_fn", "output_fn")):
            both = ", ".join(n for n in ("input_fn", "predict_fn", "output_fn") if n in user)
            raise UsageError(
                f"{script}: transform_fn cannot be used together with {both}; define one or the other"
            )
        self.user = user
        self.fns: dict[str, tuple[Callable, bool]] = {}
        for name in HANDLER_NAMES:
            if name in user:
                self.fns[name] = (user[name], _takes_context(name, user[name]))
        self.transform = "transform_fn" in user
        self.default_output = not self.transform and "output_fn" not in user
        self.default_predict = _default_predict_inference_mode if self.default_output else default_predict_fn
        # streamed handlers (aiops_stream = True) are served unbatched unless they declare aiops_batch
        self.batchable = streaming.batchable(
            module,
            not self.transform and (bool(getattr(module, "aiops_batch", False)) or "predict_fn" not in user),
        )
        self.model: Any = None
        self.loaded = False
        self._out_types: dict[str | None, str] = {}  # Accept -> the default output_fn's content type

    def describe(self) -> str:
        names = [n for n in HANDLER_NAMES if n in self.user]
        return f"{self.script.name if self.script else 'no script'} ({', '.join(names) or 'all defaults'})"

    def _call(self, name: str, default: Callable | None, args: tuple, ctx: Context | None):
        """The script's ``name`` function, else ``default`` (None: a hook called only when the script
        has it)."""
        entry = self.fns.get(name)
        if entry is None:
            assert default is not None, f"{name} has no default: called only when the script defines it"
            return default(*args)
        fn, with_ctx = entry
        return fn(*args, ctx) if with_ctx else fn(*args)

    def load(self) -> Any:
        ctx = Context(model_dir=self.model_dir)
        if "pre_model_fn" in self.fns:
            self._call("pre_model_fn", None, (self.model_dir,), ctx)
        self.model = self._call("model_fn", default_model_fn, (self.model_dir,), ctx)
        if "model_warmup_fn" in self.fns:
            self._call("model_warmup_fn", None, (self.model_dir, self.model), ctx)
        self.loaded = True
        return self.model

    # -------------------------------------------------------- requests

    def prepare_body(self, body: bytes, content_type: str | None) -> Any:
        ctype = codecs.media_type(content_type)
        if ctype in codecs.UTF8_TYPES:
            try:
                return bytes(body).decode("utf-8")
            except UnicodeDecodeError:
                raise codecs.BadRequest(f"the {ctype} body is not valid UTF-8") from None
        return body

    def accept_value(self, accept: str | None) -> str:
        """The Accept that output_fn receives: the client's, or default_accept for none or */*."""
        return accept if accept and accept.strip() and accept.strip() != codecs.ANY else self.default_accept

    def check_accept(self, accept: str | None) -> None:
        """Fail fast with 406 before any work when the default output_fn cannot honour Accept."""
        if self.default_output:
            codecs.choose_accept(accept, self.default_accept)

    def decode(self, body: bytes, content_type: str | None, ctx: Context) -> Any:
        ctype = codecs.media_type(content_type)  # None without a Content-Type, as the toolkit passes it
        if "input_fn" not in self.fns and ctype == codecs.JSON:
            return default_input_fn(body, ctype)  # orjson reads (and UTF-8-checks) the bytes itself
        return self._call("input_fn", default_input_fn, (self.prepare_body(body, ctype), ctype), ctx)

    def predict(self, data: Any, ctx: Context) -> Any:
        return self._call("predict_fn", self.default_predict, (data, self.model), ctx)

    def encode(self, prediction: Any, accept: str | None, ctx: Context) -> Answer:
        """``prediction`` through ``output_fn``. A user's ``output_fn`` may stream a whole
        prediction: a generator it returns is the response's chunks (the toolkit hands whatever
        output_fn returns to the model server as the response)."""
        accept_value = self.accept_value(accept)
        if self.default_output:
            return default_output_fn(prediction, accept_value, default_accept=self.default_accept)
        result = self._call("output_fn", None, (prediction, accept_value), ctx)
        return _normalise_any(result, accept_value)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None, ctx: Context) -> Answer:
        """One request through the handler: ``(response body, content type)``, the body an iterator
        of chunks when the handler streams. A stream from ``predict_fn`` goes through the user's
        ``output_fn`` (which may return a stream, or consume it and return bytes), or with the
        default ``output_fn`` each item is encoded per Accept."""
        self.check_accept(accept)
        if self.transform:
            ctype = codecs.media_type(content_type)
            accept_value = self.accept_value(accept)
            fn, with_ctx = self.fns["transform_fn"]
            args = (self.model, self.prepare_body(body, ctype), ctype, accept_value)
            return _normalise_any(fn(*args, ctx) if with_ctx else fn(*args), accept_value)
        prediction = self.predict(self.decode(body, content_type, ctx), ctx)
        if streaming.is_stream(prediction):
            return self.encode_stream(prediction, accept, ctx)
        return self.encode(prediction, accept, ctx)

    def encode_stream(self, prediction: Iterator[Any], accept: str | None, ctx: Context) -> Answer:
        """A streamed ``predict_fn`` result through ``output_fn``: the default one encodes each item
        per Accept, except already encoded ones (bytes, str), which are sent as they are; the user's
        may return a stream or consume it and return bytes."""
        accept_value = self.accept_value(accept)
        if self.default_output:
            ctype = codecs.choose_accept(accept_value, self.default_accept)
            default_accept = self.default_accept

            def encode(item: Any) -> Any:
                if isinstance(item, (bytes, str, bytearray, memoryview)):
                    return item  # the stream makes it bytes
                return default_output_fn(item, accept_value, default_accept=default_accept)[0]

            return streaming.map_stream(prediction, encode), ctype
        fn, with_ctx = self.fns["output_fn"]
        out = fn(prediction, accept_value, ctx) if with_ctx else fn(prediction, accept_value)
        return _normalise_any(out, accept_value)

    def _encode_any(self, prediction: Any, accept: str | None, ctx: Context) -> Answer:
        if streaming.is_stream(prediction):  # a streaming predict_fn's row: (iterator of bytes, content type)
            return self.encode_stream(prediction, accept, ctx)
        return self.encode(prediction, accept, ctx)

    def invoke_batch(self, requests: Sequence[BatchRequest]) -> list[Answer | BaseException]:
        """Several requests, their inputs run through predict_fn together where shapes allow.

        Returns, per request, ``(body, content_type)`` or the exception it raised. A batched
        predict that fails, or whose output does not split back by rows, is retried request by
        request, so a batch never answers differently from the requests run alone.
        """
        if not self.batchable or len(requests) == 1:
            return [_capture(self.invoke, *req) for req in requests]
        import torch

        if "input_fn" not in self.fns and not self.transform:
            joined = self._invoke_joined(requests)
            if joined is not None:
                return joined
        results: list[Any] = [None] * len(requests)
        decoded: list[tuple[int, Any]] = []
        for i, (body, ctype, accept, ctx) in enumerate(requests):
            try:
                self.check_accept(accept)
                decoded.append((i, self.decode(body, ctype, ctx)))
            except BaseException as err:  # noqa: BLE001 - reported per request (even sys.exit)
                results[i] = err
        groups: dict[tuple, list[tuple[int, Any]]] = {}
        for i, data in decoded:
            key: tuple
            if isinstance(data, torch.Tensor) and data.dim() >= 1 and not data.requires_grad:
                key = (
                    data.dim(),
                    tuple(data.shape[1:]) if data.dim() > 1 else tuple(data.shape),
                    data.dtype,
                    data.device,
                )
            else:
                key = ("single", i)
            groups.setdefault(key, []).append((i, data))
        for members in groups.values():
            outputs = None
            if len(members) > 1:
                outputs = self._predict_together(members, requests)
            if outputs is None:
                outputs = [_capture(self.predict, data, requests[i][3]) for i, data in members]
            for (i, _), out in zip(members, outputs, strict=True):
                if isinstance(out, BaseException):
                    results[i] = out
                else:
                    results[i] = _capture(self._encode_any, out, requests[i][2], requests[i][3])
        return results

    def _invoke_joined(self, requests) -> list[Any] | None:
        """The common batch: every body one flat JSON list of numbers, all the same length. They are
        parsed as one document (one simdjson parse, one float32 array, no per-request arrays to
        stack) and run as one predict_fn call; with the default output_fn, the rows whose Accept is
        JSON are encoded by one orjson call too. None: not that case (or it failed); the general
        path runs."""
        import numpy as np
        import torch

        results: list[Any] = [None] * len(requests)
        rows, bodies, out_types = [], [], []
        json_type = codecs.JSON
        for i, (body, ctype, accept, _ctx) in enumerate(requests):
            if ctype != json_type and codecs.media_type(ctype) != json_type:  # no Content-Type: its 415
                return None
            try:
                out_type = self._default_out_type(accept)
            except BaseException as err:  # noqa: BLE001 - that request's 406
                results[i] = err
                continue
            raw = (body if type(body) is bytes else bytes(body)).strip()
            # exactly one flat list each, so the parts cannot combine into something none of them is
            # (find is memchr: far cheaper than count on a body of thousands of bytes)
            if (
                raw[:1] != b"["
                or raw[-1:] != b"]"
                or raw.find(b"[", 1) != -1
                or raw.find(b"]", 0, len(raw) - 1) != -1
            ):
                return None
            rows.append(i)
            bodies.append(raw)
            out_types.append(out_type)
        if len(rows) < 2:
            return None
        array = codecs.decode_rows(bodies, np.float32)  # one simdjson parse, no Python floats
        if array is None:
            try:
                array = codecs.decode(b"[" + b",".join(bodies) + b"]", codecs.JSON, np.float32)
            except codecs.HttpError:  # some body is bad: the general path names which
                return None
        if array.ndim != 2 or array.shape[0] != len(rows):
            return None
        batch = torch.from_numpy(array.astype(np.float32, copy=False))
        device = _device()
        if device.type != "cpu":
            batch = batch.to(device)
        members = [(i, None) for i in rows]
        outputs = self._predict_batch(batch, members, requests, [1] * len(rows), True, whole=True)
        if outputs is None:
            return None
        encoded = None
        if isinstance(outputs, np.ndarray):  # the default output_fn's rows, still one array
            if json_type in out_types:
                encoded = codecs.json_rows(outputs)
            outputs = list(outputs)
        for k, (i, out) in enumerate(zip(rows, outputs, strict=True)):
            if encoded is not None and out_types[k] == json_type:
                results[i] = (encoded[k], json_type)  # what default_output_fn gives for this row alone
            else:
                results[i] = _capture(self._encode_any, out, requests[i][2], requests[i][3])
        return results

    def _default_out_type(self, accept: str | None) -> str | None:
        """The content type the default output_fn answers ``accept`` with (406 when none), or None
        with a user's output_fn. Cached per Accept value: clients send a handful of them."""
        if not self.default_output:
            return None
        cache = self._out_types
        try:
            return cache[accept]
        except KeyError:
            pass
        self.check_accept(accept)  # the 406 of the unbatched path
        found = codecs.choose_accept(self.accept_value(accept), self.default_accept)
        if len(cache) < 256 and (accept is None or len(accept) <= 256):  # bounded, whatever clients send
            cache[accept] = found
        return found

    def _predict_together(self, members, requests) -> list[Any] | None:
        import numpy as np
        import torch

        tensors = [data for _, data in members]
        stacked = tensors[0].dim() == 1
        if tensors[0].device.type == "cpu":  # numpy joins many small arrays faster than torch
            arrays = [t.numpy() for t in tensors]
            batch = torch.from_numpy(np.stack(arrays) if stacked else np.concatenate(arrays))
        else:
            batch = torch.stack(tensors) if stacked else torch.cat(tensors)
        sizes = [t.shape[0] for t in tensors] if not stacked else None
        return self._predict_batch(batch, members, requests, sizes, stacked)

    def _predict_batch(self, batch, members, requests, sizes, stacked, whole: bool = False) -> Any:
        """One predict_fn call on ``batch`` (the members' rows); its output split back per member
        (a list), or with ``whole`` and the default output_fn the stacked rows as one numpy array."""
        import numpy as np
        import torch

        # a context of its own for the batch: no request's custom attributes or Accept stand for all
        ctx = Context(
            model_dir=self.model_dir, batch_size=len(members), batch=[requests[i][3] for i, _ in members]
        )
        try:
            out = self.predict(batch, ctx)
        except BaseException:  # noqa: BLE001 - retried one by one to attribute the failure
            return None
        if streaming.is_stream(out):
            if getattr(self.module, "aiops_stream", False):  # declared: one step per yield, a row per request
                return streaming.split_batch(out, len(members))
            streaming.close_quietly(out)  # undeclared: run them one by one instead
            return None
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != batch.shape[0]:
            return None
        if self.default_output and out.device.type == "cpu" and not out.requires_grad:
            rows = out.numpy()  # the default output_fn encodes numpy rows straight from this buffer
            if stacked:
                return rows if whole else list(rows)
            return np.split(rows, np.cumsum(sizes)[:-1])
        if stacked:
            return list(out.unbind(0))
        return list(out.split(sizes))


def _normalise(result: Any, accept_value: str) -> tuple[bytes, str]:
    if isinstance(result, tuple) and len(result) == 2:
        body, ctype = result
    else:
        body, ctype = result, codecs.first_media_type(accept_value, accept_value)
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    elif not isinstance(body, bytes):
        raise HandlerError(
            f"the handler returned {type(body).__name__}; output_fn/transform_fn must return "
            "bytes or str (or a (body, content_type) tuple)"
        )
    return body, str(ctype)


def _normalise_any(result: Any, accept_value: str) -> Answer:
    """A transform_fn's or output_fn's result that may stream: ``(iterator, content type)`` or an
    iterator alone (its type: the first concrete one Accept names) pass as they are."""
    if isinstance(result, tuple) and len(result) == 2 and streaming.is_stream(result[0]):
        return result[0], str(result[1])
    if streaming.is_stream(result):
        return result, _first_concrete_type(accept_value)
    return _normalise(result, accept_value)


def _first_concrete_type(accept: str) -> str:
    """The first concrete type an Accept value names (what a stream without its own type is)."""
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip()
        if media and "*" not in media:
            return media
    return "application/octet-stream"


def _capture(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` or the exception it raised - any, even SystemExit or KeyboardInterrupt from a
    handler: one request's failure must not take the worker down."""
    try:
        return fn(*args)
    except BaseException as err:  # noqa: BLE001 - reported per request
        return err


def find_script(code_dir: Path | None, program: str | None) -> Path | None:
    """The script SAGEMAKER_PROGRAM names (default inference.py) in code_dir, or None (all defaults)."""
    if code_dir is None:
        return None
    name = program or DEFAULT_PROGRAM
    if not name.endswith(".py"):
        name += ".py"
    path = code_dir / name
    return path if path.is_file() else None
