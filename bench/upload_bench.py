"""Channel uploads against a moto server behind a proxy that adds a region's latency per request.

Goal (issue 29): for many small files, the submission's upload path (`aiops.s3objects.UploadBatch`,
through `training.uploads.upload_channel`) >= 5x the serial path it replaced, and no slower than
`aws s3 sync`'s default of 10 concurrent requests (done here by 10 boto3 threads); for one large
file, at least as fast as the serial path.

    python bench/upload_bench.py                       # 2,000 x 4 KiB and 1 x 1 GiB, 20 ms a request
    python bench/upload_bench.py --files 200 --big-mib 32   # a quick look

Writes bench/results/upload.{md,json}. Three processes: moto (`python -m moto.server`), the proxy
(this script with --proxy) and the clients (this process), so the clients' threads do not share an
interpreter with the server's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BUCKET = "bench-bucket"
SYNC_CONCURRENCY = 10  # the AWS CLI's default max_concurrent_requests
PROCESSES = ("client", "moto", "proxy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The proxy: every request waits `latency` seconds, then goes to moto on a kept-alive connection


def serve_proxy(port: int, upstream: int, latency: float) -> None:
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            time.sleep(latency)  # one round trip to a region
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=600)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one when None), every thread included."""
    if pid is None:
        usage = os.times()
        return usage.user + usage.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"a bench server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


# ---------------------------------------------------------------------------------------------
# The three ways to upload a channel folder


def serial_upload_channel(s3: Any, bucket: str, name: str, source: Path) -> None:
    """The serial path `upload_channel` replaced, kept as it was: hash every file, then
    `upload_once` one file after another (each a boto3 upload_file), then the manifest."""
    from aiops.training.uploads import channel_manifest, channel_selection

    from aiops.s3objects import encryption_args, object_exists, upload_once
    from aiops.stack import LAYOUT as layout

    kms_key = None
    selection = channel_selection(source, name=name)
    manifest = channel_manifest(source, selection=selection)
    prefix = layout.channel_prefix(manifest["sha256"])
    manifest_key = layout.channel_manifest_key(manifest["sha256"])
    if object_exists(s3, bucket, manifest_key):
        return
    for rel in manifest["files"]:
        upload_once(s3, bucket, f"{prefix}{rel}", selection.entries[rel], kms_key=kms_key, check=False)
    s3.put_object(
        Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode(), **encryption_args(kms_key)
    )


def threads_sync(s3: Any, bucket: str, name: str, source: Path) -> None:
    """`aws s3 sync`'s default: 10 requests at once (PutObject per small file; a large file in 8 MiB
    parts, 10 at a time), no hashing, no manifest."""
    from boto3.s3.transfer import TransferConfig

    sizes = {p: p.stat().st_size for p in sorted(source.rglob("*")) if p.is_file()}
    small = [p for p, size in sizes.items() if size < 8 * 1024 * 1024]
    large = [p for p, size in sizes.items() if size >= 8 * 1024 * 1024]

    def put(path: Path) -> None:
        with open(path, "rb") as handle:
            key = f"sync/{name}/{path.relative_to(source).as_posix()}"
            s3.put_object(Bucket=bucket, Key=key, Body=handle)

    with ThreadPoolExecutor(SYNC_CONCURRENCY) as pool:
        list(pool.map(put, small))
    config = TransferConfig(
        multipart_threshold=8 * 1024 * 1024,
        multipart_chunksize=8 * 1024 * 1024,
        max_concurrency=SYNC_CONCURRENCY,
    )
    for path in large:
        s3.upload_file(str(path), bucket, f"sync/{name}/{path.relative_to(source).as_posix()}", Config=config)


def batch_upload_channel(s3: Any, bucket: str, name: str, source: Path) -> None:
    from aiops.training.uploads import upload_channel

    upload_channel(s3, bucket, name, source)


WAYS: dict[str, tuple[str, Callable[..., None]]] = {
    "serial": ("serial path it replaced (upload_once per file)", serial_upload_channel),
    "threads": (f"{SYNC_CONCURRENCY} boto3 threads (`aws s3 sync` default)", threads_sync),
    "batch": ("upload_channel (one UploadBatch)", batch_upload_channel),
}


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="small files in the first channel")
    parser.add_argument("--file-kib", type=int, default=4, help="size of each small file")
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the one large file (0: skip)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each way, interleaved (medians reported)"
    )
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added to every request by the proxy")
    parser.add_argument("--proxy", nargs=2, type=int, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        return serve_proxy(args.proxy[0], args.proxy[1], args.latency_ms / 1000)

    import boto3
    from botocore.config import Config

    from aiops import aws

    moto_port, proxy_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="aiops-upload-bench-"))
    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)]
    servers = [subprocess.Popen(moto, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    servers.append(
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--proxy",
                str(proxy_port),
                str(moto_port),
                "--latency-ms",
                str(args.latency_ms),
            ]
        )
    )
    try:
        wait_listening(moto_port, servers[0])
        wait_listening(proxy_port, servers[1])
        endpoint = f"http://127.0.0.1:{proxy_port}"
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            }
        )

        def client(way: str) -> Any:
            if way == "threads":  # what the AWS CLI makes: a pool the size of its concurrency
                return boto3.client("s3", config=Config(max_pool_connections=SYNC_CONCURRENCY))
            return aws.client("s3", "us-east-1")  # what `aiops train --remote` makes

        small = work / "small"
        small.mkdir()
        for i in range(args.files):
            folder = small / f"part-{i // 500:02d}"
            folder.mkdir(exist_ok=True)
            (folder / f"{i:06d}.bin").write_bytes(os.urandom(args.file_kib * 1024))
        cases = [("small", f"{args.files:,} files of {args.file_kib} KiB", small)]
        if args.big_mib:
            big = work / "big"
            big.mkdir()
            with open(big / "weights.bin", "wb") as handle:
                handle.writelines(os.urandom(1024 * 1024) for _ in range(args.big_mib))
            cases.append(("big", f"1 file of {args.big_mib:,} MiB", big))

        def reset() -> None:  # an empty moto between runs: nothing is skipped, memory is freed
            urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{moto_port}/moto-api/reset", method="POST")
            ).read()
            boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}").create_bucket(Bucket=BUCKET)

        load_before = os.getloadavg()[0]
        from aiops.training.uploads import channel_manifest

        rows: dict[str, dict[str, Any]] = {}
        for case, _, folder in cases:
            started = time.perf_counter()
            channel_manifest(folder)
            rows[case] = {
                "hashing_seconds": round(time.perf_counter() - started, 3),
                **{way: [] for way in WAYS},
                **{f"{way}_cpu_seconds": [] for way in WAYS},
                **{f"{way}_load": [] for way in WAYS},
            }
        ways = list(WAYS)
        for round_ in range(args.rounds):
            for case, _, folder in cases:
                # each round starts with another way: none always runs first, on a fresher machine
                for way in ways[round_ % len(ways) :] + ways[: round_ % len(ways)]:
                    reset()
                    s3 = client(way)
                    cpu = [cpu_seconds(), *(cpu_seconds(proc.pid) for proc in servers)]
                    started = time.perf_counter()
                    WAYS[way][1](s3, BUCKET, case, folder)
                    rows[case][way].append(round(time.perf_counter() - started, 3))
                    spent = [
                        after - before
                        for before, after in zip(
                            cpu, [cpu_seconds(), *(cpu_seconds(proc.pid) for proc in servers)], strict=True
                        )
                    ]
                    named = zip(PROCESSES, spent, strict=True)
                    rows[case][f"{way}_cpu_seconds"].append({name: round(sec, 2) for name, sec in named})
                    rows[case][f"{way}_load"].append(round(os.getloadavg()[0], 2))
                    print(
                        f"round {round_ + 1} {case} {way}: {rows[case][way][-1]:.2f} s, "
                        f"CPU s {rows[case][f'{way}_cpu_seconds'][-1]}",
                        flush=True,
                    )
        for row in rows.values():
            for way in WAYS:
                row[f"{way}_median"] = statistics.median(row[way])
                row[f"{way}_cpu_median"] = {
                    name: round(statistics.median(run[name] for run in row[f"{way}_cpu_seconds"]), 2)
                    for name in PROCESSES
                }
        load_after = os.getloadavg()[0]
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(work)], check=False)

    command = (
        f"python bench/upload_bench.py --files {args.files} --file-kib {args.file_kib} "
        f"--big-mib {args.big_mib} --rounds {args.rounds} --latency-ms {args.latency_ms:g}"
    )
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": command,
        "latency_ms": args.latency_ms,
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "cases": {case: {"what": what, **rows[case]} for case, what, _ in cases},
        "goal": (
            "small files: batch >= 5x serial and no slower than the 10 threads; "
            "large file: no slower than serial"
        ),
    }
    md = [
        "# Channel uploads through a proxy that adds a region's latency (bench/upload_bench.py)",
        "",
        (
            f"Machine: {result['machine']}; {args.rounds} interleaved rounds (median, then every run), "
            f"moto server (its own process) behind a proxy (another) that adds {args.latency_ms:g} ms "
            f"to every request. 1-minute load average {load_before:.1f} before, {load_after:.1f} after "
            f"(other work shares the 2 cores: the times scatter). Command: `{command}`."
        ),
        "",
        "| channel | "
        + " | ".join(label for label, _ in WAYS.values())
        + " | batch vs serial | batch vs threads |",
        "|---|" + "---|" * (len(WAYS) + 2),
    ]
    for case, what, _ in cases:
        row = rows[case]
        times = [f"{row[f'{way}_median']:.2f} s ({', '.join(f'{t:.1f}' for t in row[way])})" for way in WAYS]
        md.append(
            f"| {what} | " + " | ".join(times) + f" | {row['serial_median'] / row['batch_median']:.1f}x"
            f" | {row['threads_median'] / row['batch_median']:.2f}x |"
        )

    def verdict(ratio: float, goal: float) -> str:
        return f"{ratio:.2f}x (goal >= {goal:g}x: {'met' if ratio >= goal else 'MISSED'})"

    small_row = rows["small"]
    small_batch = small_row["batch_median"]
    verdicts = [
        (
            f"small files: {verdict(small_row['serial_median'] / small_batch, 5)} the serial path, "
            f"{verdict(small_row['threads_median'] / small_batch, 1)} the {SYNC_CONCURRENCY} threads"
        )
    ]
    if "big" in rows:
        big_row = rows["big"]
        big_ratio = big_row["serial_median"] / big_row["batch_median"]
        verdicts.append(f"large file: {verdict(big_ratio, 1)} the serial path")
    result["verdicts"] = verdicts
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upload.json").write_text(json.dumps(result, indent=2) + "\n")
    md += [
        "",
        "Speed of the batch (ratios of the medians): " + "; ".join(verdicts) + ". A shared machine: a ratio "
        "near 1 is within the noise.",
        "",
        "The serial and batch columns are the whole channel upload: hashing every file for the manifest "
        "("
        + ", ".join(f"{rows[c]['hashing_seconds']:.2f} s for the {c} channel" for c, _, _ in cases)
        + ", measured alone), a HEAD for the manifest, the files, then the manifest; the threads column "
        'only sends the files. "batch vs threads" above 1 means the batch was faster.',
        "",
        "CPU seconds per run (medians over the rounds; every run in upload.json, with the load average "
        "after it). Two bounds no client can pass: the three processes share the cores with each other "
        "and with other work, so a run takes at least all their CPU seconds over the cores; and moto is "
        "one Python process that answers every request under one interpreter lock, so a run takes at "
        "least about moto's CPU seconds (hashing releases the lock, so moto can exceed 100% on large "
        "bodies). 'moto busy' is moto's CPU seconds over the wall time: near 100%, moto was the bottleneck.",
        "",
        f"| channel | way | client | moto | proxy | all | all / {os.cpu_count()} cores | wall | moto busy "
        "| load average after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, what, _ in cases:
        row = rows[case]
        for way in WAYS:
            cpu = row[f"{way}_cpu_median"]
            total = sum(cpu.values())
            md.append(
                f"| {what} | {way} | {cpu['client']:.2f} | {cpu['moto']:.2f} | {cpu['proxy']:.2f} | "
                f"{total:.2f} | {total / (os.cpu_count() or 1):.2f} s | {row[f'{way}_median']:.2f} s | "
                f"{cpu['moto'] / row[f'{way}_median']:.0%} | {statistics.median(row[f'{way}_load']):.1f} |"
            )
    md += ["", "`" + command + "` regenerates this file."]
    (RESULTS / "upload.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
