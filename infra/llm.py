"""What the endpoint's model runs: the container's image and environment, and the start-up
settings that large models need. Pure functions over the validated config: no pulumi import.

Containers (``endpoint.container``):

- ``pytorch``: the SageMaker PyTorch inference container (the handler contract, ``code/inference.py``).
- ``huggingface``: the Hugging Face inference container (a transformers pipeline, or ``code/inference.py``):
  the PyTorch container's variables plus ``HF_TASK`` when ``huggingface.task`` is set.
- ``lmi``: the large-model-inference container (``djl-inference``, vLLM / TensorRT-LLM back ends);
  configured by environment variables as the LMI docs list them: ``HF_MODEL_ID`` (the model's
  folder, ``/opt/ml/model``, where SageMaker puts the model data), ``TENSOR_PARALLEL_DEGREE``,
  ``OPTION_ROLLING_BATCH``, ``OPTION_MAX_ROLLING_BATCH_SIZE``, ``OPTION_MAX_MODEL_LEN`` (the total
  tokens of a sequence), ``OPTION_DTYPE``.
- ``tgi``: the Hugging Face LLM container (text-generation-inference): ``HF_MODEL_ID`` and
  ``SM_NUM_GPUS``, which its ``sagemaker-entrypoint.sh`` turns into the launcher's ``MODEL_ID`` and
  ``NUM_SHARD`` (the tensor-parallel degree); the launcher's own ``MAX_INPUT_TOKENS``,
  ``MAX_TOTAL_TOKENS``, ``MAX_BATCH_SIZE`` (requests per batch: what the GPU-fit check's KV cache
  counts) and ``DTYPE`` (float16 / bfloat16).
- ``custom``: the image named by ``image.uri`` (or the stack's own repository), with
  ``environment`` only.

The tensor-parallel degree defaults to the GPUs the container sees: an inference component's
``acceleratorsPerCopy`` when set, else the instance type's GPU count (``aiops/data/gpus.json``).
The user's ``environment`` is applied last and wins.
"""

from __future__ import annotations

import math

from aiops.infra.endpoint_config import EndpointConfig
from aiops.infra.instance_types import has_local_storage

from aiops.artifacts.programs import SUBMIT_DIRECTORY
from aiops.gpufit import gpu_count

_TGI_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def tensor_parallel_degree(cfg: EndpointConfig) -> int:
    """The GPUs one copy of the model is sharded over: ``llm.tensorParallelDegree``, else every GPU the
    container sees: an inference component's ``acceleratorsPerCopy`` (SageMaker shows a copy only
    its own devices), else the instance type's."""
    ic = cfg.inference_components
    per_copy = ic.accelerators_per_copy if ic.enabled else None
    return cfg.llm.tensor_parallel_degree or per_copy or gpu_count(cfg.instance_type) or 1


def pytorch_environment(cfg: EndpointConfig, region: str) -> dict[str, str]:
    """sagemaker-pytorch-inference: the handler module inside the model's code/ folder."""
    return {
        "SAGEMAKER_PROGRAM": cfg.program,
        "SAGEMAKER_SUBMIT_DIRECTORY": SUBMIT_DIRECTORY,
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": region,
    }


def lmi_environment(cfg: EndpointConfig) -> dict[str, str]:
    llm = cfg.llm
    env = {
        "HF_MODEL_ID": llm.model_id,
        "TENSOR_PARALLEL_DEGREE": str(tensor_parallel_degree(cfg)),
        "OPTION_ROLLING_BATCH": llm.rolling_batch,
    }
    if llm.max_batch_size:
        env["OPTION_MAX_ROLLING_BATCH_SIZE"] = str(llm.max_batch_size)
    if llm.max_total_tokens:
        env["OPTION_MAX_MODEL_LEN"] = str(llm.max_total_tokens)
    if llm.dtype:
        env["OPTION_DTYPE"] = llm.dtype
    return env


def tgi_environment(cfg: EndpointConfig) -> dict[str, str]:
    llm = cfg.llm
    env = {"HF_MODEL_ID": llm.model_id, "SM_NUM_GPUS": str(tensor_parallel_degree(cfg))}
    if llm.max_input_tokens:
        env["MAX_INPUT_TOKENS"] = str(llm.max_input_tokens)
    if llm.max_total_tokens:
        env["MAX_TOTAL_TOKENS"] = str(llm.max_total_tokens)
    if llm.max_batch_size:
        env["MAX_BATCH_SIZE"] = str(llm.max_batch_size)
    if llm.dtype:
        env["DTYPE"] = _TGI_DTYPES[llm.dtype]  # fp32 is refused by the config check
    return env


def container_environment(cfg: EndpointConfig, region: str) -> dict[str, str]:
    if cfg.container == "lmi":
        env = lmi_environment(cfg)
    elif cfg.container == "tgi":
        env = tgi_environment(cfg)
    elif cfg.container == "pytorch":
        env = pytorch_environment(cfg, region)
    elif cfg.container == "huggingface":
        env = pytorch_environment(cfg, region)
        if cfg.huggingface.task:
            env["HF_TASK"] = cfg.huggingface.task
    else:
        env = {}
    env.update(cfg.environment)
    return env


# --------------------------------------------------------------------------- large-model start-up

# The defaults are what make big deployments fail: SageMaker allows 60..3600 s for both. The
# download is budgeted at a pessimistic 50 MB/s from S3 (20 s per GB) after 5 minutes; the start-up
# health check (weights to the GPU, the LLM containers' warm-up) 10 s per GB after 10 minutes.
DOWNLOAD_BASE_S, DOWNLOAD_S_PER_GB = 300, 20
STARTUP_BASE_S, STARTUP_S_PER_GB = 600, 10
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 60, 3600
VOLUME_MAX_GB = 512


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(high, max(low, math.ceil(value))))


def startup_settings(cfg: EndpointConfig) -> dict[str, int]:
    """The production variant's ``model_data_download_timeout_in_seconds``,
    ``container_startup_health_check_timeout_in_seconds`` and ``volume_size_in_gb``: from the
    model's size when known, each overridable; none set when neither (SageMaker's defaults)."""
    size = cfg.model_size_gb
    out: dict[str, int] = {}
    download = cfg.model_data_download_timeout_seconds
    if download is None and size is not None:
        download = _clamp(DOWNLOAD_BASE_S + DOWNLOAD_S_PER_GB * size, TIMEOUT_MIN_S, TIMEOUT_MAX_S)
    if download is not None:
        out["model_data_download_timeout_in_seconds"] = download
    startup = cfg.container_startup_health_check_timeout_seconds
    if startup is None and size is not None:
        startup = _clamp(STARTUP_BASE_S + STARTUP_S_PER_GB * size, TIMEOUT_MIN_S, TIMEOUT_MAX_S)
    if startup is not None:
        out["container_startup_health_check_timeout_in_seconds"] = startup
    # VolumeSizeInGB exists only for EBS-backed types: local-NVMe types (g5, p4d, ...) refuse it.
    if not has_local_storage(cfg.instance_type):
        volume = cfg.volume_size_gb
        if volume is None and size is not None:
            volume = _clamp(2 * size + 10, 1, VOLUME_MAX_GB)  # a tarball and its extracted copy, plus room
        if volume is not None:
            out["volume_size_in_gb"] = volume
    return out


def model_data(cfg: EndpointConfig) -> dict:
    """The model's ``primary_container`` data: a tarball's ``model_data_url``, or for a prefix
    (``s3://bucket/prefix/``) ``model_data_source.s3_data_sources[0]`` (CreateModel's
    ``ModelDataSource.S3DataSource``) with ``S3Prefix`` and ``CompressionType: None`` (uncompressed:
    SageMaker copies the files as they are)."""
    if cfg.uncompressed:
        return {
            "model_data_source": {
                "s3_data_sources": [
                    {  # pulumi-aws names the one source in a list
                        "s3_uri": cfg.model_data_url,
                        "s3_data_type": "S3Prefix",
                        "compression_type": "None",
                    }
                ]
            }
        }
    return {"model_data_url": cfg.model_data_url}
