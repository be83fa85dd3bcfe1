"""Remote submission against a local moto server: bytes uploaded and time to a job accepted.

Goal (issue 5): a second submission of unchanged code uploads 0 bytes; command -> job accepted,
excluding upload, <= 1.5 s; the SageMaker SDK is imported only to resolve an image (cached after).

    python bench/remote_submit.py          # writes bench/results/remote_submit.{md,json}
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiops.runs import RunRecord, RunStore
from aiops.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="aiops-bench-"))
    src = work / "src"
    src.mkdir()
    (src / "train.py").write_text("print('hello')\n")
    (src / "model.py").write_text("X = 1\n" * 2000)
    data = work / "data"
    data.mkdir()
    (data / "rows.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # a 20 MB channel: multipart upload
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AIOPS_HOME": str(work / "home"),
        "AIOPS_AWS__ROLE_ARN": "arn:aws:iam::123456789012:role/bench",
        "AIOPS_AWS__BUCKET": "bench-bucket",
    }
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ).create_bucket(Bucket="bench-bucket")
    command = [
        sys.executable,
        "-m",
        "aiops.cli.app",
        "train",
        "train.py",
        "--source-dir",
        str(src),
        "--remote",
        "--channel",
        f"train={data}",
        "--no-wait",
        "--json",
    ]

    store = RunStore(Settings(home=work / "home").runs_dir)

    def submit() -> tuple[float, RunRecord]:
        started = time.perf_counter()
        out = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        summary = json.loads(out.stdout)
        record = store.load(summary["job_name"])  # the typed run record, read through the run store
        return wall, record

    first_wall, first = submit()
    later = [submit() for _ in range(RUNS)]
    server.stop()
    walls = [w for w, _ in later]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "first": {
            "wall_seconds": round(first_wall, 3),
            "uploaded_bytes": first.uploaded_bytes,
            "create_seconds": first.accepted_seconds,
        },
        "repeat": {
            "runs": RUNS,
            "uploaded_bytes": [r.uploaded_bytes for _, r in later],
            "wall_seconds_median": round(statistics.median(walls), 3),
            "wall_seconds_all": [round(w, 3) for w in walls],
            "create_seconds_median": round(statistics.median(r.accepted_seconds for _, r in later), 3),
        },
        "goal": "repeat uploads 0 bytes; command to job accepted <= 1.5 s",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "remote_submit.json").write_text(json.dumps(result, indent=2))
    md = [
        "# Remote submission against moto (bench/remote_submit.py)",
        "",
        f"Machine: {result['machine']}. Code: 2 files; channel: one 20 MB file. {RUNS} repeat submissions.",
        "",
        "| submission | uploaded bytes | command wall (s) | CreateTrainingJob (s) |",
        "|---|---|---|---|",
        f"| first (uploads code + channel, resolves the image) | {first.uploaded_bytes} | {first_wall:.3f} | "
        f"{first.accepted_seconds:.3f} |",
        f"| repeat, unchanged (median of {RUNS}) | {max(result['repeat']['uploaded_bytes'])} | "
        f"{result['repeat']['wall_seconds_median']:.3f} | {result['repeat']['create_seconds_median']:.3f} |",
        "",
        "The repeat wall time is the whole command (Python start, hashing, HEAD checks, create) with nothing "
        "to upload, i.e. command to job accepted excluding upload. Goal: <= 1.5 s, 0 bytes.",
    ]
    (RESULTS / "remote_submit.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
