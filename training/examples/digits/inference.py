"""Serving handlers for the digits CNN, in the SageMaker PyTorch inference contract.

The SageMaker PyTorch serving container (and aiops' own server) call `model_fn` once, then
`input_fn` -> `predict_fn` -> `output_fn` per request. Requests carry rows of 64 pixel values
scaled to [0, 1], as `aiops example digits-data` writes them:

- application/json: `{"instances": [[64 floats], ...]}` or a bare list of rows (one row alone works too);
- text/csv: one row of 64 comma-separated values per line.

The answer is JSON: `{"predictions": [{"label": 3, "probabilities": [10 floats]}, ...]}`.

A request the model cannot take raises an error that carries its HTTP status (415 for a content
type, 406 for an Accept, 400 for a shape), so the client reads the reason instead of a bare 500:
`sagemaker_inference.errors.GenericInferenceToolkitError` in the stock container, aiops' own
`InferenceError` (same signature) under `aiops serve`, a plain fallback class otherwise.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings

import torch

NUM_PIXELS = 64

try:  # the SageMaker inference toolkit's own class, in the stock PyTorch serving container
    from sagemaker_inference.errors import GenericInferenceToolkitError as RequestError
except ImportError:
    try:  # aiops serve
        from aiops.inference.errors import InferenceError as RequestError
    except ImportError:

        class RequestError(Exception):  # type: ignore[no-redef]  # any server reading `status_code`
            def __init__(self, status_code: int, message: str = "") -> None:
                super().__init__(message)
                self.status_code = status_code
                self.message = message


def model_fn(model_dir: str, context=None) -> torch.jit.ScriptModule:
    """Load the TorchScript model that train.py saves (no model class needed)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with warnings.catch_warnings():
        # recent torch flags TorchScript as deprecated, but it is what the SageMaker PyTorch serving
        # container loads by default, so the example ships it
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location=device)
    return model.eval()


def input_fn(request_body: str | bytes, request_content_type: str) -> torch.Tensor:
    if isinstance(request_body, (bytes, bytearray)):
        request_body = request_body.decode("utf-8")
    content_type = (request_content_type or "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "text/csv"):
        raise RequestError(
            415, f"unsupported content type {request_content_type!r}; send application/json or text/csv"
        )
    try:
        if content_type == "application/json":
            data = json.loads(request_body)
            rows = data["instances"] if isinstance(data, dict) and "instances" in data else data
        else:
            rows = [[float(v) for v in row] for row in csv.reader(io.StringIO(request_body)) if row]
        x = torch.tensor(rows, dtype=torch.float32)
    except (TypeError, ValueError, KeyError) as err:
        raise RequestError(
            400, f"could not read the request as rows of {NUM_PIXELS} numbers: {err}"
        ) from None
    if x.ndim == 1:
        x = x.unsqueeze(0)  # a single row
    if x.ndim != 2 or x.shape[1] != NUM_PIXELS:
        raise RequestError(400, f"expected rows of {NUM_PIXELS} pixel values, got shape {list(x.shape)}")
    return x


def predict_fn(input_data: torch.Tensor, model: torch.jit.ScriptModule) -> torch.Tensor:
    """Class probabilities, [N, 10]."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.softmax(model(input_data.to(device)), dim=1).cpu()


def output_fn(prediction: torch.Tensor, accept: str = "application/json"):
    """JSON (the default), or text/csv: one line per row, the label then the 10 probabilities."""
    wanted = [part.split(";")[0].strip().lower() for part in (accept or "*/*").split(",")]
    if any(w in ("application/json", "*/*", "application/*") for w in wanted):
        return json.dumps(
            {
                "predictions": [
                    {"label": int(p.argmax()), "probabilities": [round(v, 6) for v in p.tolist()]}
                    for p in prediction
                ]
            }
        ), "application/json"
    if "text/csv" in wanted or "text/*" in wanted:
        return "".join(
            f"{int(p.argmax())}," + ",".join(f"{v:.6f}" for v in p.tolist()) + "\n" for p in prediction
        ), "text/csv"
    raise RequestError(
        406, f"unsupported accept type {accept!r}; this model answers application/json or text/csv"
    )
