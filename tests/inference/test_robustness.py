"""Nothing a request sends takes `aiops serve` down: real server processes on 127.0.0.1.

Handlers that exit, interrupt, hang or leak; oversized and slow headers and bodies; idle
connection floods; a full queue; bombs. No test waits on the clock: each waits on a condition
(a file a handler writes, a response, a closed socket) with a generous bound.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_until

from .conftest import NO_TORCH_MODEL_FN, save_double, write_script

NASTY = (
    NO_TORCH_MODEL_FN
    + """
import os, sys, time
from pathlib import Path
LEAK = []
def input_fn(body, content_type):
    import json
    return json.loads(body)
def predict_fn(data, model):
    if data == "exit":
        sys.exit(3)
    if data == "interrupt":
        raise KeyboardInterrupt
    if data == "base":
        raise BaseException("odd")
    if data == "leak":
        LEAK.append(b"x" * (40 * 1024 * 1024))
        return {"pid": os.getpid(), "leaked": len(LEAK)}
    if data == "hang":
        time.sleep(3600)
    if isinstance(data, dict) and "block" in data:  # wait for the test to release it
        Path(data["block"] + ".started").write_text("1")
        for _ in range(6000):
            if Path(data["block"] + ".release").exists():
                break
            time.sleep(0.01)
        return {"released": True}
    if data == "pid":
        return {"pid": os.getpid()}
    if data == "slow":  # well past the inline budget (inline_call_ms, 50 by default)
        time.sleep(0.5)
        return "slow"
    return data
"""
)


@pytest.fixture
def nasty_dir(tmp_path):
    folder = save_double(tmp_path / "nasty")
    write_script(folder, NASTY)
    return folder


def _wait_for(path: Path, bound: float = 60) -> None:
    deadline = time.monotonic() + bound
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _recv_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_sys_exit_keyboard_interrupt_and_base_exception_are_500s_not_a_dead_worker(start_server, nasty_dir):
    s = start_server(nasty_dir, "--workers", "1")
    pid = s.invoke(b'"pid"').json()["pid"]
    for bad in (b'"exit"', b'"interrupt"', b'"base"'):
        r = s.invoke(bad)
        assert r.status == 500 and r.json()["code"] == "ModelError", r.body
        assert s.request("GET", "/ping").status == 200
    assert s.invoke(b'"pid"').json()["pid"] == pid  # the same worker, still serving
    log = s.log()
    assert "SystemExit" in log and "KeyboardInterrupt" in log


def test_batched_handler_exits_are_per_request(start_server, tmp_path):
    folder = save_double(tmp_path / "batched")
    write_script(folder, NASTY.replace("def input_fn", "aiops_batch = True\ndef input_fn"))
    s = start_server(folder, "--batch-size", "8", "--max-batch-delay", "50")
    results = {}

    def call(i, body):
        results[i] = s.invoke(body)

    bodies = [b'"exit"', b'"interrupt"', b"[1, 2]", b'"base"', b"[3]"] * 3
    threads = [threading.Thread(target=call, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, body in enumerate(bodies):
        expected = 200 if body.startswith(b"[") else 500
        assert results[i].status == expected, (body, results[i].body)
        if expected == 200:
            assert results[i].json() == json.loads(body)
    assert s.request("GET", "/ping").status == 200


def _until_replaced(s, pid: int) -> None:
    """Wait until a worker other than `pid` answers (the stuck one ended itself, a new one started)."""

    def replaced() -> bool:
        try:
            got = s.invoke(b'"pid"')
            return got.status == 200 and got.json()["pid"] != pid
        except OSError:
            return False

    wait_until(replaced, f"a new worker in place of {pid}\n{s.log()}", timeout=120, interval=0.2)


def test_hung_handler_gets_504_then_the_worker_is_replaced(start_server, nasty_dir):
    s = start_server(nasty_dir, "--workers", "1", "--timeout", "1")
    pid = s.invoke(b'"pid"').json()["pid"]
    r = s.invoke(b'"hang"')
    assert r.status == 504 and "did not answer within 1 s" in r.json()["error"]
    # the call never returns: past timeout + 10 s the worker ends itself and a new one starts
    _until_replaced(s, pid)
    assert "stayed stuck" in s.log()
    assert s.proc.poll() is None


def test_leaking_worker_is_replaced_before_it_stops(start_server, nasty_dir):
    s = start_server(nasty_dir, "--workers", "1", env={"AIOPS_SERVE__MAX_WORKER_RSS_MB": "500"})
    first = s.invoke(b'"pid"').json()["pid"]
    for _ in range(40):  # leak until the worker notices and asks for a replacement
        assert s.invoke(b'"leak"').status == 200
        if "asked to be replaced" in s.log():
            break
    assert "asked to be replaced" in s.log(), s.log()
    deadline = time.monotonic() + 120
    while True:  # the old worker keeps answering until its replacement is ready
        assert time.monotonic() < deadline, s.log()
        try:
            pid = s.invoke(b'"pid"').json()["pid"]
        except ConnectionResetError:
            continue  # a connection queued on the old listener in the instant it closed (see docs)
        if pid != first:
            break
        time.sleep(0.1)
    assert s.proc.poll() is None and s.request("GET", "/ping").status == 200


def test_oversized_headers_are_cut_off_at_the_limit(start_server, echo_dir):
    s = start_server(echo_dir)
    sent = 0
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Filler: " + b"a" * 8000 + b"\r\n"
        try:
            while sent < 200 * 1024 * 1024:
                sock.sendall(line)
                sent += len(line)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = _recv_all(sock)
    assert sent < 10 * 1024 * 1024  # cut off long before 200 MB
    assert data.startswith(b"HTTP/1.1 431") or data == b""
    assert s.request("GET", "/ping").status == 200


def test_one_huge_header_line_gets_431(start_server, echo_dir):
    s = start_server(echo_dir, env={"AIOPS_SERVE__MAX_HEADER_KB": "4"})
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n")
        data = _recv_all(sock)
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert b"max_header_kb" in data


@pytest.mark.parametrize(
    "partial, what",
    [
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\n", b"headers"),  # slowloris: headers never end
        (
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[1,",
            b"body",
        ),  # slow-drip body
    ],
)
def test_slow_clients_are_cut_off_by_the_read_timeouts(start_server, echo_dir, partial, what):
    s = start_server(
        echo_dir, env={"AIOPS_SERVE__HEADER_TIMEOUT_SECONDS": "1", "AIOPS_SERVE__BODY_TIMEOUT_SECONDS": "1"}
    )
    with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:
        sock.sendall(partial)
        data = _recv_all(sock)  # returns once the server closes; the socket timeout bounds a hang
    assert data.startswith(b"HTTP/1.1 408") and what in data, data[:300]
    assert s.request("GET", "/ping").status == 200


def test_idle_connection_is_closed_after_keep_alive(start_server, echo_dir):
    s = start_server(
        echo_dir, env={"AIOPS_SERVE__KEEP_ALIVE_SECONDS": "1", "AIOPS_SERVE__HEADER_TIMEOUT_SECONDS": "1"}
    )
    with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        data = _recv_all(sock)  # the answer, then EOF once the connection has idled past 1 s
    assert data.startswith(b"HTTP/1.1 200") and data.count(b"HTTP/1.1") == 1


def test_ping_answers_while_hundreds_of_idle_connections_are_open(start_server, echo_dir):
    s = start_server(echo_dir, env={"AIOPS_SERVE__MAX_CONNECTIONS": "100"})
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", s.port), timeout=30))
        for _ in range(5):
            assert s.request("GET", "/ping").status == 200  # the longest idle ones make room
        assert s.invoke(b"[1]").json() == [1]
    finally:
        for sock in idle:
            sock.close()


def test_full_queue_answers_503_with_retry_after_at_once(start_server, nasty_dir, tmp_path):
    s = start_server(nasty_dir, "--workers", "1", env={"AIOPS_SERVE__MAX_QUEUE": "2"})
    # 20 keep-alive connections, accepted before the worker gets busy (as a load balancer's pool)
    conns = []
    for _ in range(20):
        conn = socket.create_connection(("127.0.0.1", s.port), timeout=60)
        conn.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        conns.append(conn)
    flag = str(tmp_path / "gate")
    blocked = {}
    blocker = threading.Thread(target=lambda: blocked.update(r=s.invoke(json.dumps({"block": flag}))))
    blocker.start()
    _wait_for(Path(flag + ".started"))  # the worker is inside the handler now
    results = []
    sent = threading.Barrier(21)

    def follower(conn):
        conn.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 3\r\n\r\n[1]"
        )
        sent.wait()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                break
            head += chunk
        results.append(head)
        conn.close()

    threads = [threading.Thread(target=follower, args=(conn,)) for conn in conns]
    for t in threads:
        t.start()
    sent.wait()  # all 20 requests sit in the kernel while the handler is busy
    Path(flag + ".release").write_text("1")
    for t in threads + [blocker]:
        t.join(60)
    assert blocked["r"].status == 200
    statuses = [int(h.split(b" ", 2)[1]) for h in results]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 1, (
        statuses,
        s.log(),
    )
    assert all(b"retry-after: 1" in h.lower() for h in results if h.startswith(b"HTTP/1.1 503"))
    assert s.request("GET", "/ping").status == 200


def test_typed_handler_errors_reach_the_client(start_server, tmp_path):
    folder = save_double(tmp_path / "typed")
    write_script(
        folder,
        """
from aiops.inference.errors import InferenceError
class GenericInferenceToolkitError(Exception):  # the shape of sagemaker_inference.errors' class
    def __init__(self, status_code, message=None, phrase=None):
        self.status_code, self.message, self.phrase = status_code, message, phrase
        super().__init__(status_code, message, phrase)
def input_fn(body, content_type):
    if content_type != "application/json":
        raise InferenceError(415, f"only JSON, not {content_type}")
    if body.strip() == '"teapot"':
        raise GenericInferenceToolkitError(418, "short and stout")
    if body.strip() == '"busy"':
        raise InferenceError(503, "warming up")
    return body
def predict_fn(data, model):
    return data
""",
    )
    s = start_server(folder)
    r = s.invoke(b"1,2", "text/csv")
    assert r.status == 415 and r.json()["error"] == "only JSON, not text/csv"
    r = s.invoke(b'"teapot"')
    assert r.status == 418 and r.json()["error"] == "short and stout"
    r = s.invoke(b'"busy"')
    assert r.status == 503 and r.json()["error"] == "warming up"
    assert s.invoke(b"[5]").json() == "[5]"  # predict_fn returned the body text


def test_batched_requests_keep_their_own_context(start_server, tmp_path):
    folder = save_double(tmp_path / "ctx")
    write_script(
        folder,
        """
import json, time
from pathlib import Path
aiops_batch = True
SEEN = []
def predict_fn(data, model, context):
    seen = [c.custom_attributes for c in context.batch] if context.batch else [context.custom_attributes]
    SEEN.append(seen)
    # the batch's own context holds no request's
    assert context.custom_attributes is None or not context.batch
    block = Path(__file__).with_name("gate")
    if data.shape[0] == 1 and block.with_suffix(".on").exists():
        Path(str(block) + ".started").write_text("1")
        for _ in range(6000):
            if Path(str(block) + ".release").exists():
                break
            time.sleep(0.01)
        block.with_suffix(".on").unlink()
    return data * 2
def output_fn(prediction, accept, context):
    return json.dumps({"attrs": context.custom_attributes, "accept": accept, "batch": SEEN[-1],
                       "value": prediction.tolist()}), "application/json"
""",
    )
    gate = folder / "code" / "gate"
    gate.with_suffix(".on").write_text("1")
    s = start_server(folder, "--batch-size", "16", "--max-batch-delay", "20")
    pool = []  # keep-alive connections the worker has accepted before it gets busy
    for _ in range(8):
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        conn.request("GET", "/ping")
        assert conn.getresponse().read() == b'{"status":"Healthy"}\n'
        pool.append(conn)
    first = {}
    blocker = threading.Thread(
        target=lambda: first.update(
            r=s.invoke(b"[0]", **{"X-Amzn-SageMaker-Custom-Attributes": "who=blocker"})
        )
    )
    blocker.start()
    _wait_for(Path(str(gate) + ".started"))
    results = {}
    sent = threading.Barrier(9)

    def call(i, conn):
        conn.request(
            "POST",
            "/invocations",
            body=json.dumps([i]).encode(),
            headers={
                "Content-Type": "application/json",
                "Accept": f"application/json;q=0.{i + 1}",
                "X-Amzn-SageMaker-Custom-Attributes": f"who={i}",
            },
        )
        sent.wait()  # the request is in the kernel while the worker is blocked
        resp = conn.getresponse()
        results[i] = (
            resp.status,
            resp.getheader("x-amzn-sagemaker-custom-attributes"),
            json.loads(resp.read()),
        )
        conn.close()

    threads = [threading.Thread(target=call, args=(i, conn)) for i, conn in enumerate(pool)]
    for t in threads:
        t.start()
    sent.wait()
    Path(str(gate) + ".release").write_text("1")
    for t in threads + [blocker]:
        t.join(60)
    assert first["r"].json()["attrs"] == "who=blocker"
    batched = False
    for i in range(8):
        status, echoed, doc = results[i]
        assert status == 200 and echoed == f"who={i}"
        assert doc["attrs"] == f"who={i}" and doc["accept"] == f"application/json;q=0.{i + 1}"
        assert doc["value"] == [2.0 * i]
        assert f"who={i}" in doc["batch"]
        batched = batched or len(doc["batch"]) > 1
    assert batched, [results[i][2]["batch"] for i in range(8)]


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_npz_and_npy_bombs_are_refused_before_allocation(start_server, double_dir):
    s = start_server(double_dir, env={"AIOPS_SERVE__MAX_DECODED_MB": "50"})
    bomb = _npz(x=np.zeros(100_000_000, dtype=np.uint8))  # ~100 KB on the wire, 100 MB inflated
    assert len(bomb) < 1024 * 1024
    r = s.invoke(bomb, "application/x-npz")
    assert r.status == 413 and "at most" in r.json()["error"], r.body
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (100_000, 100_000)}
    )
    r = s.invoke(b"\x93NUMPY\x01\x00" + header.getvalue()[8:], "application/x-npy")
    assert r.status == 413, r.body
    ok = s.invoke(_npz(x=np.ones(3, dtype=np.float32)), "application/x-npz")
    assert ok.status == 200 and ok.json() == [2.0, 2.0, 2.0]


INLINE = {"AIOPS_SERVE__INLINE_CALL_MS": "50"}  # inline mode for an unbatched worker too


def _until_inline(s, body: bytes = b'"pid"') -> None:
    """Fast calls until the worker runs them on its event loop (it logs the switch)."""
    for _ in range(2000):
        assert s.invoke(body).status == 200
        if "inline mode" in s.log():
            return
    raise AssertionError("the worker never went inline:\n" + s.log()[-3000:])


def test_inline_hung_handler_gets_504_from_the_watchdog_then_the_worker_is_replaced(start_server, nasty_dir):
    # fast calls put the worker in inline mode: the loop itself is inside the hung call, so the
    # watchdog thread answers the 504 and ends the worker
    s = start_server(nasty_dir, "--workers", "1", "--timeout", "1", env=INLINE)
    _until_inline(s)
    pid = s.invoke(b'"pid"').json()["pid"]
    r = s.invoke(b'"hang"')
    assert r.status == 504 and "did not answer within 1 s" in r.json()["error"]
    _until_replaced(s, pid)
    assert "stayed stuck" in s.log()


def test_one_slow_inline_call_sends_the_worker_back_to_its_inference_thread(
    start_server, nasty_dir, tmp_path
):
    s = start_server(nasty_dir, "--workers", "1", env=INLINE)
    _until_inline(s)
    assert s.invoke(b'"slow"').json() == "slow"  # inline: the loop itself sat in this call
    wait_until(lambda: "back to the inference thread" in s.log(), "the worker leaving inline mode")
    # the next slow call runs on the inference thread: /ping answers while it is busy
    flag = str(tmp_path / "two")
    second = {}
    t = threading.Thread(target=lambda: second.update(r=s.invoke(json.dumps({"block": flag}))))
    t.start()
    _wait_for(Path(flag + ".started"))
    assert s.request("GET", "/ping").status == 200
    assert not Path(flag + ".release").exists()
    Path(flag + ".release").write_text("1")
    t.join(60)
    assert second["r"].json() == {"released": True}
