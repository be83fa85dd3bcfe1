"""Request decoding and response encoding, as the SageMaker inference toolkit's defaults.

Behaviour follows ``sagemaker_inference.decoder`` / ``encoder`` and the default PyTorch handler
(sagemaker-pytorch-inference 2.0.x), with three deliberate differences, all for safety:
``.npy``/``.npz`` bodies are loaded with ``allow_pickle=False``; an ``.npz`` body holding one scipy
sparse matrix (what the toolkit's ``scipy.sparse.load_npz`` expects) is densified without scipy;
and every failure is a typed :class:`HttpError` (400/406/415) instead of a 500 with a traceback.

numpy and orjson are imported lazily (inside functions), so importing this module is free.
"""

from __future__ import annotations

import io
from typing import Any

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
OCTET_STREAM = "application/octet-stream"
ANY = "*/*"
UTF8_TYPES = (JSON, CSV)
DECODABLE = (JSON, CSV, NPY, NPZ)
ENCODABLE = (JSON, CSV, NPY)


class HttpError(Exception):
    """An error with an HTTP status for the client. ``message`` is safe to show to the client."""

    status_code = 500
    error_type = "InternalFailure"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequest(HttpError):
    status_code = 400
    error_type = "ValidationError"


class Unauthorized(HttpError):
    status_code = 401
    error_type = "AccessDeniedException"


class NotFound(HttpError):
    status_code = 404
    error_type = "ValidationError"


class MethodNotAllowed(HttpError):
    status_code = 405
    error_type = "ValidationError"


class NotAcceptable(HttpError):
    status_code = 406
    error_type = "ValidationError"


class PayloadTooLarge(HttpError):
    status_code = 413
    error_type = "ValidationError"


class UnsupportedMediaType(HttpError):
    status_code = 415
    error_type = "ValidationError"


def media_type(header: str | None) -> str | None:
    """``'Application/JSON; charset=utf-8'`` -> ``'application/json'``; empty -> None."""
    if not header:
        return None
    value = header.split(";", 1)[0].strip().lower()
    return value or None


def parse_accept(accept: str | None, default_accept: str) -> list[str]:
    """The media types of an Accept header in order; missing or ``*/*`` means ``default_accept``.

    The toolkit splits on commas and compares exact strings; we also drop parameters (``;q=``).
    """
    if not accept or not accept.strip():
        return [default_accept]
    out = []
    for part in accept.split(","):
        value = media_type(part)
        if value is None:
            continue
        out.append(default_accept if value == ANY else value)
    return out or [default_accept]


def choose_accept(accept: str | None, default_accept: str, supported=ENCODABLE) -> str:
    """The first acceptable type we can encode, or :class:`NotAcceptable` (406)."""
    for value in parse_accept(accept, default_accept):
        if value in supported:
            return value
    raise NotAcceptable(f"cannot encode the response as {accept!r}; supported: {', '.join(supported)}")


# ---------------------------------------------------------------- decoding


def decode(body: Any, content_type: str | None) -> Any:
    """Decode a request body into a numpy array (the toolkit's ``decoder.decode``).

    ``body`` is ``str`` for the UTF-8 types (the toolkit decodes them before ``input_fn``) or bytes.
    """
    ctype = media_type(content_type) or JSON
    try:
        fn = _DECODERS[ctype]
    except KeyError:
        raise UnsupportedMediaType(
            f"content type {ctype!r} is not supported; send one of {', '.join(DECODABLE)} "
            "or implement input_fn in your inference script"
        ) from None
    try:
        return fn(body)
    except HttpError:
        raise
    except Exception as err:  # any parser failure is the client's malformed body
        raise BadRequest(f"cannot decode the {ctype} body: {_short(err)}") from None


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(body)


def _json_to_numpy(body: Any):
    import numpy as np
    import orjson

    data = orjson.loads(body)
    array = np.asarray(data)
    if array.dtype == object or array.dtype.kind in "USV":
        raise BadRequest("the JSON body must be a number or a (nested, rectangular) list of numbers")
    return array


def _csv_to_numpy(body: Any):
    import numpy as np

    text = body if isinstance(body, str) else bytes(body).decode("utf-8")
    if not text.strip():
        raise BadRequest("the CSV body is empty")
    return np.genfromtxt(io.StringIO(text), delimiter=",")


def _npy_to_numpy(body: Any):
    import numpy as np

    return np.load(io.BytesIO(_as_bytes(body)), allow_pickle=False)


def _npz_to_numpy(body: Any):
    import numpy as np

    with np.load(io.BytesIO(_as_bytes(body)), allow_pickle=False) as npz:
        keys = set(npz.files)
        if {"format", "shape", "data"} <= keys:  # scipy.sparse.save_npz
            return _densify(npz)
        if len(keys) != 1:
            raise BadRequest(f"the .npz body must hold exactly one array, not {len(keys)}")
        return npz[next(iter(keys))]


def _densify(npz):
    import numpy as np

    fmt = npz["format"].item()
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    shape = tuple(int(x) for x in npz["shape"])
    data = npz["data"]
    if len(shape) != 2 or any(s < 0 for s in shape) or shape[0] * shape[1] > 50_000_000:
        raise BadRequest(f"unsupported sparse matrix shape {shape}")
    dense = np.zeros(shape, dtype=data.dtype)
    if fmt == "coo":
        np.add.at(dense, (npz["row"], npz["col"]), data)
    elif fmt in ("csr", "csc"):
        indptr, indices = npz["indptr"], npz["indices"]
        major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        if fmt == "csr":
            np.add.at(dense, (major, indices), data)
        else:
            np.add.at(dense, (indices, major), data)
    else:
        raise BadRequest(f"unsupported sparse format {fmt!r} (csr, csc or coo)")
    return dense


_DECODERS = {JSON: _json_to_numpy, CSV: _csv_to_numpy, NPY: _npy_to_numpy, NPZ: _npz_to_numpy}


# ---------------------------------------------------------------- encoding


def encode(prediction: Any, content_type: str) -> bytes:
    """Encode an array-like as JSON, CSV or NPY (the toolkit's ``encoder.encode``), always bytes."""
    try:
        fn = _ENCODERS[content_type]
    except KeyError:
        raise NotAcceptable(f"cannot encode the response as {content_type!r}") from None
    return fn(prediction)


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _to_json(prediction: Any) -> bytes:
    import orjson

    if hasattr(prediction, "tolist"):
        prediction = prediction.tolist()
    return orjson.dumps(prediction, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def _to_csv(prediction: Any) -> bytes:
    import numpy as np

    stream = io.StringIO()
    if np.ndim(prediction) == 0:  # a scalar is one value on one line (savetxt refuses 0-d arrays)
        prediction = np.atleast_1d(prediction)
    np.savetxt(stream, prediction, delimiter=",", fmt="%s")
    return stream.getvalue().encode("utf-8")


def _to_npy(prediction: Any) -> bytes:
    import numpy as np

    stream = io.BytesIO()
    np.save(stream, prediction, allow_pickle=False)
    return stream.getvalue()


_ENCODERS = {JSON: _to_json, CSV: _to_csv, NPY: _to_npy}
