"""Remote jobs on SageMaker: create a job exactly once, settle a record an interrupted create left
Pending, fold DescribeTrainingJob answers into the local run record, stop a job, download its model.

AWS calls go through `aws_call`, which turns botocore's errors into one line naming the action.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiops.aws import error_code  # the one reading of a ClientError's code
from aiops.errors import AiopsError, UsageError
from aiops.runs import STATUS_NOT_CREATED, STATUS_PENDING, JobSummary, RunRecord, RunStore
from aiops.stack import CLIENT_TOKEN_TAG

PENDING = STATUS_PENDING
NOT_CREATED = STATUS_NOT_CREATED
# Errors after which the create may or may not have reached SageMaker: describe before retrying.
RETRYABLE_CODES = {
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalServerError",
    "InternalError",
    "RequestTimeout",
    "RequestTimeoutException",
}
# Create is never retried blindly by botocore: a timed-out create may have launched the job.
NO_RETRY = {"mode": "standard", "total_max_attempts": 1}


def _status_code(err: Exception) -> int:
    response = getattr(err, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def find_job(sm: Any, name: str) -> dict[str, Any] | None:
    """The job's description, or None when SageMaker has no job of that name."""
    from botocore.exceptions import ClientError

    try:
        return sm.describe_training_job(TrainingJobName=name)
    except ClientError as err:
        if error_code(err) in ("ValidationException", "ResourceNotFound"):
            return None
        raise


def job_token(sm: Any, description: Mapping[str, Any]) -> str | None:
    """The job's aiops:client-token tag (None when it has none: not created by aiops)."""
    arn = description.get("TrainingJobArn")
    tags = description.get("Tags")
    if tags is None and arn:
        tags = sm.list_tags(ResourceArn=arn).get("Tags", [])
    return next((t["Value"] for t in tags or [] if t["Key"] == CLIENT_TOKEN_TAG), None)


def _adopt(sm: Any, request: Mapping[str, Any], description: Mapping[str, Any]) -> str:
    """ "found" when the existing job carries this request's token; otherwise refuse it (exit 2)."""
    name = request["TrainingJobName"]
    token = next(t["Value"] for t in request["Tags"] if t["Key"] == CLIENT_TOKEN_TAG)
    if job_token(sm, description) == token:
        return "found"
    raise UsageError(
        f"a SageMaker training job named {name!r} already exists and was not created by this request "
        f"(its {CLIENT_TOKEN_TAG} tag differs); choose another --job-name."
    )


def create_once(
    create_client: Any,
    describe_client: Any,
    request: Mapping[str, Any],
    *,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Create the job exactly once: after any ambiguous failure, look before trying again.

    Returns "created" or "found" (an earlier attempt that looked failed had created it: the job
    carries this request's client token). A job of that name without the token is never adopted.
    """
    from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

    name = request["TrainingJobName"]
    for attempt in range(attempts):
        try:
            create_client.create_training_job(**request)
            return "created"
        except ClientError as err:
            code = error_code(err)
            if code == "ResourceInUse":
                found = find_job(describe_client, name)
                if found is not None:
                    return _adopt(describe_client, request, found)
            if code not in RETRYABLE_CODES and _status_code(err) < 500:
                raise
        except (ReadTimeoutError, ConnectionClosedError):
            pass
        found = find_job(describe_client, name)
        if found is not None:
            return _adopt(describe_client, request, found)
        if attempt + 1 < attempts:
            sleep(min(20.0, 0.5 * 2**attempt))
    raise AiopsError(
        f"CreateTrainingJob {name}: SageMaker kept failing after {attempts} attempts; try again later."
    )


def summarize(description: Mapping[str, Any]) -> JobSummary:
    training = description.get("TrainingTimeInSeconds")
    billable = description.get("BillableTimeInSeconds")
    saving = None
    if description.get("EnableManagedSpotTraining") and training and billable is not None:
        saving = round(100.0 * (1 - billable / training), 1)
    pool = description.get("WarmPoolStatus") or {}
    warm = (
        {
            "warm_pool_status": pool.get("Status"),
            "warm_pool_billable_seconds": pool.get("ResourceRetainedBillableTimeInSeconds"),
            "warm_pool_reused_by": pool.get("ReusedByJob"),
        }
        if pool
        else {}
    )
    return JobSummary(
        **warm,
        job_name=description.get("TrainingJobName"),
        status=description.get("TrainingJobStatus"),
        secondary_status=description.get("SecondaryStatus"),
        failure_reason=description.get("FailureReason"),
        model_artifact=(description.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
        training_seconds=training,
        billable_seconds=billable,
        spot_saving_percent=saving,
        arn=description.get("TrainingJobArn"),
    )


def resolve_pending(store: RunStore, record: RunRecord) -> RunRecord:
    """Settle a record left Pending by an interrupted create: the job exists with our client token
    (refreshed from SageMaker), exists without it (marked, never adopted), or never reached SageMaker
    (NotCreated). Any other record is returned as is."""
    if record.status != PENDING or not record.remote:
        return record
    from aiops import aws

    sm = aws.client("sagemaker", record.region)
    name = record.job_name
    found = aws_call(f"describing {name}", lambda: find_job(sm, name))
    if found is None:
        if record.request is None:  # saved before the uploads finished: nothing was ever created
            record.update(status=NOT_CREATED, failure_reason="interrupted before CreateTrainingJob")
        else:
            record.update(
                status=NOT_CREATED,
                failure_reason="CreateTrainingJob never reached SageMaker; run the command again",
            )
        store.save(record)
        return record
    token = aws_call(f"reading the tags of {name}", lambda: job_token(sm, found))
    if token != record.client_token:
        record.update(
            status=NOT_CREATED,
            failure_reason=(
                f"a job named {name} exists on SageMaker but was not created by this request "
                f"(its {CLIENT_TOKEN_TAG} tag differs); it is not adopted"
            ),
        )
        store.save(record)
        return record
    record.create_outcome = "found"
    return refresh(store, record, found)


def refresh(store: RunStore, record: RunRecord, description: Mapping[str, Any]) -> RunRecord:
    """Fold a DescribeTrainingJob answer into the local record of a remote job."""
    summary = summarize(description)
    record.update(
        status=summary.status,
        failure_reason=summary.failure_reason,
        remote_summary=summary,
        final_metrics={m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])},
    )
    if summary.model_artifact:
        record.artifacts.model_s3 = summary.model_artifact
    store.save(record)
    return record


def aws_call(action: str, fn: Callable[[], Any]) -> Any:
    from aiops import aws

    with aws.translate_errors(action):
        return fn()


def describe(job_name: str, region: str | None) -> dict[str, Any]:
    from aiops import aws

    sm = aws.client("sagemaker", region)
    return aws_call(f"describing {job_name}", lambda: sm.describe_training_job(TrainingJobName=job_name))


def stop(job_name: str, region: str | None) -> None:
    from aiops import aws

    sm = aws.client("sagemaker", region)
    aws_call(f"stopping {job_name}", lambda: sm.stop_training_job(TrainingJobName=job_name))


def download(s3: Any, uri: str, dest: Path) -> Path:
    bucket, _, key = uri[len("s3://") :].partition("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, key, str(dest))
    return dest


def download_model(record: RunRecord, dest: Path) -> Path:
    from aiops import aws

    uri = record.artifacts.model_s3
    if not uri:
        raise AiopsError(f"{record.job_name} has no model artifact (status {record.status}).")
    s3 = aws.client("s3", record.region)
    return aws_call(f"downloading {uri}", lambda: download(s3, uri, dest))
