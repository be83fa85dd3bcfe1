"""`aiops invoke`: one request to where the user points, as one call for the CLI.

The target is a local server (``--url``, else the serve settings' address), a deployed endpoint
by name (boto3 ``sagemaker-runtime``, in the region of the stack that made it), that endpoint's
inference component, or its asynchronous queue (``--async``: the body goes to the stack's
bucket). What the stack knows (its endpoint, bucket, key, inference component) comes from the
typed stack outputs in the core (``aiops.stack``), never from infra code.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiops.errors import AiopsError, UsageError


@dataclass(frozen=True)
class Target:
    url: str | None = None
    endpoint: str | None = None
    inference_component: str | None = None
    asynchronous: bool = False
    timeout: float = 600.0  # --async: how long to wait for the result

    def check(self, *, stream: bool = False) -> None:
        """The option combinations that cannot work, refused before anything is sent."""
        if self.url and self.endpoint:
            raise UsageError("give --url or --endpoint, not both")
        if (self.asynchronous or self.inference_component) and not self.endpoint:
            flag = "--async" if self.asynchronous else "--inference-component"
            raise UsageError(
                f"{flag} needs --endpoint NAME (a deployed endpoint); a local server answers "
                "/invocations directly"
            )
        if self.asynchronous and stream:
            raise UsageError(
                "give --async or --stream, not both (an asynchronous result is read from S3 whole)"
            )


@dataclass(frozen=True)
class Answer:
    body: bytes  # b"" when the body went to a file
    content_type: str | None
    summary: str  # how it went, for stderr: status and latency, or the async result's location
    size: int = 0  # bytes of the body


def send(
    target: Target,
    body: bytes,
    *,
    content_type: str,
    accept: str | None = None,
    api_key: str | None = None,
    sink=None,
) -> Answer:
    """Send ``body`` to ``target`` and return the answer; a non-2xx answer is an AiopsError.
    The answer's body is read into ``sink`` (``synchronous.MemoryBody`` or ``synchronous.FileBody``; default:
    memory, capped at ``synchronous.DEFAULT_MAX_RESPONSE_MB``)."""
    from aiops.inference.client import synchronous as client

    from aiops.settings import get_settings

    target.check()
    sink = client.MemoryBody() if sink is None else sink
    settings = get_settings()
    if not target.endpoint:
        result = client.invoke_url(
            target.url or settings.serve.url,
            body,
            content_type=content_type,
            accept=accept,
            api_key=api_key,
            sink=sink,
        )
        return _synchronous(result)

    from aiops.stack import current_outputs, endpoint_region

    outputs = current_outputs(settings)
    region = endpoint_region(settings, outputs)
    if target.asynchronous:
        from aiops.inference.client import asynchronous as async_client

        bucket = outputs.required(
            "bucket", needed_for="aiops invoke --async (the request is uploaded to its bucket)"
        )
        answer = async_client.invoke_endpoint_async(
            target.endpoint,
            body,
            content_type=content_type,
            accept=accept,
            bucket=bucket,
            kms_key_arn=outputs.kms_key_arn,
            region=region,
            timeout=target.timeout,
            sink=sink,
        )
        polls = f"{answer.polls} poll{'s' if answer.polls != 1 else ''}"
        return Answer(
            answer.body,
            answer.content_type,
            f"async {answer.inference_id}: {answer.output_location} in {answer.latency_ms:.0f} ms ({polls})",
            sink.size,
        )
    component = target.inference_component
    if component is None and target.endpoint == outputs.endpoint_name:
        component = outputs.inference_component_name  # the stack's endpoint routes to its component
    result = client.invoke_endpoint(
        target.endpoint,
        body,
        content_type=content_type,
        accept=accept,
        region=region,
        inference_component=component,
        sink=sink,
    )
    return _synchronous(result)


def _synchronous(result) -> Answer:
    from aiops.inference.client import synchronous as client

    if not result.ok:
        raise AiopsError(client.error_message(result))
    return Answer(
        result.body,
        result.content_type,
        f"HTTP {result.status} {result.content_type} in {result.latency_ms:.2f} ms",
        result.size,
    )
