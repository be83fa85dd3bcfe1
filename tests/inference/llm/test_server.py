"""`aiops serve MODEL_DIR --container tgi|lmi`: real server processes on a tiny Llama, and the real clients
(`text_generation`, `openai`, boto3's sagemaker-runtime) against them, unchanged.

The served folder is the tests' tiny Llama with 32768 positions (rotary: only the config changes) and no EOS
token: a generation ends at its length (or a stop sequence), so a long one is long for certain, and greedy
output is compared token for token with ``model.generate(do_sample=False)`` of the same folder.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import (
    Server,
    child_pids,
    process_alive,
    run_orphaned_worker,
    runtime_client,
    start_server,
    stop_all,
    wait_until,
)

pytest.importorskip("text_generation")
pytest.importorskip("openai")

LONG = 3000  # new tokens of a request that must still be running when its client leaves
LMI_TIMEOUT_S = 3  # the LMI server's timeout_seconds
ENDLESS = 30000  # new tokens that take far longer than LMI_TIMEOUT_S on any machine


@pytest.fixture(scope="module")
def no_template_dir(llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llm-server") / "tiny-llm-no-template"
    shutil.copytree(llm_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    return folder


@pytest.fixture(scope="module")
def tgi(llm_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_server(
        llm_dir, tmp_path_factory.mktemp("tgi"), "--container", "tgi", "--max-batch-size", "8"
    )
    yield server
    stop_all([server])


@pytest.fixture(scope="module")
def lmi(no_template_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lmi")
    # max_queue 2: the overload test fills it with two long requests
    env = {"AIOPS_SERVE__MAX_QUEUE": "2", "AIOPS_SERVE__TIMEOUT_SECONDS": str(LMI_TIMEOUT_S)}
    server = start_server(no_template_dir, root, "--container", "lmi", "--max-total-tokens", "32768", env=env)
    yield server
    stop_all([server])


@pytest.fixture(scope="module")
def reference(llm_dir: Path):
    """model.generate(do_sample=False) of the served folder, and its tokenizer."""
    import torch
    from aiops.inference.llm.engine import LLMEngine

    engine = LLMEngine.from_folder(llm_dir, device="cpu")
    model, tokenizer = engine.model, engine.tokenizer

    def greedy(prompt: str, n: int, special: bool = True) -> list[int]:
        ids = tokenizer(prompt, add_special_tokens=special, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return out[0, ids.shape[1] :].tolist()

    def chat_prompt(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    return SimpleNamespace(greedy=greedy, chat_prompt=chat_prompt, text=text)


def metrics(server: Server) -> dict[str, float]:
    response = server.request("GET", "/metrics")
    assert response.status == 200, response.body
    values = {}
    for line in response.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            values[name] = float(value)
    return values


def sse_events(body: bytes) -> list[dict]:
    return [
        json.loads(line[5:])
        for line in body.split(b"\n")
        if line.startswith(b"data:") and line != b"data:[DONE]"
    ]


def post(server: Server, path: str, payload) -> http.client.HTTPResponse:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return server.request("POST", path, body, {"Content-Type": "application/json"}, timeout=60)


# ---------------------------------------------------------------------- the real clients
def test_text_generation_client_generate_and_stream_are_model_generate(tgi, reference):
    from text_generation import Client

    client = Client(tgi.url, timeout=60)
    for prompt, n in (("def main():", 12), ("import os\n", 5)):
        want = reference.greedy(prompt, n)
        response = client.generate(prompt, max_new_tokens=n)
        assert [token.id for token in response.details.tokens] == want
        assert response.generated_text == reference.text(want)
        assert response.details.finish_reason == "length" and response.details.generated_tokens == n

        streamed = list(client.generate_stream(prompt, max_new_tokens=n))
        assert [event.token.id for event in streamed] == want
        assert [event.generated_text for event in streamed[:-1]] == [None] * (n - 1)
        assert streamed[-1].generated_text == reference.text(want)
        assert streamed[-1].details.finish_reason == "length"


def test_openai_chat_completions_stream_and_not(tgi, reference):
    from openai import OpenAI

    client = OpenAI(base_url=tgi.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a loop."}]
    want = reference.text(reference.greedy(reference.chat_prompt(messages), 10, special=False))

    answer = client.chat.completions.create(model="tgi", messages=messages, max_tokens=10, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == want
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 10

    chunks = list(
        client.chat.completions.create(
            model="tgi", messages=messages, max_tokens=10, temperature=0, stream=True
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == want
    assert chunks[-1].choices[0].finish_reason == "length"

    completion = client.completions.create(model="tgi", prompt="class A:", max_tokens=6, temperature=0)
    assert completion.choices[0].text == reference.text(reference.greedy("class A:", 6))


def test_boto3_invoke_endpoint_and_response_stream(tgi, reference):
    from botocore.exceptions import ClientError

    client = runtime_client(tgi.url)
    prompt, n = "for i in range(", 7
    want = reference.greedy(prompt, n)
    body = {"inputs": prompt, "parameters": {"max_new_tokens": n, "do_sample": False}}

    answer = client.invoke_endpoint(
        EndpointName="local", Body=json.dumps(body), ContentType="application/json"
    )
    # TGI's /invocations returns the full text for a model with no pipeline tag
    assert json.loads(answer["Body"].read()) == [{"generated_text": prompt + reference.text(want)}]

    streamed = client.invoke_endpoint_with_response_stream(
        EndpointName="local", Body=json.dumps({**body, "stream": True}), ContentType="application/json"
    )
    parts = [event["PayloadPart"]["Bytes"] for event in streamed["Body"]]
    assert len(parts) > 1  # one PayloadPart per batch of events, not one whole body
    events = sse_events(b"".join(parts))
    assert [event["token"]["id"] for event in events] == want
    assert events[-1]["generated_text"] == prompt + reference.text(want)

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    answer = client.invoke_endpoint(
        EndpointName="local", Body=json.dumps(chat), ContentType="application/json"
    )
    chat_want = reference.text(reference.greedy(reference.chat_prompt(chat["messages"]), 4, special=False))
    assert json.loads(answer["Body"].read())["choices"][0]["message"]["content"] == chat_want

    # the container's refusal reaches boto3 as SageMaker's ModelError, with the container's status
    with pytest.raises(ClientError) as refused:
        client.invoke_endpoint(
            EndpointName="local",
            Body=json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": 0}}),
            ContentType="application/json",
        )
    error = refused.value.response
    assert error["Error"]["Code"] == "ModelError" and error["OriginalStatusCode"] == 422
    assert "max_new_tokens" in error["OriginalMessage"]


def test_sixteen_concurrent_mixed_requests_are_each_model_generate(tgi, reference):
    from openai import OpenAI
    from text_generation import Client

    tgi_client = Client(tgi.url, timeout=120)
    openai_client = OpenAI(base_url=tgi.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    runtime = runtime_client(tgi.url)
    prompts = ["def f(x):", "import sys\n", "class Node:", "return self.", "if __name__", "while True:"]

    def job(i: int):
        prompt, n = prompts[i % len(prompts)], 4 + i % 9
        kind = i % 5
        if kind == 0:
            got = [t.id for t in tgi_client.generate(prompt, max_new_tokens=n).details.tokens]
            return got, reference.greedy(prompt, n)
        if kind == 1:
            got = [event.token.id for event in tgi_client.generate_stream(prompt, max_new_tokens=n)]
            return got, reference.greedy(prompt, n)
        if kind == 2:
            messages = [{"role": "user", "content": prompt}]
            chunks = openai_client.chat.completions.create(
                model="tgi", messages=messages, max_tokens=n, temperature=0, stream=i % 2 == 0
            )
            if i % 2 == 0:
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                text = chunks.choices[0].message.content
            return text, reference.text(reference.greedy(reference.chat_prompt(messages), n, special=False))
        if kind == 3:
            text = openai_client.completions.create(model="tgi", prompt=prompt, max_tokens=n, temperature=0)
            return text.choices[0].text, reference.text(reference.greedy(prompt, n))
        body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": n, "return_full_text": False}})
        answer = runtime.invoke_endpoint(EndpointName="local", Body=body, ContentType="application/json")
        return json.loads(answer["Body"].read())[0]["generated_text"], reference.text(
            reference.greedy(prompt, n)
        )

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(job, range(16)))
    for i, (got, want) in enumerate(results):
        assert got == want, i


# ---------------------------------------------------------------------- streaming, disconnects
def _open_stream(server: Server, path: str, payload: dict) -> tuple[socket.socket, bytes]:
    """Send a streamed request and read until its first event; the socket and what was read."""
    body = json.dumps(payload).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(body), body)
    )
    seen = b""
    # the head, then a chunk's size line and its first event (an SSE event or a JSON line) ending in \n
    while b"\r\n\r\n" not in seen or seen.split(b"\r\n\r\n", 1)[1].count(b"\n") < 2:
        data = sock.recv(65536)
        assert data, seen
        seen += data
    return sock, seen


def test_stream_arrives_before_the_end_and_a_disconnect_frees_the_slot(tgi, reference):
    before = metrics(tgi)["aiops_llm_requests_cancelled_total"]
    sock, seen = _open_stream(
        tgi, "/generate_stream", {"inputs": "def main():", "parameters": {"max_new_tokens": LONG}}
    )
    assert seen.startswith(b"HTTP/1.1 200") and b"content-type: text/event-stream" in seen.lower()
    sock.close()
    # The generation was cut short by the client leaving after its first event: that event came out before
    # the end. Its slot is then free: nothing runs, nothing waits.
    wait_until(
        lambda: (
            (m := metrics(tgi))["aiops_llm_requests_cancelled_total"] == before + 1
            and m["tgi_batch_current_size"] == 0
            and m["aiops_llm_requests_in_flight"] == 0
        ),
        "the disconnected stream's generation cancelled",
    )
    # a non-streamed request whose client leaves before the answer is cancelled too
    conn = http.client.HTTPConnection("127.0.0.1", tgi.port, timeout=60)
    conn.request("POST", "/generate", json.dumps({"inputs": "x", "parameters": {"max_new_tokens": LONG}}))
    wait_until(lambda: metrics(tgi)["tgi_batch_current_size"] == 1, "the request running")
    conn.close()
    wait_until(
        lambda: (
            (m := metrics(tgi))["aiops_llm_requests_cancelled_total"] == before + 2
            and m["tgi_batch_current_size"] == 0
        ),
        "the abandoned request's generation cancelled",
    )
    want = reference.greedy("x = ", 3)
    assert post(tgi, "/generate", {"inputs": "x = ", "parameters": {"max_new_tokens": 3}}).json() == {
        "generated_text": reference.text(want)
    }


def test_a_stream_whose_client_reads_late_arrives_whole_and_in_order(tgi, reference):
    """While a stream runs, the engine thread writes its events to the socket itself. A client that reads
    its first event, then nothing until the generation has ended, then the rest, gets every event once,
    in order, with generate's tokens."""
    n = 1500
    body = json.dumps({"inputs": "def main():", "parameters": {"max_new_tokens": n}}).encode()
    sock = socket.create_connection(("127.0.0.1", tgi.port), timeout=60)
    try:
        sock.sendall(
            b"POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        seen = b""
        while b"data:" not in seen:  # the first event: the generation is running
            data = sock.recv(65536)
            assert data, seen
            seen += data
        wait_until(lambda: metrics(tgi)["tgi_batch_current_size"] == 0, "the generation ended")
        while not seen.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(65536)
            assert data, seen[-200:]
            seen += data
    finally:
        sock.close()
    events = sse_events(seen.split(b"\r\n\r\n", 1)[1])
    assert [event["index"] for event in events] == list(range(1, n + 1))
    assert [event["token"]["id"] for event in events] == reference.greedy("def main():", n)
    assert events[-1]["generated_text"] is not None


def test_a_stream_answered_whole_is_the_streamed_bytes_with_one_end(tgi, reference):
    # InvokeEndpoint's route (and an HTTP/1.0 client) take a stream whole: the same events, [DONE] once
    messages = [{"role": "user", "content": "Write a loop."}]
    payload = {"messages": messages, "max_tokens": 5, "temperature": 0, "stream": True}
    streamed = post(tgi, "/v1/chat/completions", payload)
    whole = post(tgi, "/endpoints/local/invocations", payload)
    assert streamed.status == whole.status == 200, whole.body
    assert streamed.body.count(b"data:[DONE]") == whole.body.count(b"data:[DONE]") == 1, whole.body
    assert whole.body.endswith(b"data:[DONE]\n\n")

    def text(body: bytes) -> str:
        return "".join(event["choices"][0]["delta"].get("content") or "" for event in sse_events(body))

    want = reference.text(reference.greedy(reference.chat_prompt(messages), 5, special=False))
    assert text(streamed.body) == text(whole.body) == want


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 0}}, 422, "max_new_tokens"),
        ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 5000}}, 422, "must be <= 4096"),
        ("/generate", {"inputs": "", "parameters": {"max_new_tokens": 2}}, 422, "cannot be empty"),
        ("/", {"inputs": "x", "parameters": {"top_p": 1.5}}, 422, "top_p"),
        ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": "5"}}, 422, None),
        ("/generate", b'{"inputs": "\xff\xfe"}', 400, None),
        ("/generate", b"not json", 400, None),
        ("/v1/chat/completions", {"messages": "hi"}, 422, None),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_p": 0}, 422, "top_p"),
    ],
)
def test_bad_requests_get_the_containers_4xx(tgi, path, body, status, error):
    response = post(tgi, path, body)
    assert response.status == status, response.body
    if error is not None:
        answer = response.json()
        assert answer["error_type"] == "validation" and error in answer["error"], answer
    assert tgi.request("GET", "/health").status == 200


def test_unknown_parameters_are_ignored_as_tgi_does_and_routes_are_bounded(tgi, reference):
    answer = post(tgi, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 2, "no_such": 1}})
    assert answer.status == 200 and answer.json()["generated_text"] == reference.text(
        reference.greedy("x", 2)
    )
    never = {"inputs": "x", "parameters": {"max_new_tokens": 3, "stop": ["never-said"], "details": True}}
    assert post(tgi, "/generate", never).json()["details"]["finish_reason"] == "length"
    seeded = {"inputs": "x", "parameters": {"max_new_tokens": 8, "do_sample": True, "seed": 7}}
    assert post(tgi, "/generate", seeded).json() == post(tgi, "/generate", seeded).json()
    assert tgi.request("GET", "/generate").status == 405
    assert tgi.request("GET", "/nope").status == 404
    # the HTTP layer's bounds: a declared body over the limit is refused before it is read
    huge = tgi.request("POST", "/generate", b"", {"Content-Length": str(64 * 1024 * 1024)})
    assert huge.status == 413
    info = tgi.request("GET", "/info").json()
    assert info["max_total_tokens"] == 4096 and info["router"] == "text-generation-router"
    assert tgi.request("GET", "/v1/models").json()["data"][0]["id"] == "tiny-llm-long"


def test_a_folder_that_is_not_a_causal_lm_exits_2_in_one_line(fresh_cli, tmp_path, llm_dir):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    result = fresh_cli("serve", str(folder), "--container", "tgi", "--port", "0")
    assert result.returncode == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "not a causal language model" in result.stderr and "BertForSequenceClassification" in result.stderr

    result = fresh_cli(
        "serve", str(llm_dir), "--container", "tgi", "--max-total-tokens", "40000", "--port", "0"
    )
    assert result.returncode == 2 and "more than the model's 32768 positions" in result.stderr, result.output


# ---------------------------------------------------------------------- LMI
def test_lmi_invocations_generate_stream_and_refusals(lmi, reference):
    prompt, n = "def main():", 6
    want = reference.greedy(prompt, n)
    body = {"inputs": prompt, "parameters": {"max_new_tokens": n, "do_sample": False}}
    assert post(lmi, "/invocations", body).json() == {"generated_text": reference.text(want)}

    streamed = post(lmi, "/invocations", {**body, "stream": True})
    assert streamed.status == 200 and streamed.headers["content-type"] == "application/jsonlines"
    lines = [json.loads(line) for line in streamed.body.splitlines() if line.strip()]
    assert [line["token"]["id"] for line in lines] == want

    events = runtime_client(lmi.url).invoke_endpoint_with_response_stream(
        EndpointName="local", Body=json.dumps({**body, "stream": True}), ContentType="application/json"
    )
    parts = b"".join(event["PayloadPart"]["Bytes"] for event in events["Body"])
    assert [json.loads(line)["token"]["id"] for line in parts.splitlines() if line.strip()] == want

    no_template = post(lmi, "/invocations", {"messages": [{"role": "user", "content": "hi"}]})
    assert 400 <= no_template.status < 500, no_template.body
    assert post(lmi, "/invocations", b"\xff").status == 424
    assert lmi.request("GET", "/ping").status == 200


def test_lmi_overload_is_503_and_leaving_clients_free_the_queue(lmi):
    before = metrics(lmi)["aiops_llm_requests_cancelled_total"]
    long = {"inputs": "x", "parameters": {"max_new_tokens": LONG, "do_sample": False}, "stream": True}
    held = [_open_stream(lmi, "/invocations", long)[0] for _ in range(2)]
    refused = post(lmi, "/invocations", {"inputs": "x", "parameters": {"max_new_tokens": 1}})
    assert refused.status == 503 and refused.headers["retry-after"] == "1", refused.body
    for sock in held:
        sock.close()
    wait_until(
        lambda: (
            (m := metrics(lmi))["aiops_llm_requests_cancelled_total"] == before + 2
            and m["aiops_llm_requests_in_flight"] == 0
        ),
        "both held streams cancelled",
    )
    assert post(lmi, "/invocations", {"inputs": "x", "parameters": {"max_new_tokens": 1}}).status == 200


def test_lmi_past_the_timeout_is_504_or_a_cut_stream_and_cancelled(lmi):
    before = metrics(lmi)["aiops_llm_requests_cancelled_total"]
    endless = {"inputs": "x", "parameters": {"max_new_tokens": ENDLESS, "do_sample": False}}
    late = post(lmi, "/invocations", endless)
    assert late.status == 504 and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in late.json()["error"], late.body
    sock, seen = _open_stream(lmi, "/invocations", {**endless, "stream": True})
    while data := sock.recv(65536):  # the server ends the stream at the timeout and closes
        seen += data
    sock.close()
    assert not seen.endswith(b"0\r\n\r\n")  # cut: no terminating chunk, the client sees an incomplete body
    wait_until(
        lambda: (
            (m := metrics(lmi))["aiops_llm_requests_cancelled_total"] == before + 2
            and m["tgi_batch_current_size"] == 0
        ),
        "both timed-out generations cancelled",
    )


def test_pipelined_requests_are_answered_in_order_and_connection_close_is_honoured(tgi):
    sock = socket.create_connection(("127.0.0.1", tgi.port), timeout=60)
    sock.sendall(
        b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    seen = b""
    while data := sock.recv(65536):  # ends only when the server closes, as the second request asked
        seen += data
    sock.close()
    first, _, second = seen.partition(b"HTTP/1.1 200")[2].partition(b"HTTP/1.1 200")
    assert first and second, seen[:500]
    assert b"model_id" not in first and b'"model_id"' in second  # /health, then /info


def test_hostile_clients_meet_the_handler_servers_connection_bounds(llm_dir: Path, tmp_path: Path):
    env = {"AIOPS_SERVE__MAX_CONNECTIONS": "2", "AIOPS_SERVE__HEADER_TIMEOUT_SECONDS": "1"}
    server = start_server(llm_dir, tmp_path, "--container", "tgi", env=env)
    busy = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(2)]
    try:
        # both connections busy with a request whose body is still arriving (the /health before it says
        # the server read it): a third may ask for the health routes only
        for sock in busy:
            sock.sendall(
                b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n["
            )
            seen = b""
            while b"\r\n\r\n" not in seen:
                seen += sock.recv(65536)
            assert seen.startswith(b"HTTP/1.1 200"), seen
        refused = post(server, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1}})
        assert refused.status == 503 and "only a GET route" in refused.json()["error"], refused.body
        assert refused.headers["retry-after"] == "1"
        assert server.request("GET", "/health").status == 200
    finally:
        for sock in busy:
            sock.close()
    # headers that never end: 408 at the header timeout (the sweep), and the connection closed
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        slow.sendall(b"POST /generate HTTP/1.1\r\nHost: t\r\n")
        seen = b""
        while data := slow.recv(65536):
            seen += data
        assert seen.startswith(b"HTTP/1.1 408") and b"header_timeout_seconds" in seen, seen
    finally:
        slow.close()
        stop_all([server])


def test_the_llm_worker_ends_when_its_supervisor_is_killed(llm_dir: Path, tmp_path: Path):
    server = start_server(llm_dir, tmp_path, "--container", "tgi")
    try:
        workers = child_pids(server.proc.pid)
        assert workers, "the supervisor has a worker"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        wait_until(
            lambda: not any(process_alive(p) for p in workers), "the LLM worker gone with its supervisor"
        )
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    finally:
        stop_all([server])


def test_an_llm_worker_whose_supervisor_is_already_gone_does_not_start():
    # its parent is this test, not the (made-up) supervisor it names: it stops before anything else
    proc = run_orphaned_worker("aiops.inference.llm.worker")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
