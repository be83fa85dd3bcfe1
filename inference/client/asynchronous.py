"""`aiops invoke --async`: one asynchronous inference request to a deployed endpoint.

What the SageMaker SDK's ``AsyncPredictor`` does, with the stack's bucket layout:

1. the endpoint's configuration must have an ``AsyncInferenceConfig`` (checked first: a
   synchronous endpoint refuses with one line, exit 2, and nothing is uploaded);
2. the request body goes to ``s3://<stack bucket>/async-inference/input/<sha256>`` through the
   core's uploader (``aiops.s3objects.upload_once``, SSE-KMS with the stack key; the same input is
   uploaded once), the key built by ``aiops.stack.S3Layout``;
3. boto3 ``sagemaker-runtime`` ``invoke_endpoint_async(EndpointName, InputLocation, ContentType,
   Accept)`` queues it and answers the ``OutputLocation`` and ``FailureLocation`` where the
   service will write the result (or the error);
4. :func:`wait_for_result` polls both until one appears or the timeout has passed. The clock and
   the sleep are parameters, so tests drive the wait without sleeping.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiops.errors import AiopsError, UsageError

NOT_THERE = ("404", "NoSuchKey", "NotFound")
POLL_FIRST_S = 0.5  # first wait; then x1.5 up to POLL_MAX_S (a cold start from 0 takes minutes)
POLL_MAX_S = 10.0


@dataclass
class AsyncAnswer:
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str | None
    content_type: str | None
    body: bytes
    latency_ms: float  # from the upload to the result being there
    polls: int


def _split(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise AiopsError(f"the endpoint answered a location that is not an S3 URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def async_config(sagemaker: Any, endpoint: str) -> dict[str, Any]:
    """The endpoint's ``AsyncInferenceConfig``; UsageError (exit 2) when it has none."""
    from aiops import aws

    with aws.translate_errors(f"describing endpoint {endpoint}"):
        config_name = sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
        config = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    found = config.get("AsyncInferenceConfig") or {}
    if not found.get("OutputConfig"):
        raise UsageError(
            f"endpoint {endpoint} is not asynchronous (its configuration {config_name} has no "
            "AsyncInferenceConfig): invoke it without --async, or deploy it with "
            "aiops:endpoint.asyncInference.enabled: true"
        )
    return found


def _read(s3: Any, uri: str, sink: Any = None) -> tuple[bytes, str | None] | None:
    """The object's body (into ``sink``, whose held bytes are returned; without one, only its start,
    as an error's) and Content-Type, or None while it is not there (any other error: raised)."""
    from aiops.inference.client.synchronous import copy_body, read_error_body

    from aiops.aws import error_code

    bucket, key = _split(uri)
    try:
        answer = s3.get_object(Bucket=bucket, Key=key)
    except Exception as err:
        if error_code(err) in NOT_THERE:
            return None
        raise
    stream = answer["Body"]
    try:
        if sink is None:
            return read_error_body(stream.read), answer.get("ContentType")
        copy_body(stream.read, sink)
    finally:
        stream.close()
    return sink.body, answer.get("ContentType")


def wait_for_result(
    s3: Any,
    output_location: str,
    failure_location: str | None,
    *,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    first: float = POLL_FIRST_S,
    longest: float = POLL_MAX_S,
    sink: Any = None,
) -> tuple[bytes, str | None, int]:
    """Poll the output (and failure) location until one holds an object: (body, content type, polls).
    The result is read into ``sink`` (default: memory, capped; see ``aiops.inference.client.synchronous``).

    A failure object raises AiopsError with its message; ``timeout`` seconds (by ``clock``) without
    either raises AiopsError naming the output location, where the result may still land later.
    """
    from aiops.inference.client.synchronous import MemoryBody

    from aiops import aws

    sink = MemoryBody() if sink is None else sink
    deadline = clock() + timeout
    wait, polls = first, 0
    while True:
        polls += 1
        with aws.translate_errors(f"reading the async result {output_location}"):
            found = _read(s3, output_location, sink)
            failed = _read(s3, failure_location) if found is None and failure_location else None
        if found is not None:
            return found[0], found[1], polls
        if failed is not None:
            message = " ".join(failed[0][:500].decode("utf-8", "replace").split()) or "(empty failure object)"
            raise AiopsError(
                f"the asynchronous request failed: {message} (failure object {failure_location})"
            )
        left = deadline - clock()
        if left <= 0:
            raise AiopsError(
                f"no result after {timeout:g} s at {output_location} (an endpoint scaled "
                "to 0 starts an instance first, which takes minutes): wait longer with "
                f"--timeout, or read it later with 'aws s3 cp {output_location} -'"
            )
        sleep(min(wait, left))
        wait = min(wait * 1.5, longest)


def invoke_endpoint_async(
    name: str,
    body: bytes,
    *,
    content_type: str,
    accept: str | None = None,
    custom_attributes: str | None = None,
    bucket: str,
    kms_key_arn: str | None,
    region: str | None = None,
    timeout: float = 600.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    sink: Any = None,
) -> AsyncAnswer:
    """Check the endpoint is asynchronous, upload the input, InvokeEndpointAsync, wait for the result."""
    from aiops import aws
    from aiops.s3objects import upload_once
    from aiops.stack import LAYOUT

    async_config(aws.client("sagemaker", region), name)  # before anything is uploaded
    s3 = aws.client("s3", region)
    key = LAYOUT.async_input_key(hashlib.sha256(body).hexdigest())
    start = clock()
    with aws.translate_errors(f"uploading the request for endpoint {name}"):
        input_location = upload_once(s3, bucket, key, body, kms_key=kms_key_arn).uri
    kwargs = {"EndpointName": name, "InputLocation": input_location, "ContentType": content_type}
    if accept:
        kwargs["Accept"] = accept
    if custom_attributes:
        kwargs["CustomAttributes"] = custom_attributes
    with aws.translate_errors(f"invoking endpoint {name} asynchronously"):
        queued = aws.client("sagemaker-runtime", region).invoke_endpoint_async(**kwargs)
    output, failure = queued["OutputLocation"], queued.get("FailureLocation")
    data, ctype, polls = wait_for_result(
        s3, output, failure, timeout=timeout, sleep=sleep, clock=clock, sink=sink
    )
    return AsyncAnswer(
        queued.get("InferenceId", ""),
        input_location,
        output,
        failure,
        ctype,
        data,
        (clock() - start) * 1000,
        polls,
    )
