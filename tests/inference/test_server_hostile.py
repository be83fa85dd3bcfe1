"""Clients and handlers that try to wear `aiops serve` down, against real server processes.

Clients that never read a stream or a large answer, connections held up to max_connections,
streams answered whole that would run past the timeout or the payload cap, generators that block
for good, pipelined requests, and a supervisor killed with SIGKILL. The handler and the test meet
through files (a generator writes one in its ``finally``); every wait is on a condition with a
generous bound, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
from pathlib import Path

import pytest
from helpers import process_alive, run_orphaned_worker, wait_until

from .conftest import NO_TORCH_MODEL_FN, write_script

HOSTILE = (
    NO_TORCH_MODEL_FN
    + """
import json, os, threading, time
from pathlib import Path
aiops_stream = True
GATE = Path(os.environ["AIOPS_TEST_GATE"])

def input_fn(body, content_type):
    return json.loads(body)

def flood(tag):  # as fast as the network takes it: fills any client that does not read
    block = b"x" * 65536
    (GATE / (tag + ".started")).write_text("1")
    try:
        while True:
            yield block
    finally:
        (GATE / (tag + ".closed")).write_text("1")

def trickle(tag, n):  # n small chunks, a pause before each
    try:
        for _ in range(n):
            yield b"part;"
            time.sleep(0.2)
    finally:
        (GATE / (tag + ".closed")).write_text("1")

def blocked(tag):  # blocks for good after its first chunk: the stop can never reach it
    yield b"first;"
    (GATE / (tag + ".blocked")).write_text("1")
    threading.Event().wait()

def predict_fn(data, model):
    if data == "pid":
        return {"pid": os.getpid()}
    if data == "huge":  # a whole answer of 24 MB
        return "x" * (24 << 20)
    mode, tag = data["mode"], data["tag"]
    if mode == "flood":
        return flood(tag)
    if mode == "trickle":
        return trickle(tag, data["n"])
    if mode == "blocked":
        return blocked(tag)
    if mode == "echo":
        return data
"""
)


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    folder = tmp_path / "gate"
    folder.mkdir()
    return folder


@pytest.fixture
def hostile(start_server, tmp_path: Path, gate: Path):
    folder = tmp_path / "hostile"
    write_script(folder, HOSTILE)

    def start(*args: str, open_files: int | None = None, **env: str):
        return start_server(
            folder, "--workers", "1", *args, env={"AIOPS_TEST_GATE": str(gate), **env}, open_files=open_files
        )

    return start


def _post(path: str, body: bytes, *, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    return (
        f"POST {path} {version}\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _non_reader(port: int, request: bytes) -> socket.socket:
    """A client with a 4 KB receive buffer that sends ``request`` and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def _recv_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _answers(data: bytes) -> list[tuple[int, bytes]]:
    """The (status, body) of each Content-Length answer in ``data``, in order."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        out.append((int(head.split()[1]), rest[:length]))
        data = rest[length:]
    return out


def _aborted(sock: socket.socket) -> bool:
    """The server reset the connection (seen without reading what it sent)."""
    poller = select.poll()
    poller.register(sock, select.POLLERR | select.POLLHUP)
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


def _pid(server) -> int:
    return server.invoke(b'"pid"').json()["pid"]


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_streams_nobody_reads_end_at_the_timeout_and_never_lock_out_ping(hostile, gate):
    s = hostile("--timeout", "2", AIOPS_SERVE__MAX_CONNECTIONS="20")
    clients = [
        _non_reader(s.port, _post("/invocations", json.dumps({"mode": "flood", "tag": f"c{i}"}).encode()))
        for i in range(20)
    ]
    try:
        wait_until(lambda: all((gate / f"c{i}.started").exists() for i in range(20)), "20 streams started")
        # the worker holds its 20 connections: /ping still gets in and is answered
        assert s.request("GET", "/ping").status == 200
        # the timeout ends every stream although its client reads nothing: each generator is closed
        wait_until(
            lambda: all((gate / f"c{i}.closed").exists() for i in range(20)),
            f"every generator's finally\n{s.log()}",
            timeout=60,
        )
        wait_until(lambda: all(_aborted(c) for c in clients), "the 20 connections aborted", timeout=60)
        assert s.invoke(json.dumps({"mode": "echo", "tag": "after"}).encode()).status == 200
    finally:
        for c in clients:
            c.close()
    assert "timed out" in s.log()


def test_a_stalled_stream_makes_room_for_a_new_request_at_max_connections(hostile, gate):
    # timeout and write timeout far away: only the eviction of a stalled client can make room
    s = hostile(
        "--timeout", "300", AIOPS_SERVE__MAX_CONNECTIONS="4", AIOPS_SERVE__WRITE_TIMEOUT_SECONDS="300"
    )
    clients = [
        _non_reader(s.port, _post("/invocations", json.dumps({"mode": "flood", "tag": f"c{i}"}).encode()))
        for i in range(4)
    ]
    try:
        wait_until(lambda: all((gate / f"c{i}.started").exists() for i in range(4)), "4 streams started")

        def answered() -> bool:
            return s.invoke(json.dumps({"mode": "echo", "tag": "new"}).encode()).status == 200

        wait_until(answered, f"a request answered at max_connections\n{s.log()}", timeout=60, interval=0.2)
        wait_until(
            lambda: any((gate / f"c{i}.closed").exists() for i in range(4)), "an evicted stream's finally"
        )
    finally:
        for c in clients:
            c.close()


def test_a_whole_answer_nobody_reads_is_aborted_after_the_write_timeout(hostile):
    s = hostile(AIOPS_SERVE__WRITE_TIMEOUT_SECONDS="1")
    client = _non_reader(s.port, _post("/invocations", b'"huge"'))
    try:
        wait_until(lambda: _aborted(client), f"the stalled answer aborted\n{s.log()}", timeout=60)
    finally:
        client.close()
    assert "write_timeout_seconds" in s.log()
    assert s.request("GET", "/ping").status == 200


@pytest.mark.parametrize("route", ["invoke-endpoint", "http/1.0"])
def test_a_stream_answered_whole_keeps_the_timeout_and_the_payload_cap(hostile, gate, route):
    s = hostile("--timeout", "1", SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    path, version = (
        ("/endpoints/x/invocations", "HTTP/1.1")
        if route == "invoke-endpoint"
        else ("/invocations", "HTTP/1.0")
    )

    def exchange(body: dict) -> tuple[int, dict]:
        sock = socket.create_connection(("127.0.0.1", s.port))
        with sock:
            sock.sendall(
                _post(path, json.dumps(body).encode(), version=version, extra="Connection: close\r\n")
            )
            head, _, payload = _recv_until_closed(sock).partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)

    # 30 chunks 0.2 s apart: 6 s, far past the 1 s timeout
    status, answer = exchange({"mode": "trickle", "tag": "slow", "n": 30})
    assert status == 504 and "did not answer within 1 s" in answer["error"], answer
    wait_until(lambda: (gate / "slow.closed").exists(), "the slow generator's finally")
    # an endless stream of 64 KiB chunks: refused once past 1 MB, not held whole
    status, answer = exchange({"mode": "flood", "tag": "big"})
    assert status == 500 and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in answer["error"], answer
    wait_until(lambda: (gate / "big.closed").exists(), "the endless generator's finally")


def test_a_worker_past_max_blocked_streams_is_replaced(hostile, gate):
    s = hostile("--timeout", "1", AIOPS_SERVE__MAX_BLOCKED_STREAMS="2")
    pid = _pid(s)
    threads_idle = _threads(pid)
    for i in range(3):  # each stream is cut at the timeout; its generator stays blocked
        sock = socket.create_connection(("127.0.0.1", s.port))
        with sock:
            sock.sendall(_post("/invocations", json.dumps({"mode": "blocked", "tag": f"b{i}"}).encode()))
            assert b"first;" in _recv_until_closed(sock)
    wait_until(lambda: not process_alive(pid), f"worker {pid} replaced\n{s.log()}", timeout=120)
    new_pid = _pid(s)
    assert new_pid != pid
    assert _threads(new_pid) <= threads_idle  # the blocked producer threads went with the old worker
    assert "max_blocked_streams=2" in s.log()
    assert all((gate / f"b{i}.blocked").exists() for i in range(3))


def test_pipelined_requests_are_answered_in_order(hostile):
    s = hostile()
    requests = (
        _post("/invocations", b'{"mode": "echo", "tag": "one"}')
        + b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"
        + b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=60)
    with sock:
        sock.sendall(requests)  # one send: one read on the server, three requests in it
        # a refused request is answered after those before it, then the connection closes
        got = _answers(_recv_until_closed(sock))
    assert len(got) == 3, got
    assert got[0][0] == 200 and json.loads(got[0][1])["tag"] == "one"
    assert got[1] == (200, b'{"status":"Healthy"}\n')
    assert got[2][0] == 404 and "/nowhere" in json.loads(got[2][1])["error"]


def test_a_request_split_across_reads_after_a_pipelined_one_is_read_on(hostile):
    s = hostile()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=60)
    with sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\nGET /pi")  # a whole request, then a part
        data = b""
        while b"Healthy" not in data:  # the first answer, before the rest of the second is sent
            data += sock.recv(65536)
        sock.sendall(b"ng HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        got = _answers(data + _recv_until_closed(sock))
    assert got == [(200, b'{"status":"Healthy"}\n')] * 2


def test_ping_is_answered_when_every_connection_is_busy(hostile):
    s = hostile(AIOPS_SERVE__MAX_CONNECTIONS="2")
    # two connections, each with a request whose body is still arriving: busy, nothing to make room
    # with. A /ping ahead of it in the same send: its answer says the server has read both.
    busy = [socket.create_connection(("127.0.0.1", s.port), timeout=60) for _ in range(2)]
    try:
        for sock in busy:
            sock.sendall(
                b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n["
            )
            data = b""
            while b"Healthy" not in data:
                data += sock.recv(65536)
        refused = s.invoke(b'"pid"')
        assert refused.status == 503 and "only /ping" in refused.json()["error"], refused.body
        assert refused.headers["retry-after"] == "1"
        assert s.request("GET", "/ping").status == 200
    finally:
        for sock in busy:
            sock.close()
    wait_until(lambda: s.invoke(b'"pid"').status == 200, "an invocation answered once the busy clients left")


def test_max_connections_fits_the_open_file_limit_and_ping_still_gets_in(hostile):
    """Under a low open-file limit the worker lowers max_connections until every connection it may hold
    (two descriptors each: the socket and the inference thread's duplicate) fits beside the descriptors
    the loaded model holds, and accepts a burst only as far as that room goes, so accept() never runs
    out of descriptors: with more clients connected at once than the limit, all silent, each is
    accepted (the oldest silent ones make room), a health check gets in, and a request does once they
    leave."""
    s = hostile(open_files=256)
    fitted = re.search(r"does not fit the open-file limit 256; using (\d+)", s.log_path.read_text())
    assert fitted, s.log_path.read_text()
    worker = _pid(s)
    os.kill(worker, signal.SIGSTOP)  # the whole burst waits in the listen queue: one wake-up sees all of it
    try:
        silent = [socket.create_connection(("127.0.0.1", s.port), timeout=60) for _ in range(300)]
    finally:
        os.kill(worker, signal.SIGCONT)
    try:
        # the listen queue is FIFO: once /ping is answered, every silent client before it was accepted
        assert s.request("GET", "/ping").status == 200
        assert "Too many open files" not in s.log_path.read_text()
    finally:
        for sock in silent:
            sock.close()
    wait_until(lambda: s.invoke(b'"pid"').status == 200, "an invocation answered once the clients left")


def test_connection_close_from_an_http11_client_is_honoured(hostile):
    s = hostile()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=60)
    with sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = _recv_until_closed(sock)  # returns only once the server closed
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200") and b"connection: close" in head


def test_workers_end_when_the_supervisor_is_killed(hostile):
    s = hostile()
    pid = _pid(s)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    wait_until(
        lambda: not process_alive(pid), f"worker {pid} gone after its supervisor was killed", timeout=60
    )
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=5).close()


def test_a_worker_whose_supervisor_is_already_gone_does_not_start():
    # its parent is this test, not the (made-up) supervisor it names: it stops before anything else
    proc = run_orphaned_worker("aiops.inference.serving.worker")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
