"""Request decoding and response encoding, as the SageMaker inference toolkit's defaults.

Behaviour follows ``sagemaker_inference.decoder`` / ``encoder`` and the default PyTorch handler
(sagemaker-pytorch-inference 2.0.x), with deliberate differences, all for safety:

- every failure is a typed :class:`HttpError` (400/406/413/415) naming the problem, never a 500:
  an empty, ragged, non-numeric or null-holding body is refused before it reaches the model, and
  CSV fields that are not numbers are refused (the toolkit's ``np.genfromtxt`` turned them into NaN);
- ``.npy``/``.npz`` bodies are loaded with ``allow_pickle=False``, and their decoded size is checked
  from the zip directory and each ``.npy`` header *before* anything is allocated (``LIMITS``);
- an ``.npz`` body holding one scipy sparse matrix is densified without scipy (size-checked too);
- Accept is parsed with werkzeug (q-values and specificity, RFC 9110), where the toolkit split on
  commas and compared strings; among equally acceptable types the client's first listed wins, as
  in the toolkit.

numpy, orjson and werkzeug are imported lazily (inside functions), so importing this module is free.
"""

from __future__ import annotations

import io
import threading
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aiops.inference.errors import (  # noqa: F401 - re-exported: handler scripts import them from here
    BadRequest,
    HttpError,
    InferenceError,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
OCTET_STREAM = "application/octet-stream"
ANY = "*/*"
UTF8_TYPES = (JSON, CSV)
DECODABLE = (JSON, CSV, NPY, NPZ)
ENCODABLE = (JSON, CSV, NPY)


@dataclass
class Limits:
    """Bounds of the default decoders (set per worker from the serve settings)."""

    max_decoded_bytes: int = 100 * 1024 * 1024  # an .npy/.npz/sparse body's arrays, once decoded
    json_max_depth: int = 32  # dimensions of a JSON array
    json_max_elements: int = 4_000_000  # numbers in a JSON or CSV body


LIMITS = Limits()


def configure(
    *,
    max_decoded_bytes: int | None = None,
    json_max_depth: int | None = None,
    json_max_elements: int | None = None,
) -> None:
    if max_decoded_bytes is not None:
        LIMITS.max_decoded_bytes = int(max_decoded_bytes)
    if json_max_depth is not None:
        LIMITS.json_max_depth = int(json_max_depth)
    if json_max_elements is not None:
        LIMITS.json_max_elements = int(json_max_elements)


def media_type(header: str | None) -> str | None:
    """``'Application/JSON; charset=utf-8'`` -> ``'application/json'``; empty -> None."""
    if not header:
        return None
    value = header.split(";", 1)[0].strip().lower()
    return value or None


@lru_cache(maxsize=256)  # clients send a handful of distinct Accept values; parse each once
def _negotiate(accept: str, default_accept: str, supported: tuple[str, ...]) -> str | None:
    from werkzeug.datastructures import MIMEAccept
    from werkzeug.http import parse_accept_header

    parsed = parse_accept_header(accept, MIMEAccept)
    if not parsed:  # nothing usable (e.g. ",,"): as if no Accept was sent
        return default_accept if default_accept in supported else None
    # werkzeug keeps the entries most specific first, then by quality, the client's order among
    # equals; a type's entry is the first that matches it (RFC 9110). The highest quality wins, then
    # the earlier entry: of "text/csv, application/json" the client's first listed type, as the
    # toolkit answers. One entry matching several types (a wildcard) picks the default first.
    ordered = (
        (default_accept, *[s for s in supported if s != default_accept])
        if default_accept in supported
        else supported
    )
    best, best_key = None, None
    for media in ordered:
        position = parsed.find(media)
        if position < 0 or parsed[position][1] <= 0:
            continue
        key = (parsed[position][1], -position)
        if best_key is None or key > best_key:
            best, best_key = media, key
    return best


def choose_accept(accept: str | None, default_accept: str, supported=ENCODABLE) -> str:
    """The best acceptable type we can encode (q-values honoured), or :class:`NotAcceptable` (406).

    No Accept (or ``*/*``) means ``default_accept``.
    """
    if not accept or not accept.strip():
        return default_accept
    found = _negotiate(accept.strip()[:1000], default_accept, tuple(supported))
    if found is None:
        raise NotAcceptable(
            f"cannot encode the response as {accept[:200]!r}; supported: {', '.join(supported)}"
        )
    return found


def first_media_type(accept: str | None, default_accept: str) -> str:
    """The client's preferred concrete type (for a custom output_fn that returns a body only)."""
    if not accept or not accept.strip():
        return default_accept
    from werkzeug.datastructures import MIMEAccept
    from werkzeug.http import parse_accept_header

    for value, _q in parse_accept_header(accept, MIMEAccept):
        if value != ANY:
            return value
    return default_accept


# ---------------------------------------------------------------- decoding


def decode(body: Any, content_type: str | None, float_dtype: Any = None) -> Any:
    """Decode a request body into a numpy array (the toolkit's ``decoder.decode``).

    ``body`` is ``str`` for the UTF-8 types (the toolkit decodes them before ``input_fn``) or bytes.
    ``float_dtype`` (e.g. ``numpy.float32``): a JSON body holding non-integers becomes that dtype
    straight from the parsed values (no float64 array in between); default float64.
    """
    ctype = media_type(content_type)
    if ctype is None:
        raise UnsupportedMediaType(
            f"the request has no Content-Type header; send one of {', '.join(DECODABLE)} "
            "or implement input_fn in your inference script"
        )
    try:
        fn = _DECODERS[ctype]
    except KeyError:
        raise UnsupportedMediaType(
            f"content type {ctype!r} is not supported; send one of {', '.join(DECODABLE)} "
            "or implement input_fn in your inference script"
        ) from None
    try:
        array = fn(body, float_dtype) if fn is _json_to_numpy else fn(body)
    except HttpError:
        raise
    except Exception as err:  # any parser failure is the client's malformed body
        raise BadRequest(f"cannot decode the {ctype} body: {_short(err)}") from None
    if array.size == 0:
        raise BadRequest(
            f"the {ctype} body holds an empty array (shape {list(array.shape)}); send at least one value"
        )
    return array


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(body)


# what a body of numbers only (nested lists of JSON numbers) is made of: no strings, true/false/null, objects
_NUMERIC_JSON = b"0123456789.,[]-+eE \t\n\r"
_NUMERIC_JSON_STR = str.maketrans("", "", _NUMERIC_JSON.decode())


_SIMD = threading.local()  # one simdjson parser per thread (a parser is not thread-safe)


def _simd_parser():
    """A pysimdjson parser, or None when pysimdjson is not installed (orjson alone then)."""
    parser = getattr(_SIMD, "parser", 0)
    if parser == 0:
        try:
            import simdjson

            parser = simdjson.Parser()
        except ImportError:
            parser = None
        _SIMD.parser = parser
    return parser


def _simd_floats(raw: bytes):
    """``raw``'s numbers as one flat float64 array straight from simdjson's parse (no Python float
    per value), or None: no simdjson, or not an array of numbers only (strings, booleans, nulls,
    objects, bad JSON or out-of-range numbers: the orjson path then decides, with its messages).
    A nested array comes back flattened: the caller knows the shape."""
    parsed = _simd_parse(raw, row_lengths=False)
    return None if parsed is None else parsed[0]


def _simd_parse(raw: bytes, *, row_lengths: bool):
    """simdjson's parse of ``raw`` as ``(flat float64 values, [len(row) for each row] or None)``, or
    None: no simdjson, or not numbers only (see ``_simd_floats``)."""
    parser = _simd_parser()
    if parser is None:
        return None
    import numpy as np

    try:
        doc = parser.parse(raw)
        try:
            # as_buffer copies the values out of the parser's document (reused by the next parse)
            flat = np.frombuffer(doc.as_buffer(of_type="d"), dtype=np.float64)
            lengths = [len(row) for row in doc] if row_lengths else None  # a number as a row: TypeError
        finally:
            del doc  # a parser refuses a new parse while a document of the last one is alive
    except (ValueError, TypeError, RuntimeError, AttributeError):
        return None
    return flat, lengths


def _simd_array(raw: bytes):
    """The usual bodies, a flat list of numbers or a rectangular list of such lists (some values
    not integers), as a float64 array straight from simdjson's parse (no Python float per value:
    a 4 MB body in a fraction of orjson + np.array's time, the same values), or None: anything
    else, which the orjson path decides with its messages (strings, booleans, nulls, deeper or
    irregular nesting, ragged rows, bad JSON)."""
    stripped = raw.strip()
    if stripped[:1] != b"[" or stripped[-1:] != b"]":
        return None
    # find (memchr) instead of count: a count of a 7 KB body costs ~5 µs
    second = stripped.find(b"[", 1)
    if second == -1:  # one flat list
        flat = _simd_floats(raw)
        return flat if flat is not None and flat.size else None
    if stripped[1:second].strip() or LIMITS.json_max_depth < 2:  # not "[[": a number before the first row
        return None
    parsed = _simd_parse(raw, row_lengths=True)
    if parsed is None:
        return None
    flat, lengths = parsed
    # simdjson flattens any nesting: equal rows adding up to the values read, and exactly one "["
    # per row (no strings, so every bracket is structure), make it a rectangle of numbers
    if stripped.count(b"[") != len(lengths) + 1:
        return None
    return _rectangle(flat, lengths, len(lengths))


def _rectangle(flat, lengths: list[int], rows: int):
    """``flat`` as (rows, width) when there are ``rows`` rows, all ``width`` long, adding up to
    ``flat``'s values; else None."""
    width = lengths[0] if lengths else 0
    if not width or len(lengths) != rows or any(n != width for n in lengths) or flat.size != width * rows:
        return None
    return flat.reshape(rows, width)


def _has_float_text(raw: bytes) -> bool:
    return b"." in raw or b"e" in raw or b"E" in raw


def decode_rows(bodies: list[bytes], float_dtype: Any):
    """Several flat JSON bodies (each exactly one ``[...]`` of numbers, some not integers) as one
    (rows, columns) array of ``float_dtype`` from one simdjson parse, or None when that does not
    apply (no simdjson, a body not numbers only, rows of different lengths, no non-integer): the
    caller then takes the general path. Values equal ``decode`` of each body alone."""
    if any(b[:1] != b"[" or b.find(b"[", 1) != -1 for b in bodies):  # flat lists only (memchr)
        return None
    joined = b"[" + b",".join(bodies) + b"]"
    if not _has_float_text(joined):  # all integers: decode gives int64 first, keep that path
        return None
    parsed = _simd_parse(joined, row_lengths=True)
    if parsed is None:
        return None
    flat, lengths = parsed
    # one "[" per body, so no row nests; the rows must be equally long and add up to what was read
    array = _rectangle(flat, lengths, len(bodies))
    return None if array is None else array.astype(float_dtype)


def _json_to_numpy(body: Any, float_dtype: Any = None):
    import numpy as np
    import orjson

    raw = body if isinstance(body, (bytes, str)) else bytes(body)
    if not raw.strip():
        raise BadRequest("the JSON body is empty")
    # each value takes 2+ characters, so only a long body can hold too many
    if (
        len(raw) > 2 * LIMITS.json_max_elements
        and (raw.count(",") if isinstance(raw, str) else raw.count(b",")) >= LIMITS.json_max_elements
    ):
        raise BadRequest(f"the JSON body holds more than {LIMITS.json_max_elements} values")
    if isinstance(raw, bytes) and _has_float_text(raw):
        array = _simd_array(raw)
        if array is not None:
            return array.astype(float_dtype or np.float64)
    try:
        data = orjson.loads(raw)  # C parser; its own nesting limit bounds the recursion
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"the body is not valid JSON: {_short(err)}") from None
    binary = not isinstance(raw, str)
    numbers_only = not (
        raw.translate(_NUMERIC_JSON_STR) if isinstance(raw, str) else raw.translate(None, _NUMERIC_JSON)
    )
    if numbers_only and (
        b"." in raw or b"e" in raw or b"E" in raw if binary else "." in raw or "e" in raw or "E" in raw
    ):
        # the fast path (a 4 MB body in about half the time): only numbers, some not integers, so
        # numpy's type discovery would give float64 anyway; ragged rows still raise below
        try:
            array = np.array(data, dtype=float_dtype or np.float64)
        except ValueError as err:
            if "inhomogeneous" in str(err) or "sequence" in str(err):
                raise BadRequest(
                    "the JSON array is ragged (rows of different lengths); send a rectangular array"
                ) from None
            raise
        if array.ndim > LIMITS.json_max_depth:
            raise BadRequest(f"the JSON array has {array.ndim} dimensions; at most {LIMITS.json_max_depth}")
        return array
    try:
        array = np.asarray(data)
    except ValueError as err:
        if "inhomogeneous" in str(err) or "sequence" in str(err):
            raise BadRequest(
                "the JSON array is ragged (rows of different lengths); send a rectangular array"
            ) from None
        raise
    if array.dtype == object or array.dtype.kind not in "iuf":
        what = "null values" if array.dtype == object and _has_none(data) else "non-numeric values"
        raise BadRequest(
            f"the JSON body holds {what}; send a number or a rectangular (nested) list of numbers"
        )
    # numpy turns [0.5, true] into [0.5, 1.0]; a numeric array whose text still holds a literal true/false
    # (strings were refused above) mixed booleans in
    if not numbers_only and (
        ("true" in raw or "false" in raw) if isinstance(raw, str) else (b"true" in raw or b"false" in raw)
    ):
        raise BadRequest(
            "the JSON body holds booleans; send a number or a rectangular (nested) list of numbers"
        )
    if array.ndim > LIMITS.json_max_depth:
        raise BadRequest(f"the JSON array has {array.ndim} dimensions; at most {LIMITS.json_max_depth}")
    return array


def _has_none(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if item is None:
            return True
        if isinstance(item, list):
            stack.extend(item)
    return False


def _csv_to_numpy(body: Any):
    import numpy as np

    text = body if isinstance(body, str) else bytes(body).decode("utf-8")
    if not text.strip():
        raise BadRequest("the CSV body is empty")
    if text.count(",") + text.count("\n") >= LIMITS.json_max_elements:
        raise BadRequest(f"the CSV body holds more than {LIMITS.json_max_elements} values")
    try:
        # numpy's C reader: every field must be a number (no silent NaN), rows must be equally long
        return np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, comments=None)
    except ValueError as err:
        message = str(err)
        if "number of columns changed" in message:
            message = message.split(";")[0] + " (every row needs the same number of fields)"
        elif "could not convert" in message:
            message = message.replace("float64", "a number").replace("at row", "at line")
        raise BadRequest(f"cannot read the CSV body: {' '.join(message.split())[:200]}") from None


def _check_npy_header(fp, name: str):
    """Read an .npy header from ``fp``; refuse pickles and arrays over the size limit."""
    import numpy as np
    from numpy.lib import format as npformat

    version = npformat.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npformat.read_array_header_1_0(fp, max_header_size=10000)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = npformat.read_array_header_2_0(fp, max_header_size=10000)
    else:
        raise BadRequest(f"{name}: unsupported .npy format version {version}")
    if dtype.hasobject:
        raise BadRequest(f"{name}: object arrays (pickles) are not accepted")
    count = 1
    for dim in shape:
        count *= int(dim)
    nbytes = count * dtype.itemsize
    if nbytes > LIMITS.max_decoded_bytes:
        raise PayloadTooLarge(
            f"{name}: the array {list(shape)} {dtype} would take {nbytes} bytes decoded; "
            f"at most {LIMITS.max_decoded_bytes}"
        )
    return shape, fortran, np.dtype(dtype), nbytes


def _read_npy(fp, name: str, available: int | None = None):
    import numpy as np

    shape, fortran, dtype, nbytes = _check_npy_header(fp, name)
    data = fp.read(nbytes)
    if len(data) != nbytes:
        raise BadRequest(f"{name}: truncated (header says {nbytes} bytes of data, got {len(data)})")
    array = np.frombuffer(data, dtype=dtype)
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def _npy_to_numpy(body: Any):
    return _read_npy(io.BytesIO(_as_bytes(body)), "the .npy body")


def _npz_to_numpy(body: Any):
    try:
        archive = zipfile.ZipFile(io.BytesIO(_as_bytes(body)))
    except zipfile.BadZipFile as err:
        raise BadRequest(f"the .npz body is not a zip archive: {_short(err)}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > 64:
            raise BadRequest(f"the .npz body holds {len(infos)} members; at most 64")
        declared = sum(i.file_size for i in infos)  # from the central directory, before inflating
        if declared > LIMITS.max_decoded_bytes + 64 * 1024:
            raise PayloadTooLarge(
                f"the .npz body would inflate to {declared} bytes; at most {LIMITS.max_decoded_bytes}"
            )
        arrays = {}
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with archive.open(info) as member:  # reads at most file_size bytes, CRC-checked
                arrays[key] = _read_npy(member, f"the .npz member {info.filename!r}")
    keys = set(arrays)
    if {"format", "shape", "data"} <= keys:  # scipy.sparse.save_npz
        return _densify(arrays)
    if len(keys) != 1:
        raise BadRequest(f"the .npz body must hold exactly one array, not {len(keys)}")
    return arrays[next(iter(keys))]


def _densify(npz):
    import numpy as np

    fmt = npz["format"].item()
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    shape = tuple(int(x) for x in npz["shape"])
    data = npz["data"]
    if len(shape) != 2 or any(s < 0 for s in shape):
        raise BadRequest(f"unsupported sparse matrix shape {shape}")
    if shape[0] * shape[1] * data.dtype.itemsize > LIMITS.max_decoded_bytes:
        raise PayloadTooLarge(
            f"the sparse matrix {list(shape)} would take more than {LIMITS.max_decoded_bytes} bytes dense"
        )
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
    import numpy as np
    import orjson

    if isinstance(prediction, np.ndarray) and prediction.dtype.kind in "biuf" and prediction.ndim:
        # orjson serialises a native-endian C-contiguous float/int array straight from its buffer
        if prediction.dtype.kind == "f" and prediction.dtype.itemsize == 2:
            prediction = prediction.astype(np.float32)
        try:
            return orjson.dumps(np.ascontiguousarray(prediction), option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:
            pass  # e.g. big-endian: the generic path below
    if hasattr(prediction, "tolist"):
        prediction = prediction.tolist()
    return orjson.dumps(prediction, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def json_rows(rows: Any) -> list[bytes] | None:
    """Each row of a 2-D numpy array as the JSON ``_to_json`` gives for that row alone, from one
    orjson call; None when that does not apply (not 2-D, no columns, a dtype orjson does not write
    straight from the buffer): the caller encodes row by row."""
    import numpy as np
    import orjson

    if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.shape[1] == 0 or len(rows) < 1:
        return None
    if rows.dtype.kind not in "iuf" or (rows.dtype.kind == "f" and rows.dtype.itemsize == 2):
        return None
    try:
        whole = orjson.dumps(np.ascontiguousarray(rows), option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return None
    # numbers hold no brackets, so "],[" is exactly the boundary between two rows
    parts = whole[2:-2].split(b"],[")
    if len(parts) != len(rows):
        return None
    return [b"[" + part + b"]" for part in parts]


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
