"""Serving handlers for the byte-level LM, in the SageMaker PyTorch inference contract.

train.py writes the model folder: `model.safetensors` (or `model.pth`), `config.json` and
`code/` holding this file and lm_model.py. The container (or `aiops serve`) calls `model_fn` once,
then `input_fn` -> `predict_fn` -> `output_fn` per request.

Request (application/json): `{"prompt": "def main(", "max_new_tokens": 64}` (`inputs` is accepted
for `prompt`; max_new_tokens defaults to 64, at most 1024). Answer: `{"generated_text": "...",
"prompt": "...", "new_tokens": N}`, greedy decoding. `lm_model.generate` yields one token at a time,
for a streaming handler to reuse.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lm_model import ByteLM, ModelConfig, decode, encode, generate  # noqa: E402

DEFAULT_NEW_TOKENS = 64
MAX_NEW_TOKENS = 1024


try:  # in the SageMaker serving container: its toolkit answers this error with its status code
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:
    _ToolkitError = Exception


class BadRequest(ValueError, _ToolkitError):
    """A request error answered 4xx (`status_code`) by `aiops serve` and by the SageMaker toolkit
    (as its BaseInferenceToolkitError); the server stays healthy."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        Exception.__init__(self, message)
        self.message = message
        self.status_code = status_code
        self.phrase = message


def load_model(model_dir: str, device: str | torch.device = "cpu") -> ByteLM:
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    weights = os.path.join(model_dir, config.get("weights", "model.safetensors"))
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model = ByteLM(ModelConfig.from_dict(config))
    model.load_state_dict(state)
    return model.to(device).eval()


def model_fn(model_dir: str, context=None) -> ByteLM:
    return load_model(model_dir, "cuda" if torch.cuda.is_available() else "cpu")


def input_fn(request_body: str | bytes, request_content_type: str) -> dict:
    if isinstance(request_body, (bytes, bytearray)):
        request_body = request_body.decode("utf-8")
    if (request_content_type or "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest(
            f"unsupported content type {request_content_type!r}; send application/json "
            '{"prompt": "...", "max_new_tokens": 64}',
            415,
        )
    try:
        data = json.loads(request_body)
    except ValueError as err:
        raise BadRequest(f"the body is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise BadRequest('expected a JSON object like {"prompt": "...", "max_new_tokens": 64}')
    prompt = data.get("prompt", data.get("inputs", ""))
    new_tokens = data.get("max_new_tokens", DEFAULT_NEW_TOKENS)
    if not isinstance(prompt, str):
        raise BadRequest(f"prompt must be a string, got {type(prompt).__name__}")
    if (
        isinstance(new_tokens, bool)
        or not isinstance(new_tokens, int)
        or not 0 <= new_tokens <= MAX_NEW_TOKENS
    ):
        raise BadRequest(f"max_new_tokens must be an integer 0..{MAX_NEW_TOKENS}, got {new_tokens!r}")
    return {"prompt": prompt, "max_new_tokens": new_tokens}


def predict_fn(data: dict, model: ByteLM) -> dict:
    tokens = list(generate(model, encode(data["prompt"]), data["max_new_tokens"]))
    return {"prompt": data["prompt"], "generated_text": decode(tokens), "new_tokens": len(tokens)}


def output_fn(prediction: dict, accept: str = "application/json") -> str:
    if (accept or "*/*").split(";")[0].strip().lower() not in ("application/json", "*/*"):
        raise BadRequest(f"unsupported accept type {accept!r}; this model answers application/json", 406)
    return json.dumps(prediction)
