"""Issue 14, point 5: the FSDP language-model example as a 2-instance spot job on the emulated AWS.

`aiops train --remote` of training/examples/lm with 2 instances x 1 process (torch_distributed,
torchrun on each host, gloo between the hosts' network namespaces), interrupted once as a spot
reclaim right after its first checkpoint reaches S3, restarted from the synced DCP checkpoint
(the union of both hosts' shards), finished; then `aiops deploy --model job:NAME` (the job's
model.tar.gz repacked with its code) and an invocation of the endpoint by name generates text.

Kept cheap (a tiny model, a few steps): the same fixtures as the journey (moto with IAM enforced,
the stand-in engine, the platform emulator), nothing else. Measured on the shared 2-core machine
(load ~6; AIOPS_TEST_CPU_LOG): 60-66 s of CPU in all (the test's process and every child, moto and
the endpoint's `aiops serve` included; the training job ~44 s of it: 2 attempts x 2 hosts x
torchrun + its worker, each importing torch), 80-150 s wall. `aiops train --remote --no-wait`: following
the job is the digits journey's part.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from journey import REPO_ROOT, stack_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e-lm-spot")]

LM = REPO_ROOT / "training" / "examples" / "lm"
STEPS = 10
# A tiny model: the job is about the platform (rendezvous, spot, DCP resume, packaging), not the model.
# The reclaim comes when the emulator sees the first checkpoint (step 2), a moment after it is written;
# the 8 steps (and 4 checkpoint saves) after it are the margin that keeps the stop mid-way (measured:
# the hosts stop at step 2 or 3, the step they are at when SIGTERM lands).
HPS = {
    "steps": STEPS,
    "d-model": 16,
    "n-layers": 1,
    "n-heads": 2,
    "seq-len": 16,
    "batch-size": 4,
    "log-every": 1,
    "eval-every": 5,
    "eval-batches": 1,
    "checkpoint-every": 2,
    "warmup-steps": 1,
    "threads": 1,
    "seed": 3,
}


@pytest.fixture
def lm_data(tmp_path: Path) -> Path:
    from aiops.training.examples.lm.prepare import write_channels

    data = tmp_path / "lm-data"
    write_channels(data, train_bytes=40_000, test_bytes=8_000, shard_tokens=1 << 13, seed=0)
    return data


def _members(journey, uri: str) -> dict[str, bytes]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    body = journey.account.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar if m.isfile()}


def test_two_instance_lm_spot_job_resumes_from_dcp_and_serves(journey, lm_data: Path) -> None:
    journey.write_stack(stack_config())
    outputs = journey.apply(journey.preview())
    journey.platform.spot_interruptions = 1
    train = journey.aiops(
        "train",
        "train.py",
        "--source-dir",
        str(LM),
        "--channel",
        f"train={lm_data / 'train'}",
        "--channel",
        f"test={lm_data / 'test'}",
        *[a for k, v in HPS.items() for a in ("--hp", f"{k}={v}")],
        "--remote",
        "--instance-count",
        "2",
        "--spot",
        "--instance-type",
        "ml.g5.xlarge",
        "--distribution",
        "torch_distributed",
        "--job-name",
        "lm-spot",
        "--no-wait",
    )  # following: the digits journey
    assert train.returncode == 0, journey.log()[-6000:]
    job = journey.platform.wait_job("lm-spot")
    assert job.status == "Completed" and job.interrupted == 1 and job.attempts == 2, journey.log()[-4000:]
    # one process per host (ml.g5.xlarge: 1 GPU), a world of 2 across the hosts
    assert job.request["HyperParameters"]["sagemaker_mpi_num_of_processes_per_host"] == "1"
    assert job.request["ResourceConfig"]["InstanceCount"] == 2

    # the synced checkpoint prefix holds the union: host 1's metadata and shard, host 2's shard
    bucket = outputs["bucket"]
    prefix = "checkpoints/lm-spot/"
    keys = {
        o["Key"][len(prefix) :]
        for o in journey.account.client("s3")
        .list_objects_v2(Bucket=bucket, Prefix=prefix)
        .get("Contents", [])
    }
    steps = sorted({int(m.group(1)) for k in keys if (m := re.match(r"step-(\d+)/", k))})
    assert steps and steps[-1] == STEPS, keys

    def complete(step: int) -> bool:
        return {f"step-{step}/.metadata", f"step-{step}/__0_0.distcp", f"step-{step}/__1_0.distcp"} <= keys

    # the last one whole. (An older step may lack a shard: the sync uploads new files and never deletes,
    # and a host can rotate a step away before its shard was synced; resuming skips incomplete steps.)
    assert complete(STEPS), keys

    # the second attempt resumed from the first one's last checkpoint and trained only the rest
    log = "\n".join(line for name, line in job.lines if name == "algo-1")
    resumed = re.search(rf"resuming from \S+step-(\d+): step (\d+) of {STEPS}", log)
    assert resumed and resumed.group(1) == resumed.group(2), log[-3000:]
    start = int(resumed.group(1))
    assert complete(start), keys  # resumed from a checkpoint whole in S3: the union of both hosts' shards
    print(f"spot reclaim: stopped and resumed at step {start} of {STEPS}")
    assert 0 < start < STEPS
    first, second = log.split(resumed.group(0), 1)
    before = [int(s) for s in re.findall(r"step=(\d+); train_loss=", first)]
    after = [int(s) for s in re.findall(r"step=(\d+); train_loss=", second)]
    assert before and before[-1] >= start  # the interrupted attempt got past the checkpoint it left
    assert after == list(range(start + 1, STEPS + 1)), (
        before,
        after,
    )  # no step trained twice after the resume
    assert "final_test_perplexity=" in log

    # the model package: the consolidated weights, their config and the handler's code
    package = _members(journey, job.model_artifact)
    assert {"model.safetensors", "config.json", "code/inference.py", "code/lm_model.py"} <= set(package)
    config = json.loads(package["config.json"])
    assert config["trained_steps"] == STEPS and config["d_model"] == HPS["d-model"]

    # aiops deploy --model job:NAME, then invoke the endpoint by name
    journey.set_config("aiops:endpoint.enabled", True)
    model_uri = journey.resolve_model("job:lm-spot")
    assert model_uri.startswith(f"s3://{bucket}/models/sha256/")
    assert {"code/train.py", "code/lm_data.py", "code/inference.py", "model.safetensors"} <= set(
        _members(journey, model_uri)
    )
    journey.set_config("aiops:endpoint.modelDataUrl", model_uri)
    journey.apply(journey.preview())
    runtime = journey.account.client("sagemaker-runtime", endpoint=journey.platform.url)
    answer = runtime.invoke_endpoint(
        EndpointName=journey.outputs["endpointName"],
        ContentType="application/json",
        Accept="application/json",
        Body=json.dumps({"prompt": "def ", "max_new_tokens": 8}),
    )
    body = json.loads(answer["Body"].read())
    assert (
        body["prompt"] == "def " and 1 <= body["new_tokens"] <= 8 and isinstance(body["generated_text"], str)
    )
