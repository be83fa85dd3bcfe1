"""Property-based: malformed bodies and headers never crash the server nor yield a 5xx.

The model is elementwise (x * 2), so every decodable body is a valid input: any 5xx would be the
server's fault, not the handler's.
"""

from __future__ import annotations

import http.client

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import Server, free_port, wait_ready

from .conftest import save_double

CTYPES = ["application/json", "text/csv", "application/x-npy", "application/x-npz", "text/plain",
          "application/json; charset=utf-8", "", "*/*", "application/octet-stream"]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    import os
    import signal
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("fuzz")
    folder = save_double(tmp / "double")
    port = free_port()
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "aiops.cli.app", "serve", str(folder), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "AIOPS_HOME": str(tmp / "home"), "OMP_NUM_THREADS": "1",
                                     "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0.5"})
    server = Server(proc, port, log_path)
    wait_ready(server)
    yield server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def _post(server, body: bytes, headers: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/invocations", body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=600), json_values.map(lambda v: __import__("json").dumps(v).encode()),
                      st.text(alphabet="0123456789,.-e\n nan", max_size=200).map(str.encode)),
       ctype=st.sampled_from(CTYPES),
       accept=st.one_of(st.none(), st.sampled_from(["*/*", "text/csv", "application/x-npy", "image/png",
                                                    "application/json;q=0.1, text/csv", ",,", ";"]),
                        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)))
def test_malformed_bodies_never_5xx(fuzz_server, body, ctype, accept):
    headers = {"Content-Type": ctype} if ctype else {}
    if accept is not None:
        headers["Accept"] = accept
    status = _post(fuzz_server, body, headers)
    assert status < 500, (body[:80], ctype, accept, fuzz_server.log()[-2000:])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["Content-Type", "Accept", "Content-Length", "X-Amzn-SageMaker-Custom-Attributes",
                             "X-Api-Key", "Authorization", "X-Amzn-SageMaker-Inference-Id"]),
       value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300))
def test_malformed_headers_never_crash(fuzz_server, name, value):
    import socket

    raw = (f"POST /invocations HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\n"
           + ("" if name == "Content-Length" else "Content-Length: 3\r\n") + "\r\n[1]").encode()
    with socket.create_connection(("127.0.0.1", fuzz_server.port), timeout=30) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if data:  # a request the parser rejects may get 400 or a closed connection, never a 5xx
        status = int(data.split(b" ", 2)[1])
        assert status < 500, (name, value, data[:300])
    assert _post(fuzz_server, b"[1]", {"Content-Type": "application/json"}) == 200
