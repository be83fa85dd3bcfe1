"""The hosts of one emulated training job: separate process trees that reach each other by name.

SageMaker runs each host of a job as a container named ``algo-N`` on a private network where the
names resolve. Here (as root, no Docker) each job gets one network namespace holding only a
loopback device (``unshare --net``): inside it ``algo-1`` is 127.0.0.1, ``algo-2`` 127.0.0.2, ...,
and port 7777 (MASTER_PORT) belongs to that job alone, so jobs of parallel test workers never
collide. Each host is a process tree of its own in that namespace, with its own mount and UTS
namespaces: its hostname is ``algo-N`` (what gloo advertises to its peers), ``/etc/hosts`` maps
the job's hosts, and its own folder is mounted at ``/opt/ml`` (under a private tmpfs on ``/opt``),
so the script sees the real container paths. Nothing but the job's own hosts is reachable, but
for AWS: a job without EnableNetworkIsolation reaches the platform (AWS's APIs, and its container
credentials endpoint) at ``127.0.0.1:AWS_PORT`` inside the namespace, a small forwarder there
passing each connection to the platform's Unix socket (a file, reachable from any network
namespace). The emulator, outside, does every call SageMaker makes for the job.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HOLDER = (
    "import subprocess, sys\n"
    "subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)
# $1 hostname, $2 the host's /opt/ml, $3 hosts file; then the command
HOST_SCRIPT = (
    'set -e; hostname "$1"; mount --bind "$3" /etc/hosts; '
    'mount -t tmpfs -o size=1m,mode=755 aiops-e2e-opt /opt; mkdir /opt/ml; mount --bind "$2" /opt/ml; '
    'cd /opt/ml/code; shift 3; exec "$@"'
)


AWS_PORT = 9080  # where a job's script reaches AWS, inside its namespace
# $1 port, $2 the platform's Unix socket: each connection on 127.0.0.1:$1 is piped to the socket
FORWARDER = (
    "import socket, sys, threading\n"
    "port, path = int(sys.argv[1]), sys.argv[2]\n"
    "def pipe(a, b):\n"
    "    try:\n"
    "        while data := a.recv(65536):\n"
    "            b.sendall(data)\n"
    "    except OSError:\n"
    "        pass\n"
    "    finally:\n"
    "        for s in (a, b):\n"
    "            try: s.shutdown(socket.SHUT_RDWR)\n"
    "            except OSError: pass\n"
    "def serve(conn):\n"
    "    up = socket.socket(socket.AF_UNIX)\n"
    "    up.connect(path)\n"
    "    threading.Thread(target=pipe, args=(conn, up), daemon=True).start()\n"
    "    pipe(up, conn)\n"
    "    conn.close(); up.close()\n"
    "server = socket.create_server(('127.0.0.1', port))\n"
    "print('ready', flush=True)\n"
    "threading.Thread(target=lambda: sys.stdin.read() or server.close(), daemon=True).start()\n"
    "while True:\n"
    "    try:\n"
    "        conn, _ = server.accept()\n"
    "    except OSError:\n"
    "        break\n"
    "    threading.Thread(target=serve, args=(conn,), daemon=True).start()\n"
)


def unavailable_reason() -> str | None:
    """Why job namespaces cannot be made here, or None when they can."""
    for tool in ("unshare", "nsenter", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if os.geteuid() != 0:
        return "network/mount namespaces need root here (unshare --net --mount)"
    probe = subprocess.run(
        [
            "unshare",
            "--net",
            "--mount",
            "--uts",
            "--",
            "sh",
            "-c",
            "ip link set lo up && hostname algo-1 && mount -t tmpfs x /opt",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"unshare --net --mount --uts failed: {probe.stderr.strip() or probe.returncode}"
    return None


class JobNetwork:
    """One job's network namespace (held open by a small process) and its hosts file."""

    def __init__(self, hosts: list[str], workdir: Path) -> None:
        self.hosts = hosts
        self.hosts_file = workdir / "hosts"
        lines = ["127.0.0.1 localhost"] + [f"127.0.0.{i + 1} {h}" for i, h in enumerate(hosts)]
        self.hosts_file.write_text("\n".join(lines) + "\n")
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", sys.executable, "-c", HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self.holder.stdout.readline().strip()
        if ready != "ready":
            self.close()
            raise RuntimeError(f"the job's network namespace did not start (exit {self.holder.poll()})")

    def reach_aws(self, socket_path: str) -> None:
        """127.0.0.1:AWS_PORT inside the namespace leads to the platform's Unix socket."""
        self.forwarder = subprocess.Popen(
            ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", sys.executable, "-c", FORWARDER]
            + [str(AWS_PORT), socket_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.forwarder.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the job's AWS forwarder did not start (exit {self.forwarder.poll()})")

    def spawn(self, host: str, host_dir: Path, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start one host: `argv` in /opt/ml/code of its own tree, output on one pipe (the log)."""
        cmd = [
            "nsenter",
            f"--net=/proc/{self.holder.pid}/ns/net",
            "--",
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            HOST_SCRIPT,
            "sh",
            host,
            str(host_dir),
            str(self.hosts_file),
            *argv,
        ]
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def close(self) -> None:
        forwarder = getattr(self, "forwarder", None)
        if forwarder is not None and forwarder.poll() is None:
            forwarder.kill()
            forwarder.wait()
        if self.holder.poll() is None:
            try:
                self.holder.stdin.close()
            except OSError:
                pass
            try:
                self.holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait()


def signal_tree(proc: subprocess.Popen, sig: int) -> None:
    """Signal a host's whole process tree (its session), as stopping its container would."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(proc: subprocess.Popen) -> None:
    signal_tree(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
