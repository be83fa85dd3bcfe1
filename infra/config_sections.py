"""The stack config's sections besides the endpoint (storage, access, network, compute), and the
base every section shares: camelCase keys as in the stack file, unknown keys refused, frozen.
"""

from __future__ import annotations

import re

from aiops.infra.instance_types import gpu_hint, is_gpu_type
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel


class Section(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class StorageConfig(Section):
    """The KMS key and the artifact bucket (always on: every other component uses them)."""

    noncurrent_version_days: int = Field(30, ge=1, le=3650)
    abort_multipart_days: int = Field(7, ge=1, le=365)
    force_destroy: bool = False
    key_deletion_window_days: int = Field(30, ge=7, le=30)


class AccessConfig(Section):
    """The SageMaker execution role. Its bucket prefixes are not configurable: they are the stack
    contract's (``aiops.stack.S3Layout``), the same ones remote jobs and deployments write to.

    ``trainingSecrets``: the Secrets Manager secrets (full ARNs) training jobs may read
    (``aiops train --remote --secret NAME=ARN``): the role gets ``secretsmanager:GetSecretValue`` on
    exactly these. ``trainingSecretKeys``: the customer-managed KMS keys those secrets are encrypted
    with, if any (``kms:Decrypt`` through Secrets Manager only); secrets under the AWS-managed key
    need none.

    ``remoteDebug``: training jobs may run with ``--remote-debug`` (RemoteDebugConfig): the role
    gets the four ``ssmmessages`` actions the SSM agent in the container needs to open sessions.
    """

    enabled: bool = True
    remote_debug: bool = False
    training_secrets: tuple[str, ...] = ()
    training_secret_keys: tuple[str, ...] = ()

    @field_validator("training_secrets")
    @classmethod
    def _secrets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from aiops.names import is_secret_arn

        bad = [arn for arn in value if not is_secret_arn(arn)]
        if bad:
            raise ValueError(
                f"{bad[0]} is not a Secrets Manager secret's full ARN "
                "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-AbCdEf)"
            )
        return tuple(dict.fromkeys(value))

    @field_validator("training_secret_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        key_arn = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")
        bad = [arn for arn in value if not key_arn.fullmatch(arn)]
        if bad:
            raise ValueError(f"{bad[0]} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _keys_need_secrets(self) -> AccessConfig:
        if self.training_secret_keys and not self.training_secrets:
            raise ValueError("trainingSecretKeys without trainingSecrets: list the secrets they encrypt")
        return self


_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_SG = re.compile(r"^sg-[0-9a-f]{8,17}$")


class NetworkConfig(Section):
    """Run training jobs and the endpoint in your VPC (off by default: SageMaker's own network).

    ``subnetIds`` and ``securityGroupIds`` become the ``subnetIds``/``securityGroupIds`` outputs
    that ``aiops train --remote`` puts in the job's VpcConfig, and the endpoint model's vpc_config;
    the execution role gets the ec2 network-interface permissions SageMaker needs for them. The
    subnets need a route to S3 (an S3 gateway endpoint, or a NAT) and, for the default images, to ECR.
    """

    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()

    @field_validator("subnet_ids")
    @classmethod
    def _subnets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            if not _SUBNET.match(v):
                raise ValueError(f"{v!r}: allowed: subnet IDs like subnet-0abc12345")
        if len(value) > 16:
            raise ValueError("at most 16 subnets (SageMaker VpcConfig)")
        return value

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            if not _SG.match(v):
                raise ValueError(f"{v!r}: allowed: security group IDs like sg-0abc12345")
        if len(value) > 5:
            raise ValueError("at most 5 security groups (SageMaker VpcConfig)")
        return value

    @model_validator(mode="after")
    def _both(self) -> NetworkConfig:
        if bool(self.subnet_ids) != bool(self.security_group_ids):
            raise ValueError(
                "set both subnetIds and securityGroupIds, or neither (SageMaker VpcConfig needs both)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.subnet_ids)


class ComputeConfig(Section):
    """GPU EC2 machines behind an autoscaling group (off by default)."""

    enabled: bool = False
    instance_type: str = "g5.xlarge"
    spot: bool = False
    desired_capacity: int = Field(0, ge=0)
    min_size: int = Field(0, ge=0)
    max_size: int = Field(1, ge=0)
    root_volume_gb: int = Field(200, ge=30, le=16384)
    ami_name_filter: str = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
    ami_owner: str = "amazon"
    subnet_ids: tuple[str, ...] = ()
    vpc_id: str | None = None

    @field_validator("instance_type")
    @classmethod
    def _gpu(cls, value: str) -> str:
        if not is_gpu_type(value):
            raise ValueError(f"not a GPU instance type; allowed: {gpu_hint()}")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> ComputeConfig:
        if self.min_size > self.max_size:
            raise ValueError(f"minSize={self.min_size} > maxSize={self.max_size}: minSize must be <= maxSize")
        if not self.min_size <= self.desired_capacity <= self.max_size:
            raise ValueError(
                f"desiredCapacity={self.desired_capacity} must lie between minSize={self.min_size} "
                f"and maxSize={self.max_size}"
            )
        if bool(self.subnet_ids) != bool(self.vpc_id):
            raise ValueError("set both vpcId and subnetIds, or neither (then the default VPC is used)")
        return self
