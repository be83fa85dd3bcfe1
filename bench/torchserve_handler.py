"""TorchServe handler for the serving benchmark (bench/serve_bench.py packs it into mlp.mar).

The same work per request as the other servers: the JSON body (a list of 784 floats) is decoded to
a float32 tensor, the TorchScript MLP runs under no-grad on one thread, and the 10 outputs go back
as a JSON list. Written the lean way a tuned deployment would write it, so TorchServe is not
handicapped by its stock handlers:

- a module-level ``handle`` function (no BaseHandler machinery, no per-request profiling hooks);
- the frontend is started with ``decode_input_request=false`` (as the SageMaker container's
  config.properties does), so the body arrives as bytes and is decoded here with orjson +
  numpy, the same decoder aiops serve uses, instead of the backend's stdlib ``json.loads``;
- every request in a TorchServe batch (``batchSize`` > 1) is stacked into one forward pass and the
  output split back by rows, so the batched variant really batches.

With ``AIOPS_BENCH_TS_MODE=sagemaker`` it does what the SageMaker PyTorch container's stock handler
does instead (sagemaker-inference's ``Transformer.transform`` with the default
``input_fn``/``predict_fn``/``output_fn``): each request of a TorchServe batch separately, decoded
with ``json.loads`` + ``np.array`` + ``torch.FloatTensor``, one forward pass per request, ``json.dumps``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import orjson
import torch

_model = None
_SAGEMAKER = os.environ.get("AIOPS_BENCH_TS_MODE") == "sagemaker"


def _initialize(context) -> None:
    global _model
    torch.set_num_threads(1)
    model_dir = context.system_properties.get("model_dir")
    _model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu").eval()
    with torch.no_grad():  # warm the TorchScript profiling executor before the first request
        for batch in (1, 2, 32):
            _model(torch.zeros(batch, 784))


def _decode(request: dict) -> np.ndarray:
    value = request.get("body")
    if value is None:
        value = request.get("data")
    if isinstance(value, (bytes, bytearray)):
        value = orjson.loads(value)
    return np.asarray(value, dtype=np.float32)


def handle(data, context):
    if _model is None:
        _initialize(context)
    if data is None:  # the load-time call
        return None
    if _SAGEMAKER:
        return [_stock_sagemaker(request, i, context) for i, request in enumerate(data)]
    rows = [_decode(request) for request in data]
    x = torch.from_numpy(np.stack(rows))
    with torch.no_grad():
        y = _model(x).numpy()
    out = []
    for i in range(len(rows)):
        context.set_response_content_type(i, "application/json")
        out.append(orjson.dumps(y[i], option=orjson.OPT_SERIALIZE_NUMPY))
    return out


def _stock_sagemaker(request: dict, i: int, context) -> bytes:
    body = request.get("body")
    if body is None:
        body = request.get("data")
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    tensor = torch.FloatTensor(np.array(json.loads(body), dtype=np.float32))
    with torch.no_grad():
        prediction = _model(tensor.unsqueeze(0) if tensor.dim() == 1 else tensor)
    context.set_response_content_type(i, "application/json")
    return json.dumps(prediction.cpu().numpy().tolist()[0]).encode()
