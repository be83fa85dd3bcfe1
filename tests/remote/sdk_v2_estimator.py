"""The SageMaker SDK v2 `HuggingFace` estimator's CreateTrainingJob requests, caught as boto3 is about
to send them: the oracle of tests/remote/test_huggingface_estimator_oracle.py.

Run in its own process, with the SDK v2 folder (`make install`: `.venv/sdk-v2`, from
requirements/oracles-sdk-v2.lock) first on PYTHONPATH: v2's `sagemaker` is a regular package that
cannot share a process with the `sagemaker.core` namespace aiops imports. Reads a JSON list of jobs
on stdin, each {"estimator": HuggingFace keyword arguments, "inputs": {channel: s3 uri},
"job_name": ...}, and writes the JSON list of their requests to the file named by its argument
(the SDK logs to stdout). Nothing reaches the network: the
request is taken at `before-parameter-build`, and the SDK's telemetry call is switched off.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any


class _Sent(Exception):
    pass


def requests(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import boto3
    import sagemaker.telemetry.telemetry_logging as telemetry
    from sagemaker.huggingface import HuggingFace
    from sagemaker.session import Session

    telemetry._send_telemetry_request = lambda *args, **kwargs: None
    boto = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    caught: list[dict[str, Any]] = []

    def catch(params: dict[str, Any], **_: Any) -> None:
        caught.append(copy.deepcopy(params))
        raise _Sent

    boto.events.register("before-parameter-build.sagemaker.CreateTrainingJob", catch)
    session = Session(boto_session=boto, default_bucket="unused-default-bucket")
    for job in jobs:
        estimator = HuggingFace(sagemaker_session=session, **job["estimator"])
        try:
            estimator.fit(job["inputs"], job_name=job["job_name"], wait=False, logs=False)
        except _Sent:
            pass
        else:
            raise AssertionError("the estimator sent no CreateTrainingJob")
    return caught


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(requests(json.load(sys.stdin))))
