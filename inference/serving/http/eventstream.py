"""AWS event-stream frames, as SageMaker Runtime's InvokeEndpointWithResponseStream answers.

The operation's output ``Body`` is the botocore shape ``ResponseStream`` (service model
``sagemaker-runtime`` 2017-05-13, protocol rest-json): a union of

- ``PayloadPart`` (an event): ``Bytes`` is the event payload, raw bytes;
- ``ModelStreamError`` (an exception): JSON ``{"Message": ..., "ErrorCode": ...}``, ErrorCode
  ``StreamBroken`` (the model's stream broke before it completed) or ``ModelInvocationTimeExceeded``;
- ``InternalStreamFailure`` (an exception): JSON ``{"Message": ...}``.

One frame (the ``application/vnd.amazon.eventstream`` wire format that botocore's
``botocore.eventstream.EventStreamBuffer`` parses)::

    total length   uint32 big-endian (the whole frame, both CRCs included)
    headers length uint32 big-endian
    prelude CRC    CRC32 of the 8 bytes above
    headers        per header: name length (1 byte), name, value type (1 byte, 7 = string),
                   value length (uint16), value
    payload
    message CRC    CRC32 of everything before it

Headers per frame: ``:message-type`` (``event`` or ``exception``), ``:event-type`` (events) or
``:exception-type`` (exceptions), and ``:content-type`` (``application/octet-stream`` for a
payload part, ``application/json`` for an exception). The HTTP response that carries the frames
is ``200`` with ``Content-Type: application/vnd.amazon.eventstream``; the model's own content
type travels in ``X-Amzn-SageMaker-Content-Type`` (see :func:`response_headers`).

Standard library only; nothing here knows about HTTP servers.
"""

from __future__ import annotations

import json
import struct
import zlib

CONTENT_TYPE = "application/vnd.amazon.eventstream"
PAYLOAD_PART = "PayloadPart"
MODEL_STREAM_ERROR = "ModelStreamError"
INTERNAL_STREAM_FAILURE = "InternalStreamFailure"
STREAM_BROKEN = "StreamBroken"
INVOCATION_TIMEOUT = "ModelInvocationTimeExceeded"

# botocore refuses a frame whose payload is longer than 24 MiB or whose headers exceed 128 KiB;
# a larger chunk is split into several PayloadParts (the parts concatenate to the same bytes).
MAX_PAYLOAD = 24 * 1024 * 1024
_MAX_HEADERS = 128 * 1024
_STRING = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
    if len(raw_name) > 255 or len(raw_value) > 0xFFFF:
        raise ValueError(f"event-stream header {name!r} is too long")
    return (
        bytes((len(raw_name),)) + raw_name + bytes((_STRING,)) + struct.pack(">H", len(raw_value)) + raw_value
    )


def encode_message(headers: dict[str, str], payload: bytes = b"") -> bytes:
    """One event-stream frame with string ``headers`` (in the given order) and ``payload``."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    if len(raw_headers) > _MAX_HEADERS:
        raise ValueError("event-stream headers longer than 128 KiB")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"event-stream payload of {len(payload)} bytes is over the {MAX_PAYLOAD} byte limit")
    total = _PRELUDE.size + _CRC.size + len(raw_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(raw_headers))
    head = prelude + _CRC.pack(zlib.crc32(prelude)) + raw_headers
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + payload + _CRC.pack(crc)


_PART_HEADERS = {
    ":event-type": PAYLOAD_PART,
    ":content-type": "application/octet-stream",
    ":message-type": "event",
}


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event (several frames if ``data`` is over the 24 MiB frame limit)."""
    data = bytes(data)
    if len(data) <= MAX_PAYLOAD:
        return encode_message(_PART_HEADERS, data)
    return b"".join(
        encode_message(_PART_HEADERS, data[i : i + MAX_PAYLOAD]) for i in range(0, len(data), MAX_PAYLOAD)
    )


def _exception(exception_type: str, body: dict[str, str]) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps(body, separators=(",", ":")).encode("utf-8"))


def model_stream_error(message: str, error_code: str = STREAM_BROKEN) -> bytes:
    """The ``ModelStreamError`` exception event: the model's stream failed after it started."""
    return _exception(MODEL_STREAM_ERROR, {"Message": message, "ErrorCode": error_code})


def internal_stream_failure(message: str) -> bytes:
    """The ``InternalStreamFailure`` exception event: the server itself failed mid-stream."""
    return _exception(INTERNAL_STREAM_FAILURE, {"Message": message})


def response_headers(
    content_type: str | None, *, variant: str | None = None, custom_attributes: str | None = None
) -> list[tuple[bytes, bytes]]:
    """HTTP response headers (ASGI form) for an InvokeEndpointWithResponseStream answer."""
    headers = [(b"content-type", CONTENT_TYPE.encode())]
    if content_type:
        headers.append((b"x-amzn-sagemaker-content-type", content_type.encode("latin-1")))
    if variant:
        headers.append((b"x-amzn-invoked-production-variant", variant.encode("latin-1")))
    if custom_attributes is not None:
        headers.append((b"x-amzn-sagemaker-custom-attributes", custom_attributes.encode("latin-1")))
    return headers
