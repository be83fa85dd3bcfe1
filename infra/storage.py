"""Storage: the stack's KMS key and the artifact bucket."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
from aiops.infra.policies import kms_key_policy, tls_only_bucket_policy
from pulumi_aws import kms, s3


@dataclass(frozen=True)
class StorageArgs:
    prefix: str
    account_id: pulumi.Input[str]
    partition: pulumi.Input[str]
    noncurrent_version_days: int = 30
    abort_multipart_days: int = 7
    force_destroy: bool = False
    key_deletion_window_days: int = 30
    allow_autoscaling_key_use: bool = False
    allow_cloudwatch_alarms_key_use: bool = False  # alarms publish to SNS topics encrypted with the key


class Storage(pulumi.ComponentResource):
    """KMS key with rotation; S3 bucket with versioning, SSE-KMS (bucket key), the four public-access
    blocks, a TLS-only policy and lifecycle rules for old versions and abandoned uploads."""

    key: kms.Key
    bucket: s3.Bucket

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiops:infra:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        policy = pulumi.Output.all(args.account_id, args.partition).apply(
            lambda v: json.dumps(
                kms_key_policy(
                    account_id=v[0],
                    partition=v[1],
                    allow_autoscaling=args.allow_autoscaling_key_use,
                    allow_cloudwatch_alarms=args.allow_cloudwatch_alarms_key_use,
                )
            )
        )
        self.key = kms.Key(
            f"{name}-key",
            description=f"{args.prefix}: artifacts, volumes, endpoint storage",
            enable_key_rotation=True,
            deletion_window_in_days=args.key_deletion_window_days,
            policy=policy,
            opts=child,
        )
        self.alias = kms.Alias(
            f"{name}-key-alias", name=f"alias/{args.prefix}", target_key_id=self.key.key_id, opts=child
        )

        self.bucket = s3.Bucket(
            f"{name}-bucket", bucket_prefix=f"{args.prefix}-", force_destroy=args.force_destroy, opts=child
        )
        bucket_child = pulumi.ResourceOptions(parent=self, depends_on=[self.bucket])
        self.public_access = s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=bucket_child,
        )
        self.versioning = s3.BucketVersioning(
            f"{name}-versioning",
            bucket=self.bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=bucket_child,
        )
        self.encryption = s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=self.bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {
                        "sse_algorithm": "aws:kms",
                        "kms_master_key_id": self.key.arn,
                    },
                    "bucket_key_enabled": True,
                }
            ],
            opts=bucket_child,
        )
        self.policy = s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=self.bucket.id,
            policy=self.bucket.arn.apply(lambda arn: json.dumps(tls_only_bucket_policy(arn))),
            # the public-access block first: a policy put before it could briefly be evaluated without it
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.public_access]),
        )
        self.lifecycle = s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=self.bucket.id,
            rules=[
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {},
                    "noncurrent_version_expiration": {"noncurrent_days": args.noncurrent_version_days},
                },
                {
                    "id": "abort-incomplete-multipart-uploads",
                    "status": "Enabled",
                    "filter": {},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": args.abort_multipart_days},
                },
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.versioning]),
        )
        self.register_outputs(
            {"bucket": self.bucket.bucket, "bucket_arn": self.bucket.arn, "key_arn": self.key.arn}
        )
