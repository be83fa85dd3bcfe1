"""The stack contract: what a deployed stack provides and where everything lives in its bucket.

Defined once, here, and used by every room:

- ``S3Layout``: every prefix of the artifact bucket and the keys/URIs built under them. ``infra/``
  builds the execution role's and the bucket's policies from it; ``training/`` (code bundles,
  channels, job output, checkpoints) and ``aiops deploy --model`` (model packages) build their keys
  from it; the endpoint's data capture and async-inference prefixes come from it too. No prefix
  string exists anywhere else in the code.
- ``StackOutputs``: the outputs ``infra/program.py`` exports (camelCase aliases, as Pulumi shows
  them), saved by ``aiops deploy``/``aiops outputs`` to ``<home>/stacks/<stack>.outputs.json`` and
  read by remote training, deployments and invocation. ``require(...)`` names a missing output and
  the fix (``aiops deploy --stack S``) before anything is uploaded.
- ``resolve_stack``: the one stack-name rule, ``--stack`` > ``settings.stack`` (``AIOPS_STACK``) >
  ``"dev"``, used by every command that touches a stack.
- ``known_regions`` / ``check_region``: regions from botocore's partition data (``endpoints.json``),
  read as a file so that importing this module loads neither boto3 nor botocore.

Imports only pydantic and the standard library.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from aiops.errors import ConfigError

if TYPE_CHECKING:  # typing only: the settings model is not needed to read outputs
    from aiops.settings import Settings

DEFAULT_STACK = "dev"
# Where SageMaker writes training jobs' logs and metrics (fixed by the service, not by the stack).
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TRAINING_METRICS_NAMESPACE = TRAINING_LOG_GROUP  # SageMaker uses the same name for both
ENDPOINT_LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"
# A remote job's tag holding the hash of its CreateTrainingJob request: a retried create adopts an
# existing job of the same name only when this tag matches (CreateTrainingJob has no ClientToken).
CLIENT_TOKEN_TAG = "aiops:client-token"


class S3Layout(BaseModel):
    """Every prefix of the stack's artifact bucket (each ends in '/').

    ``code/<sha256>/sourcedir.tar.gz``      the content-addressed source bundles
                                            (``sagemaker_submit_directory``)
    ``data/<manifest sha256>/...``          local channels, uploaded once under the hash of their manifest
    ``data/<manifest sha256>.manifest.json`` written last: its presence means the channel upload finished
    ``jobs/<job>/output/model.tar.gz``      SageMaker's job output (``S3OutputPath`` = ``s3://bucket/jobs``)
    ``checkpoints/<job>/``                  the job's ``CheckpointConfig.S3Uri`` (spot resume)
    ``models/sha256/<sha256>/model.tar.gz`` model packages uploaded by ``aiops deploy --model``
    ``models/sha256/<tree sha256>/...``     uncompressed model folders (``deploy --model FOLDER``)
    ``data-capture/``                       the endpoint's DataCaptureConfig destination
    ``async-inference/input/<sha256>``     async-inference requests (``aiops invoke --async`` uploads them)
    ``async-inference/output/`` and ``async-inference/failures/``  async-inference results and failures
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = "code/"
    data: str = "data/"
    jobs: str = "jobs/"
    checkpoints: str = "checkpoints/"
    models: str = "models/"
    data_capture: str = "data-capture/"
    async_input: str = "async-inference/input/"
    async_output: str = "async-inference/output/"
    async_failures: str = "async-inference/failures/"

    # ------------------------------------------------------------------ keys and URIs

    def bundle_key(self, sha256: str) -> str:
        return f"{self.code}{sha256}/sourcedir.tar.gz"

    def channel_prefix(self, manifest_sha256: str) -> str:
        """The key prefix of a channel's files (ends in '/': S3Prefix channels list everything under it)."""
        return f"{self.data}{manifest_sha256}/"

    def channel_manifest_key(self, manifest_sha256: str) -> str:
        """Beside the channel's prefix, not inside it (the container would download it into the channel)."""
        return f"{self.data}{manifest_sha256}.manifest.json"

    def job_output_uri(self, bucket: str) -> str:
        """``OutputDataConfig.S3OutputPath``: SageMaker appends ``<job>/output/model.tar.gz``."""
        return f"s3://{bucket}/{self.jobs.rstrip('/')}"

    def job_output_key(self, job_name: str, name: str = "model.tar.gz") -> str:
        return f"{self.jobs}{job_name}/output/{name}"

    def checkpoint_prefix(self, job_name: str) -> str:
        return f"{self.checkpoints}{job_name}/"

    def checkpoint_uri(self, bucket: str, job_name: str) -> str:
        return f"s3://{bucket}/{self.checkpoint_prefix(job_name)}"

    def model_key(self, sha256: str) -> str:
        return f"{self.models}sha256/{sha256}/model.tar.gz"

    def model_prefix(self, tree_sha256: str) -> str:
        """An uncompressed model folder's prefix (S3Prefix model data), named by its tree digest."""
        return f"{self.models}sha256/{tree_sha256}/"

    def data_capture_uri(self, bucket: str) -> str:
        return f"s3://{bucket}/{self.data_capture.rstrip('/')}"

    def async_input_key(self, sha256: str) -> str:
        """An async-inference request body, named by its content (the same input is uploaded once)."""
        return f"{self.async_input}{sha256}"

    def async_output_uri(self, bucket: str) -> str:
        return f"s3://{bucket}/{self.async_output.rstrip('/')}"

    def async_failure_uri(self, bucket: str) -> str:
        return f"s3://{bucket}/{self.async_failures.rstrip('/')}"

    @staticmethod
    def uri(bucket: str, key: str) -> str:
        return f"s3://{bucket}/{key}"

    # ------------------------------------------------------------------ what the role needs

    @property
    def role_read_prefixes(self) -> tuple[str, ...]:
        """What jobs and endpoints running as the execution role read: the code bundle, the channels,
        earlier checkpoints (resume), model packages and training jobs' model.tar.gz (deploy job:X)."""
        return (self.code, self.data, self.checkpoints, self.jobs, self.models)

    @property
    def role_write_prefixes(self) -> tuple[str, ...]:
        """What they write: job output, checkpoints, captured requests."""
        return (self.jobs, self.checkpoints, self.data_capture)

    # Only a stack whose endpoint uses asynchronous inference grants these (least privilege): the
    # endpoint reads the requests the user uploaded and writes the results and failures. The user
    # writes the inputs and reads the results; the role never writes an input nor reads a result.
    @property
    def async_role_read_prefixes(self) -> tuple[str, ...]:
        return (self.async_input,)

    @property
    def async_role_write_prefixes(self) -> tuple[str, ...]:
        return (self.async_output, self.async_failures)

    def role_prefixes(self, *, async_inference: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(read, write) prefixes of the execution role of a stack, with or without async inference."""
        if not async_inference:
            return self.role_read_prefixes, self.role_write_prefixes
        return (
            self.role_read_prefixes + self.async_role_read_prefixes,
            self.role_write_prefixes + self.async_role_write_prefixes,
        )

    @property
    def all_prefixes(self) -> tuple[str, ...]:
        read, write = self.role_prefixes(async_inference=True)
        return tuple(dict.fromkeys(read + write))

    def contains(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.all_prefixes)


LAYOUT = S3Layout()


# ---------------------------------------------------------------------------------- outputs


class StackOutputs(BaseModel):
    """A deployed stack's outputs, by the names ``infra/program.py`` exports (camelCase aliases)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    stack: str | None = None
    region: str | None = None
    bucket: str | None = None
    bucket_arn: str | None = None
    kms_key_arn: str | None = None
    role_arn: str | None = None
    log_group: str | None = None
    subnet_ids: list[str] = Field(default_factory=list)
    security_group_ids: list[str] = Field(default_factory=list)
    endpoint_name: str | None = None
    endpoint_config_name: str | None = None
    inference_component_name: str | None = None
    model_data_url: str | None = None
    repository_url: str | None = None
    dashboard_name: str | None = None
    alerts_topic_arn: str | None = None
    launch_template_id: str | None = None
    gpu_group_name: str | None = None
    training_secret_arns: list[str] = Field(default_factory=list)  # what the role may read (--secret)
    remote_debug: bool = False  # the role may open SSM sessions (--remote-debug, access.remoteDebug)

    @property
    def vpc(self) -> bool:
        return bool(self.subnet_ids)

    def exported(self) -> dict[str, Any]:
        """As saved and as Pulumi shows them: camelCase, unset values left out."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)

    def required(self, name: str, *, stack: str | None = None, needed_for: str = "this command") -> str:
        """One text output (``bucket``, ``role_arn``, ...) that must be set (``require``): its value."""
        self.require(name, stack=stack, needed_for=needed_for)
        value = getattr(self, name)
        if not isinstance(value, str):
            raise ValueError(f"StackOutputs.{name} is not a text output")
        return value

    def require(
        self, *fields: str, stack: str | None = None, needed_for: str = "this command"
    ) -> StackOutputs:
        """Raise ConfigError (exit 2) naming the first missing output and ``aiops deploy`` as the fix.

        ``fields`` are python names (``bucket``, ``role_arn``, ``subnet_ids``, ...). Call it before
        anything is uploaded.
        """
        name = stack or self.stack or DEFAULT_STACK
        for f in fields:
            if f not in type(self).model_fields:
                raise ValueError(f"StackOutputs has no field {f!r}")
            if not getattr(self, f):
                alias = to_camel(f)
                raise ConfigError(
                    f"stack {name!r} has no output {alias!r}, which {needed_for} needs: run "
                    f"'aiops deploy --stack {name}' (or 'aiops outputs --stack {name}' if it is deployed)."
                )
        return self


def outputs_path(home: Path, stack: str) -> Path:
    return Path(home) / "stacks" / f"{stack}.outputs.json"


def read_outputs(home: Path, stack: str) -> StackOutputs:
    """The saved outputs (empty when the stack was never deployed from here)."""
    path = outputs_path(home, stack)
    if not path.is_file():
        return StackOutputs(stack=stack)
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(
            f"{path}: not valid JSON ({err}); run 'aiops outputs --stack {stack}' to refresh it."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a JSON object; run 'aiops outputs --stack {stack}' to refresh it."
        )
    try:
        outputs = StackOutputs.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(
            f"{path}: output {'.'.join(map(str, first['loc']))}: {first['msg']}; run "
            f"'aiops outputs --stack {stack}' to refresh it."
        ) from None
    if outputs.stack is None:
        outputs = outputs.model_copy(update={"stack": stack})
    return outputs


def write_outputs(home: Path, stack: str, outputs: StackOutputs | dict[str, Any]) -> Path:
    """Save the outputs (a StackOutputs, or the raw exported dict: unknown keys are kept as-is)."""
    data = outputs.exported() if isinstance(outputs, StackOutputs) else dict(outputs)
    StackOutputs.model_validate(data)  # a malformed output is refused before it is saved
    path = outputs_path(home, stack)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


# ------------------------------------------------------------------------------ stack name


def resolve_stack(cli_value: str | None, settings: Settings | None = None) -> str:
    """The one rule: ``--stack`` > ``settings.stack`` (``AIOPS_STACK``, aiops.toml) > ``"dev"``."""
    if cli_value:
        return cli_value
    return (settings.stack if settings is not None else None) or DEFAULT_STACK


def current_outputs(settings: Settings) -> StackOutputs:
    """The saved outputs of the stack the settings name (the one stack rule, no --stack)."""
    return read_outputs(settings.home, resolve_stack(None, settings))


def endpoint_region(settings: Settings, outputs: StackOutputs | None = None) -> str | None:
    """Where a deployed endpoint is looked for: the current stack's region (its saved outputs),
    else ``aws.region`` from the settings (None: boto3's own default)."""
    outputs = outputs if outputs is not None else current_outputs(settings)
    return outputs.region or settings.aws.region


# ---------------------------------------------------------------------------------- regions


@lru_cache(maxsize=1)
def _partitions() -> tuple[dict, ...]:
    """The partitions of botocore's ``endpoints.json`` (read as a file: no import); () without botocore."""
    import importlib.util

    spec = importlib.util.find_spec("botocore")
    if spec is None or not spec.submodule_search_locations:
        return ()
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "endpoints.json"
        if path.is_file():
            return tuple(json.loads(path.read_text()).get("partitions", []))
    return ()


@lru_cache(maxsize=1)
def known_regions() -> frozenset[str]:
    """Every region of every partition in botocore's ``endpoints.json``."""
    return frozenset(r for p in _partitions() for r in p.get("regions", {}))


@cache
def dns_suffix(region: str) -> str:
    """The DNS suffix of the region's partition (``amazonaws.com``, ``amazonaws.com.cn``, ...)."""
    import re

    for partition in _partitions():
        if region in partition.get("regions", {}) or re.match(partition.get("regionRegex", "^$"), region):
            return partition["dnsSuffix"]
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def check_region(region: str, *, what: str = "region") -> str:
    """ValueError naming the region when botocore's partitions do not know it (pydantic validators
    and CLI options wrap it). Without botocore installed every region is accepted."""
    regions = known_regions()
    if regions and region not in regions:
        close = sorted(r for r in regions if r.split("-")[0] == region.split("-")[0])[:6]
        hint = ", ".join(close) if close else "us-east-1, us-west-2, eu-west-1, ap-northeast-1, ..."
        raise ValueError(f"unknown {what} {region!r} (not in botocore's partition data); e.g. {hint}")
    return region


def require_region(region: str, *, option: str = "--region") -> str:
    """check_region as a UsageError (exit 2) for CLI options."""
    from aiops.errors import UsageError

    try:
        return check_region(region, what=option)
    except ValueError as err:
        raise UsageError(str(err)) from None
