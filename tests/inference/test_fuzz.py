"""Property-based: malformed bodies and headers never crash the server nor yield a 5xx.

The model is elementwise (x * 2), so every decodable body is a valid input: any 5xx would be the
server's fault, not the handler's.
"""

from __future__ import annotations

import http.client

import pytest
from helpers import Server, free_port, wait_ready
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import save_double

CTYPES = [
    "application/json",
    "text/csv",
    "application/x-npy",
    "application/x-npz",
    "text/plain",
    "application/json; charset=utf-8",
    "",
    "*/*",
    "application/octet-stream",
]


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
        proc = subprocess.Popen(
            [sys.executable, "-m", "aiops.cli.app", "serve", str(folder), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "AIOPS_HOME": str(tmp / "home"),
                "OMP_NUM_THREADS": "1",
                "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0.5",
            },
        )
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
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=600),
        json_values.map(lambda v: __import__("json").dumps(v).encode()),
        st.text(alphabet="0123456789,.-e\n nan", max_size=200).map(str.encode),
    ),
    ctype=st.sampled_from(CTYPES),
    accept=st.one_of(
        st.none(),
        st.sampled_from(
            [
                "*/*",
                "text/csv",
                "application/x-npy",
                "image/png",
                "application/json;q=0.1, text/csv",
                ",,",
                ";",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    ),
)
def test_malformed_bodies_never_5xx(fuzz_server, body, ctype, accept):
    headers = {"Content-Type": ctype} if ctype else {}
    if accept is not None:
        headers["Accept"] = accept
    status = _post(fuzz_server, body, headers)
    assert status < 500, (body[:80], ctype, accept, fuzz_server.log()[-2000:])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(
        [
            "Content-Type",
            "Accept",
            "Content-Length",
            "X-Amzn-SageMaker-Custom-Attributes",
            "X-Api-Key",
            "Authorization",
            "X-Amzn-SageMaker-Inference-Id",
        ]
    ),
    value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300),
)
def test_malformed_headers_never_crash(fuzz_server, name, value):
    import socket

    raw = (
        f"POST /invocations HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\n"
        + ("" if name == "Content-Length" else "Content-Length: 3\r\n")
        + "\r\n[1]"
    ).encode()
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


# Bodies that must be refused with a 4xx naming the problem (they used to reach the model or be
# decoded into NaN / nulls): the default decoders check shape, emptiness and every field.
REFUSED = [
    (b"[]", "application/json", "empty"),
    (b"[[]]", "application/json", "empty"),
    (b"[[], []]", "application/json", "empty"),
    (b"[[1], [1, 2]]", "application/json", "ragged"),
    (b"[[1, 2], 3]", "application/json", "ragged"),
    (b'[1, "a"]', "application/json", "non-numeric"),
    (b"[1, null]", "application/json", "null"),
    (b'{"a": 1}', "application/json", "non-numeric"),
    (b'"text"', "application/json", "non-numeric"),
    (b"", "application/json", "empty"),
    (b"   ", "application/json", "empty"),
    (b"[1,]", "application/json", "not valid JSON"),
    (b"[NaN]", "application/json", "not valid JSON"),
    (b"\xff\xfe", "application/json", "not valid JSON"),
    (b"1,abc,3", "text/csv", "abc"),
    (b"1,,3", "text/csv", "''"),
    (b"1,2\n3\n", "text/csv", "same number"),
    (b"[1, 2, 3]", "text/csv", "[1"),
    (b"", "text/csv", "empty"),
    (b"\n\n", "text/csv", "empty"),
    (b"1_000,2", "text/csv", "1_000"),
    (b"\x93NUMPY", "application/x-npy", "npy"),
    (b"PK\x03\x04junk", "application/x-npz", "zip"),
    (b"[" * 5000 + b"]" * 5000, "application/json", "JSON"),
]


@pytest.mark.parametrize("body, ctype, reason", REFUSED)
def test_known_bad_bodies_are_4xx_with_a_reason(fuzz_server, body, ctype, reason):
    conn = http.client.HTTPConnection("127.0.0.1", fuzz_server.port, timeout=30)
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        doc = __import__("json").loads(resp.read())
    finally:
        conn.close()
    assert 400 <= resp.status < 500, (body[:50], ctype, resp.status, doc)
    assert reason.lower() in doc["error"].lower(), (body[:50], doc["error"])


numbers = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-1000, 1000)


@st.composite
def irregular_arrays(draw):
    """Nested lists that are empty somewhere, ragged, or hold a non-number."""
    rows = draw(st.lists(st.lists(numbers, max_size=4), min_size=1, max_size=4))
    kind = draw(st.sampled_from(["ragged", "empty", "mistyped"]))
    if kind == "ragged":
        rows.append([1.0] * (len(rows[0]) + 1))
    elif kind == "empty":
        rows.append([])
    else:
        rows.append([draw(st.sampled_from([None, "1", True, {"x": 1}, [1, [2]]]))] * max(1, len(rows[0])))
    return rows


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=irregular_arrays(), as_csv=st.booleans())
def test_irregular_arrays_are_4xx_never_200_or_5xx(fuzz_server, rows, as_csv):
    import json

    if as_csv:
        body = "\n".join(",".join(json.dumps(v) for v in row) for row in rows).encode()
        ctype = "text/csv"
    else:
        body = json.dumps(rows).encode()
        ctype = "application/json"
    status = _post(fuzz_server, body, {"Content-Type": ctype})
    if (
        ctype == "application/json"
        or any(not isinstance(v, (int, float)) or isinstance(v, bool) for row in rows for v in row)
        or len({len(r) for r in rows if r}) > 1
    ):
        # JSON: every irregular array is refused; CSV: a blank line is skipped, so only a ragged or
        # non-numeric row must be refused (an all-numeric body with an empty row is still rectangular)
        assert 400 <= status < 500, (body[:200], ctype, status)
    else:
        assert status < 500
    assert _post(fuzz_server, b"[1]", {"Content-Type": "application/json"}) == 200


def test_oversized_body_is_413_and_the_server_stays_healthy(fuzz_server):
    assert _post(fuzz_server, b"[" + b"1," * 400_000 + b"1]", {"Content-Type": "application/json"}) == 413
    assert _post(fuzz_server, b"[1]", {"Content-Type": "application/json"}) == 200
