"""Live `aiops serve` processes on 127.0.0.1: routes, statuses, SageMaker headers, faults, shutdown."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import threading

import numpy as np
import pytest
from helpers import free_port, wait_ready, wait_until

from .conftest import NO_TORCH_MODEL_FN, save_double, save_mlp, write_script

FAULTY = (
    NO_TORCH_MODEL_FN
    + """
import json, os, time
def input_fn(body, content_type):
    if content_type != "application/json":
        from aiops.inference.codecs import UnsupportedMediaType
        raise UnsupportedMediaType("json only")
    return json.loads(body)
def predict_fn(data, model):
    if data == "boom":
        raise ValueError("secret-trace-marker")
    if isinstance(data, dict) and "hold" in data:  # say it started, answer once the test releases it
        open(data["started"], "w").close()
        while not os.path.exists(data["hold"]):
            time.sleep(0.01)
        return {"held": data["started"]}
    if data == "die":
        os._exit(7)
    if data == "pid":
        return {"pid": os.getpid()}
    return data
"""
)


@pytest.fixture
def faulty_dir(tmp_path):
    folder = save_double(tmp_path / "faulty")
    write_script(folder, FAULTY)
    return folder


@pytest.fixture
def double_server(start_server, double_dir):
    return start_server(double_dir)


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def _read_by_server(port: int, client_port: int) -> bool:
    """The server's socket of this connection has nothing left unread (/proc/net/tcp rx_queue)."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == port and int(remote, 16) == client_port:
            return int(fields[4].split(":")[1], 16) == 0
    return False


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_ping_and_invocations_all_content_types(double_server):
    s = double_server
    ping = s.request("GET", "/ping")
    assert ping.status == 200 and ping.json() == {"status": "Healthy"}
    cases = [
        ("application/json", b"[[1, 2], [3, 4]]"),
        ("text/csv", b"1,2\n3,4\n"),
        ("application/x-npy", _npy(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))),
    ]
    for ctype, body in cases:
        for accept, decode in [
            ("application/json", json.loads),
            ("text/csv", lambda b: [[float(x) for x in row.split(",")] for row in b.decode().split()]),
            ("application/x-npy", lambda b: np.load(io.BytesIO(b)).tolist()),
        ]:
            r = s.invoke(body, ctype, accept)
            assert r.status == 200, (ctype, accept, r.body)
            assert r.headers["content-type"] == accept
            assert decode(r.body) == [[2.0, 4.0], [6.0, 8.0]], (ctype, accept)
            assert r.headers["x-amzn-invoked-production-variant"] == "AllTraffic"


def test_endpoint_route_echoes_sagemaker_headers(double_server):
    r = double_server.invoke(
        b"[3]",
        path="/endpoints/my-endpoint/invocations",
        **{"X-Amzn-SageMaker-Custom-Attributes": "trace=abc,c1=2"},
    )
    assert r.status == 200 and r.json() == [6.0]
    assert r.headers["x-amzn-sagemaker-custom-attributes"] == "trace=abc,c1=2"
    assert r.headers["x-amzn-invoked-production-variant"] == "AllTraffic"
    assert r.headers["x-amzn-requestid"]


def test_boto3_sagemaker_runtime_client_works_unmodified(double_server):
    boto3 = pytest.importorskip("boto3")
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=double_server.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    resp = client.invoke_endpoint(
        EndpointName="digits",
        Body=b"[[1, 2], [3, 4]]",
        ContentType="application/json",
        Accept="text/csv",
        CustomAttributes="k=v",
    )
    assert resp["Body"].read().decode() == "2.0,4.0\n6.0,8.0\n"
    assert resp["ContentType"] == "text/csv"
    assert resp["CustomAttributes"] == "k=v"
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        client.invoke_endpoint(EndpointName="digits", Body=b"{oops", ContentType="application/json")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert info.value.response["Error"]["Code"] == "ValidationError"


def test_every_error_status_and_the_server_keeps_serving(start_server, faulty_dir, tmp_path):
    s = start_server(faulty_dir, "--timeout", "1", env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0.01"})
    checks = [
        (s.invoke(b'"x"', "text/plain"), 415),
        (s.invoke(b"{nope", "application/json"), 500),  # the user's input_fn raised: a handler error
    ]
    assert checks[0][0].status == 415
    assert checks[1][0].status == 500
    r = s.invoke(b'"boom"')
    assert r.status == 500
    doc = r.json()
    assert doc["request_id"] == r.headers["x-amzn-requestid"] and doc["code"] == "ModelError"
    assert "secret-trace-marker" not in r.body.decode() and "Traceback" not in r.body.decode()
    assert r.headers["x-amzn-errortype"] == "ModelError"
    assert s.invoke(b"[1]", accept="image/png").status == 406
    assert s.invoke(b"[" + b"1," * 20000 + b"1]").status == 413
    assert s.request("GET", "/nope").status == 404
    assert s.request("GET", "/invocations").status == 405
    assert s.invoke(b"[1]", **{"X-Amzn-SageMaker-Custom-Attributes": "a" * 2000}).status == 400
    release = tmp_path / "release"
    t = s.invoke(json.dumps({"hold": str(release), "started": str(tmp_path / "started")}))
    assert t.status == 504 and "did not answer within 1 s" in t.json()["error"]
    release.touch()  # the handler held on past the timeout: let it return now
    # after all of that it still serves (once the overrunning handler call has returned: the
    # timeout answers the client, it cannot interrupt the handler's thread)
    for _ in range(50):
        ok = s.invoke(b"[1, 2]")
        if ok.status != 504:
            break
    assert ok.status == 200 and ok.json() == [1, 2]
    log = s.log()
    assert "secret-trace-marker" in log and "Traceback" in log  # the traceback goes to the log only


def test_413_is_answered_before_the_body_is_read(start_server, echo_dir):
    s = start_server(echo_dir, env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"})
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000000\r\n\r\n[1"
        )
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 413")
    assert s.invoke(b"[1]").status == 200


def test_api_key_guards_every_route_but_ping(start_server, echo_dir):
    s = start_server(echo_dir, env={"AIOPS_SERVE__API_KEY": "s3cret"})
    assert s.request("GET", "/ping").status == 200
    assert s.invoke(b"[1]").status == 401
    assert s.invoke(b"[1]", **{"X-Api-Key": "wrong"}).status == 401
    assert s.invoke(b"[1]", **{"X-Api-Key": "s3cret"}).json() == [1]
    assert s.invoke(b"[1]", **{"Authorization": "Bearer s3cret"}).status == 200


def test_binds_loopback_by_default(double_server):
    addrs = {
        line.split()[1] for line in open("/proc/net/tcp").read().splitlines()[1:] if line.split()[3] == "0A"
    }
    assert f"0100007F:{double_server.port:04X}" in addrs
    assert f"00000000:{double_server.port:04X}" not in addrs


def test_dead_worker_is_replaced(start_server, faulty_dir):
    s = start_server(faulty_dir, "--workers", "1")
    pid = s.invoke(b'"pid"').json()["pid"]
    with pytest.raises(OSError):
        s.invoke(b'"die"')  # the worker exits mid-request
    wait_ready(s)
    new_pid = s.invoke(b'"pid"').json()["pid"]
    assert new_pid != pid
    assert s.proc.poll() is None


def _send_hold(port: int, release, started) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        "/invocations",
        json.dumps({"hold": str(release), "started": str(started)}),
        {"Content-Type": "application/json"},
    )
    return conn


def test_ping_and_bounds_answer_while_a_handler_is_busy(start_server, faulty_dir, tmp_path):
    s = start_server(faulty_dir, "--workers", "1", env={"AIOPS_SERVE__HEADER_TIMEOUT_SECONDS": "1"})
    keep = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)  # a keep-alive health checker
    keep.request("GET", "/ping")
    assert keep.getresponse().read() == b'{"status":"Healthy"}\n'
    release, started = tmp_path / "release", tmp_path / "started"
    busy = _send_hold(s.port, release, started)
    wait_until(started.exists, "the request inside the handler")
    # the only worker is inside the handler: /ping (new and kept-alive connections), a 404, a 408
    assert s.request("GET", "/ping").json() == {"status": "Healthy"}
    keep.request("GET", "/ping")
    assert keep.getresponse().status == 200
    assert s.request("GET", "/nope").status == 404
    with socket.create_connection(("127.0.0.1", s.port), timeout=60) as slow:
        slow.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        assert slow.recv(65536).startswith(b"HTTP/1.1 408")
    assert not release.exists()  # all of that while the call was still running
    release.touch()
    assert json.loads(busy.getresponse().read())["held"] == str(started)


def test_sigterm_finishes_every_in_flight_request_and_exits_0(start_server, faulty_dir, tmp_path):
    # One worker: a request inside the handler, two more queued behind it (one on a fresh
    # connection) when SIGTERM arrives; /ping is answered while the handler is busy.
    s = start_server(faulty_dir, "--workers", "1")
    release = tmp_path / "release"
    first = _send_hold(s.port, release, tmp_path / "started-0")
    wait_until((tmp_path / "started-0").exists, "the first request inside the handler")
    queued = [_send_hold(s.port, release, tmp_path / f"started-{i}") for i in (1, 2)]
    for conn in queued:  # the worker has read them (its receive queue for them is empty): queued
        wait_until(lambda c=conn: _read_by_server(s.port, c.sock.getsockname()[1]), "the queued request read")
    assert s.request("GET", "/ping").status == 200  # the loop answers while the handler runs
    results: dict[int, object] = {}

    def read(i, conn):
        resp = conn.getresponse()
        results[i] = (resp.status, json.loads(resp.read()), resp.getheader("connection"))

    threads = [threading.Thread(target=read, args=(i, c)) for i, c in enumerate([first, *queued])]
    for t in threads:
        t.start()
    s.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: _refused(s.port), "the worker closing its listener (draining)")
    release.touch()  # all three were in flight when the signal went out; they are answered after it
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1, 2], s.log()[-3000:]
    for i in range(3):
        status, doc, _ = results[i]
        assert status == 200 and doc["held"] == str(tmp_path / f"started-{i}")
        assert results[i][2] == "close"  # a draining worker closes each connection after its answer
    assert s.proc.wait(timeout=60) == 0
    assert _refused(s.port)


def test_model_load_failure_exits_with_one_line(start_server, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"not a model")
    s = start_server(folder, wait=False)
    assert s.proc.wait(timeout=120) == 2  # bad input (not a model), not a runtime failure
    err = s.log()
    assert "error: " in err and "not a TorchScript model" in err and "Traceback" not in err


def test_sagemaker_env_vars(start_server, tmp_path):
    folder = save_double(tmp_path / "m")
    write_script(folder, "def output_fn(p, accept):\n    return 'custom:' + accept\n", name="serve_me.py")
    port = free_port()
    s = start_server(
        folder,
        env={
            "SAGEMAKER_PROGRAM": "serve_me.py",
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        },
        port=port,
    )
    r = s.invoke(b"[1]")
    assert r.status == 200 and r.body == b"custom:text/csv"
    assert "(2 workers" in s.log()


def test_batching_through_the_server_equals_unbatched(start_server, tmp_path):
    folder = save_mlp(tmp_path / "mlp", sizes=(8, 16, 3))
    plain = start_server(folder)
    batched = start_server(folder, "--batch-size", "8", "--max-batch-delay", "20")
    rng = np.random.default_rng(3)
    bodies = [json.dumps(rng.normal(size=8).tolist()).encode() for _ in range(24)]
    expected = [plain.invoke(b).json() for b in bodies]
    got = [None] * len(bodies)

    def worker(i):
        got[i] = batched.invoke(bodies[i]).json()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-6)
    assert "batch size 8" in batched.log()


def test_a_batch_slow_only_because_it_waited_for_a_cpu_does_not_leave_inline_mode(monkeypatch):
    from aiops.inference.serving import calls
    from aiops.inference.serving.scheduling import SchedulingPolicy

    def state():
        policy = SchedulingPolicy(inline_budget_s=0.05, full_inline=True)
        policy.fast_streak, policy.inline, policy.promote_after = 30, True, 20
        return policy

    # 0.2 s wall, of which 0.19 s runnable but off-CPU (another process ran): not the handler's doing
    monkeypatch.setattr(calls, "runqueue_wait", lambda: 1.19)
    preempted = state()
    preempted.on_call_finished(0.2, off_cpu=calls.off_cpu_since(1.0))
    assert preempted.inline and preempted.fast_streak == 30 and preempted.promote_after == 20
    # 0.2 s wall with no run-queue wait (it ran, or slept, that long): slow, back to the thread
    monkeypatch.setattr(calls, "runqueue_wait", lambda: 1.0)
    slow = state()
    slow.on_call_finished(0.2, off_cpu=calls.off_cpu_since(1.0))
    assert not slow.inline and slow.fast_streak == 0 and slow.promote_after == 80
    # a single request's call carries no run-queue reading: wall time decides, as before
    single = state()
    single.on_call_finished(0.2, off_cpu=calls.off_cpu_since(None))
    assert not single.inline


def test_runqueue_wait_reads_this_threads_schedstat():
    from aiops.inference.serving import calls

    first = calls.runqueue_wait()
    if first is None:  # not Linux (no /proc/thread-self/schedstat): the check is simply off
        assert not os.path.exists("/proc/thread-self/schedstat")
        return
    assert isinstance(first, float) and first >= 0 and calls.runqueue_wait() >= first
