"""aiops.inference.serving.http.eventstream against botocore's own event-stream parser and service model."""

from __future__ import annotations

import json
import zlib

import pytest

botocore = pytest.importorskip("botocore")

from aiops.inference.serving.http import eventstream as es  # noqa: E402
from botocore.eventstream import ChecksumMismatch, EventStream, EventStreamBuffer  # noqa: E402
from botocore.exceptions import EventStreamError  # noqa: E402


def decode(data: bytes) -> list:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


def test_payload_part_frame_decodes_with_botocore():
    payload = bytes(range(256)) * 3
    (message,) = decode(es.payload_part(payload))
    assert message.payload == payload
    assert message.headers == {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
    assert message.to_response_dict()["status_code"] == 200
    frame = es.payload_part(payload)
    assert int.from_bytes(frame[:4], "big") == len(frame)
    assert int.from_bytes(frame[-4:], "big") == zlib.crc32(frame[:-4])


def test_a_frame_split_across_reads_and_many_frames_decode_in_order():
    parts = [b"a", b"", b"hello world", "é".encode() * 100]
    data = b"".join(es.payload_part(p) for p in parts)
    buffer = EventStreamBuffer()
    got = []
    for i in range(0, len(data), 7):  # the network hands botocore arbitrary slices
        buffer.add_data(data[i : i + 7])
        got.extend(m.payload for m in buffer)
    assert got == parts


def test_corrupted_frame_is_refused_by_botocore():
    frame = bytearray(es.payload_part(b"hello"))
    frame[-6] ^= 0xFF  # flip a payload byte: the message CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        decode(bytes(frame))


def test_exception_frames_carry_the_modelled_fields():
    (err,) = decode(es.model_stream_error("it broke"))
    assert err.headers == {
        ":exception-type": "ModelStreamError",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert json.loads(err.payload) == {"Message": "it broke", "ErrorCode": "StreamBroken"}
    assert err.to_response_dict()["status_code"] == 400
    (failure,) = decode(es.internal_stream_failure("oops"))
    assert failure.headers[":exception-type"] == "InternalStreamFailure"
    assert json.loads(failure.payload) == {"Message": "oops"}


def test_exception_types_are_the_service_models_error_events():
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    stream = model.shape_for("ResponseStream")
    assert stream.serialization.get("eventstream")
    assert stream.members[es.PAYLOAD_PART].serialization.get("event")
    assert stream.members[es.PAYLOAD_PART].members["Bytes"].serialization.get("eventpayload")
    for name in (es.MODEL_STREAM_ERROR, es.INTERNAL_STREAM_FAILURE):
        assert stream.members[name].metadata.get("exception")
    assert set(stream.members[es.MODEL_STREAM_ERROR].members) == {"Message", "ErrorCode"}
    op = model.operation_model("InvokeEndpointWithResponseStream")
    assert op.http["requestUri"] == "/endpoints/{EndpointName}/invocations-response-stream"
    header_names = {m.serialization.get("name", "").lower() for m in op.output_shape.members.values()}
    produced = {
        k.decode() for k, _ in es.response_headers("text/plain", variant="AllTraffic", custom_attributes="x")
    }
    assert produced - {"content-type"} <= header_names


class _Raw:
    def __init__(self, data: bytes, step: int = 5) -> None:
        self.data, self.step = data, step

    def stream(self):
        for i in range(0, len(self.data), self.step):
            yield self.data[i : i + self.step]

    def close(self):
        pass


def _parse(data: bytes):
    """What boto3 does with the response body: botocore's EventStream with the operation's shape."""
    import botocore.session
    from botocore.parsers import create_parser

    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    op = model.operation_model("InvokeEndpointWithResponseStream")
    response = {
        "status_code": 200,
        "headers": {"content-type": es.CONTENT_TYPE},
        "body": _Raw(data),
        "context": {"operation_name": op.name},
    }
    body = create_parser("rest-json").parse(response, op.output_shape)["Body"]
    assert isinstance(body, EventStream)
    return body


def test_botocore_parses_payload_parts_and_raises_the_modelled_error():
    data = es.payload_part(b"one ") + es.payload_part(b"two") + es.model_stream_error("handler failed")
    events = iter(_parse(data))
    assert next(events) == {"PayloadPart": {"Bytes": b"one "}}
    assert next(events) == {"PayloadPart": {"Bytes": b"two"}}
    with pytest.raises(EventStreamError) as info:
        next(events)
    assert info.value.response["Error"] == {"Code": "ModelStreamError", "Message": "handler failed"}


def test_an_oversized_chunk_becomes_several_parts_with_the_same_bytes(monkeypatch):
    monkeypatch.setattr(es, "MAX_PAYLOAD", 10)
    data = bytes(range(35))
    messages = decode(es.payload_part(data))
    assert [len(m.payload) for m in messages] == [10, 10, 10, 5]
    assert b"".join(m.payload for m in messages) == data
    with pytest.raises(ValueError, match="over the 10 byte limit"):
        es.encode_message({":message-type": "event"}, b"x" * 11)
