"""What a SageMaker submission sends before its request: the code bundle and every local channel,
content-addressed, in one upload batch (`stage`), and the image it names (`image_uri`).
`aiops train --remote` and `aiops tune --remote` both stage this way; a capacity-aware launch stages
once and submits every attempt with the same uploads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiops.training.remote_jobs import aws_call

if TYPE_CHECKING:
    from aiops.training.bundle import Bundle
    from aiops.training.cluster import ProcessPlan
    from aiops.training.jobs import JobEvents, PreparedJob
    from aiops.training.remote_request import RemoteOptions

    from aiops.s3objects import UploadResult


@dataclass(frozen=True)
class Staged:
    """The code bundle and where it and every channel are in S3 (channels already in S3 as given)."""

    code: Bundle
    code_upload: UploadResult
    channel_uris: dict[str, str]
    uploaded_bytes: int  # what this staging sent (0 when everything was there already)


def stage(job: PreparedJob, code: Bundle, options: RemoteOptions, events: JobEvents) -> Staged:
    """Upload the bundle and the job's local channels to the options' bucket, with their KMS key.
    One batch for the whole submission: the bundle and every channel share its request bound and its
    progress line (`events.upload`), and a channel's files start while the next one is hashed."""
    from aiops.training import uploads

    from aiops import aws
    from aiops.s3objects import UploadBatch

    bucket, region = options.access.bucket, options.region
    assert bucket, "remote_request.validate refuses a submission without a bucket"

    def upload() -> Staged:
        s3 = aws.client("s3", region)
        with UploadBatch(s3, bucket, kms_key=options.access.kms_key_id, progress=events.upload) as batch:
            code_upload = uploads.upload_bundle(s3, bucket, code.data, code.sha256, batch=batch)
            channels = {
                name: uploads.upload_channel(
                    s3,
                    bucket,
                    name,
                    path,
                    batch=batch,
                    selection=job.channel_selections.get(name),
                    follow_symlinks=job.config.follow_symlinks,
                )
                for name, path in job.channels.items()
            }
        uploaded = code_upload.uploaded_bytes + sum(c.uploaded_bytes for c in channels.values())
        channel_uris = {**{name: c.uri for name, c in channels.items()}, **job.s3_channels}
        return Staged(code, code_upload, channel_uris, uploaded)

    return aws_call(f"uploading {job.job_name}", upload)


def image_uri(options: RemoteOptions, cache_dir: Path) -> str:
    """The training image: the one given, else the framework's DLC for the type and region."""
    from aiops.training import images

    image = options.image
    if image.training_image:
        return image.training_image
    assert image.framework_version and image.py_version, "resolve_options decides the versions"
    return images.training_image_uri(
        image.framework,
        region=options.region,
        version=image.framework_version,
        py_version=image.py_version,
        instance_type=options.instance_type,
        cache_dir=cache_dir,
    )


def plan_processes(job: PreparedJob, options: RemoteOptions) -> ProcessPlan:
    """Processes per host of the job on the options' instance type (`cluster.plan_processes`)."""
    from aiops.training import cluster

    return cluster.plan_processes(
        job.distribution,
        options.instance_type,
        options.compute.instance_count,
        job.config.nproc,
        entry_point=job.entry_point,
        framework_version=options.image.framework_version,
        image_uri=options.image.training_image,
    )


def job_request(
    job: PreparedJob, staged: Staged, options: RemoteOptions, *, image_uri: str, processes: ProcessPlan
) -> dict[str, Any]:
    """The CreateTrainingJob request of a staged job: `aiops train --remote`'s, and the one every
    trial of `aiops tune --remote` is made from."""
    from aiops.training.remote_request import build_request

    return build_request(
        job_name=job.job_name,
        entry_point=job.entry_point,
        hyperparameters=job.config.hyperparameters,
        channel_uris=staged.channel_uris,
        submit_directory=staged.code_upload.uri,
        image_uri=image_uri,
        options=options,
        nproc=processes.processes_per_host,
        metric_definitions=job.config.metric_definitions,
        input_modes=job.config.input_modes,
        channel_sharding=job.config.channel_sharding,
        distribution=job.distribution,
        environment=job.config.script_environment(),
    )
