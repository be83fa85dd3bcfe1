"""The `aiops invoke` side: requests to a local server (`aiops serve`) or a deployed endpoint.

:mod:`.invoke` picks the way for a target; :mod:`.synchronous` sends one request and reads the whole
answer (stdlib HTTP, or boto3 ``invoke_endpoint``); :mod:`.stream` reads a streamed answer chunk by
chunk (chunked HTTP, or ``invoke_endpoint_with_response_stream``); :mod:`.asynchronous` is
SageMaker asynchronous inference (the body through S3, the result polled). Nothing here imports the
server or torch.
"""
