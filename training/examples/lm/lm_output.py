"""What the job leaves for SageMaker to keep: the servable model folder (SM_MODEL_DIR), the metrics
file (SM_OUTPUT_DATA_DIR) and the failure reason (SM_OUTPUT_DIR/failure).

The model folder is what inference.py loads: the weights (`model.safetensors`, or `model.pth`
without safetensors), `config.json` (the model shape, the weights' file name, the steps trained) and
`code/` (inference.py, lm_model.py, requirements.txt).

Plain torch (no aiops import): train.py ships it to the SageMaker container.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

SERVING_CODE = ("inference.py", "lm_model.py", "requirements.txt")


def write_model_folder(model_dir: str, tensors: dict[str, torch.Tensor], config: dict, steps: int) -> str:
    """Write the consolidated weights, config.json and code/ into `model_dir`; the weights' file name."""
    os.makedirs(model_dir, exist_ok=True)
    try:
        from safetensors.torch import save_file
    except ImportError:
        weights = "model.pth"
        torch.save(tensors, os.path.join(model_dir, weights))
    else:
        weights = "model.safetensors"
        save_file(tensors, os.path.join(model_dir, weights), metadata={"format": "pt"})
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump({**config, "weights": weights, "trained_steps": steps}, f, indent=2)
    code = os.path.join(model_dir, "code")
    os.makedirs(code, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    for name in SERVING_CODE:
        if os.path.isfile(os.path.join(here, name)):
            shutil.copy2(os.path.join(here, name), os.path.join(code, name))
    return weights


def write_metrics(output_data_dir: str, metrics: dict) -> None:
    os.makedirs(output_data_dir, exist_ok=True)
    with open(os.path.join(output_data_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)


def write_failure(text: str) -> None:
    """SageMaker shows /opt/ml/output/failure as the job's FailureReason (1024 characters at most).
    The first rank to fail writes it: the root cause, not a peer's later "connection closed"."""
    path = os.path.join(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"), "failure")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x") as f:
            f.write(text[:1024])
    except OSError:  # written already by another rank, or nowhere to write outside a SageMaker tree
        pass
