"""The moto server of the emulated AWS, in its own process, with IAM enforcement on.

Run as ``python moto_server.py BOOTSTRAP_REQUESTS``; prints ``port N`` once it listens on
127.0.0.1 (port chosen by the kernel) and exits when its stdin closes (the test session ends).

moto reads ``INITIAL_NO_AUTH_ACTION_COUNT`` once, when ``moto.settings`` is imported, and keeps it
in a module global: hence a process of its own (a ThreadedMotoServer inside pytest would switch
enforcement on for every other moto user of that worker). The first BOOTSTRAP_REQUESTS requests
are not authorised (conftest uses them to create the admin user and the user standing for the
SageMaker service); every later request is checked against the caller's IAM policies.

Two patches, where moto 5.2 cannot evaluate the stack's documents at all:

- a trust policy whose principal is a service: ``IAMPolicyStatement._check_principal`` reads only
  ``Principal.AWS`` and raises TypeError (HTTP 500) for ``{"Service": "sagemaker.amazonaws.com"}``.
  Here a ``Service`` principal matches the IAM user named exactly after the service
  (``user/sagemaker.amazonaws.com``), the identity the platform emulator uses when it acts as
  SageMaker.
- conditions: moto knows only StringEquals and treats any other operator as met, so the bucket's
  TLS-only statement (Deny s3:* when ``Bool aws:SecureTransport false``) denies every object
  request (and it answers DENIED for any statement whose condition is unmet, even an Allow's).
  Here ``Bool`` is evaluated, with ``aws:SecureTransport`` true (the emulated endpoints stand in
  for AWS's TLS endpoints), and a statement whose condition is unmet does not apply.

Two more, where moto 5.2 refuses what an endpoint of inference components is made of (the
platform emulator keeps the components themselves, since moto has no such API):

- an endpoint configuration whose variants name no model (``ProductionVariants`` without
  ``ModelName``, as for inference components): moto indexes ``ModelName`` and answers 500; such
  variants are not looked up.
- the scalable dimension ``sagemaker:inference-component:DesiredCopyCount`` on
  ``inference-component/NAME``: missing from moto's list of dimensions; it is accepted.

And one where moto names the wrong IAM action for an S3 request:

- moto 5.2.6 judges each S3 request by its API operation name (``HeadObject``, ``ListObjectsV2``), where
  5.2.5 used its own table of IAM actions. AWS authorizes several operations by another action: HEAD of
  an object needs ``s3:GetObject``, listing needs ``s3:ListBucket`` (there is no ``s3:HeadObject`` or
  ``s3:ListObjectsV2`` action), so 5.2.6 denies a role what AWS allows it. Here the operation is
  judged by the action AWS documents for it, under either version.

And one where moto judges a Secrets Manager call against the wrong resource:

- moto 5.2 authorizes every Secrets Manager call against ``Resource: "*"`` (only SQS, IAM and STS
  name their resource), so a role allowed ``secretsmanager:GetSecretValue`` on one secret's ARN, as
  AWS's policies are written, is denied. Here a call naming a ``SecretId`` is judged against that
  secret's ARN, as AWS judges it.

Everything else is moto as shipped; iam_judge.py evaluates what moto cannot.
"""

from __future__ import annotations

import os
import sys


def _patch_service_principals() -> None:
    from moto.iam import access_control

    original = access_control.IAMPolicyStatement._check_principal

    def check_principal(self, principal: str) -> bool:
        expected = self._statement.get("Principal")
        if isinstance(expected, dict) and "Service" in expected and "AWS" not in expected:
            services = expected["Service"]
            services = [services] if isinstance(services, str) else list(services)
            return any(principal.endswith(f":user/{service}") for service in services)
        return original(self, principal)

    access_control.IAMPolicyStatement._check_principal = check_principal


def _patch_bool_conditions() -> None:
    from moto.iam import access_control, policy_conditions

    def bool_equals(expected: object, actual: str) -> bool:
        wanted = expected if isinstance(expected, list) else [expected]
        return str(actual).lower() in [str(w).lower() for w in wanted]

    policy_conditions.CONDITION_OPERATIONS["Bool"] = bool_equals
    statement = access_control.IAMPolicyStatement
    check_conditions, is_action_permitted = statement._check_conditions, statement.is_action_permitted

    def permitted(
        self, action: str, resource: str = "*", principal: str | None = None, incoming: dict | None = None
    ) -> object:
        incoming = {"aws:SecureTransport": "true", **(incoming or {})}
        # moto answers DENIED when a statement's condition is not met, whatever its Effect: an
        # unmet condition means the statement does not apply (a Deny with it denies nothing).
        if self._statement.get("Condition") and not check_conditions(self, incoming):
            return access_control.PermissionResult.NEUTRAL
        return is_action_permitted(self, action, resource, principal, incoming)

    statement.is_action_permitted = permitted


def _patch_inference_components() -> None:
    from moto.applicationautoscaling import models as scaling
    from moto.sagemaker import models as sagemaker

    validate = sagemaker.SageMakerModelBackend.validate_production_variants

    def validate_variants(self, production_variants: list) -> None:
        validate(self, [v for v in production_variants if "ModelName" in v])

    sagemaker.SageMakerModelBackend.validate_production_variants = validate_variants
    params_valid = scaling._target_params_are_valid

    def target_params_valid(namespace: str, r_id: str, dimension: str) -> bool:
        if (namespace, dimension) == (
            "sagemaker",
            "sagemaker:inference-component:DesiredCopyCount",
        ) and r_id.startswith("inference-component/"):
            return True
        return params_valid(namespace, r_id, dimension)

    scaling._target_params_are_valid = target_params_valid
    from moto.applicationautoscaling import responses

    handler = responses.ApplicationAutoScalingResponse
    validate_params = handler._validate_params

    def validate_request(self) -> None:  # the same dimension, checked again against the enum
        if self._get_param("ScalableDimension") != "sagemaker:inference-component:DesiredCopyCount":
            validate_params(self)

    handler._validate_params = validate_request


# S3 API operations that AWS authorizes by a differently named IAM action ("Required permissions for
# Amazon S3 API operations"). Names that are already IAM actions pass through unchanged.
S3_OPERATION_ACTIONS = {
    "HeadObject": "GetObject",
    "HeadBucket": "ListBucket",
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "ListBuckets": "ListAllMyBuckets",
    "ListMultipartUploads": "ListBucketMultipartUploads",
    "ListParts": "ListMultipartUploadParts",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "UploadPartCopy": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "CopyObject": "PutObject",
    "DeleteObjects": "DeleteObject",
    "GetBucketEncryption": "GetEncryptionConfiguration",
    "PutBucketEncryption": "PutEncryptionConfiguration",
    "DeleteBucketEncryption": "PutEncryptionConfiguration",
    "GetPublicAccessBlock": "GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "DeletePublicAccessBlock": "PutBucketPublicAccessBlock",
    "GetBucketLifecycleConfiguration": "GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "PutLifecycleConfiguration",
    "DeleteBucketLifecycle": "PutLifecycleConfiguration",
    "GetBucketCors": "GetBucketCORS",
    "PutBucketCors": "PutBucketCORS",
    "DeleteBucketCors": "PutBucketCORS",
    "GetBucketReplication": "GetReplicationConfiguration",
    "PutBucketReplication": "PutReplicationConfiguration",
    "DeleteBucketTagging": "PutBucketTagging",
}


def _patch_s3_action_names() -> None:
    from moto.iam import access_control

    init = access_control.S3IAMRequest.__init__

    def judged_as_aws_does(self, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        service, _, operation = self._action.partition(":")
        self._action = f"{service}:{S3_OPERATION_ACTIONS.get(operation, operation)}"

    access_control.S3IAMRequest.__init__ = judged_as_aws_does


def _patch_secret_resources() -> None:
    from moto.secretsmanager.responses import SecretsManagerResponse

    def determine_resource(self) -> str:
        secret_id = self._get_param("SecretId")
        secret = self.backend.secrets.get(secret_id) if secret_id else None
        return secret.arn if secret is not None else "*"

    SecretsManagerResponse._determine_resource = determine_resource


def main() -> None:
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = sys.argv[1]
    from moto import settings
    from moto.server import ThreadedMotoServer

    assert settings.INITIAL_NO_AUTH_ACTION_COUNT == float(sys.argv[1])
    _patch_service_principals()
    _patch_bool_conditions()
    _patch_inference_components()
    _patch_s3_action_names()
    _patch_secret_resources()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(f"port {server.get_host_and_port()[1]}", flush=True)
    sys.stdin.read()  # until the parent closes the pipe (or dies)
    server.stop()


if __name__ == "__main__":
    main()
