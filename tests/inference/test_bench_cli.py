"""`aiops bench`: a real `aiops serve` of a handler model, a TGI-format event-stream server for LLM mode,
the stack-file edit, the refusals. Counts are checked, never timings."""

from __future__ import annotations

import difflib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from aiops.inference.client.bench import llm_payloads, parse_concurrency, percentile, round_down
from aiops.inference.client.sse import EventReader, TokenTimes

from .conftest import ECHO, NO_TORCH_MODEL_FN, write_script

REPO = Path(__file__).resolve().parents[2]

# Call n of the worker: n % 3 == 1 answers, == 2 refuses with 422, == 0 fails with a 500.
EVERY_THIRD = (
    NO_TORCH_MODEL_FN
    + """
import json

class Refused(Exception):
    status_code = 422
    message = "refused [bold]on[/bold] purpose"  # shown as written, not as rich markup

calls = [0]

def input_fn(body, content_type):
    return json.loads(body)

def predict_fn(data, model):
    calls[0] += 1
    if calls[0] % 3 == 2:
        raise Refused()
    if calls[0] % 3 == 0:
        raise ValueError("failed on purpose")
    return data
"""
)


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "body.json"
    path.write_text('{"inputs": [1, 2, 3]}')
    return path


def _levels(result) -> dict[int, dict]:
    assert result.returncode == 0, result.output
    return {level["concurrency"]: level for level in json.loads(result.stdout)["levels"]}


def test_handler_sweep_counts_every_request_and_each_error_status(run_cli, start_server, tmp_path, body_file):
    folder = tmp_path / "every-third"
    write_script(folder, EVERY_THIRD)
    server = start_server(folder)
    common = ["--url", server.url, "--body", str(body_file), "--requests", "12", "--duration", "300"]

    result = run_cli("bench", *common, "--concurrency", "1,3", "--json")
    levels = _levels(result)
    assert sorted(levels) == [1, 3]
    for level in levels.values():
        # one worker counts its calls: any 12 in a row hold 4 of each outcome, whatever the interleaving
        assert level["requests"] == 12 and level["ok"] == 4 and level["errors"] == 8
        assert level["errors_by_kind"] == {"HTTP 422": 4, "HTTP 500": 4}
        assert "refused [bold]on[/bold] purpose" in level["error_examples"]["HTTP 422"]
        assert level["p50_ms"] <= level["p99_ms"] and level["rps"] > 0
        assert level["output_tokens"] is None and level["ttft_p50_ms"] is None  # not an LLM
    assert "c=1: 12 requests (8 errors)" in result.stderr  # the progress lines off a terminal

    # the table has every level and names the errors; an SLO that no level keeps (all have errors) is exit 1
    stack = tmp_path / "Pulumi.dev.yaml"
    shutil.copy(REPO / "Pulumi.dev.yaml", stack)
    before = stack.read_text()
    table = run_cli(
        "bench",
        *common,
        "--concurrency",
        "2,4",
        "--slo-p99-ms",
        "60000",
        "--write-stack",
        "dev",
        "-C",
        str(tmp_path),
    )
    assert table.returncode == 1, table.output
    rows = [line.split() for line in table.stdout.splitlines() if line.strip()[:1] in "│|"]
    assert [r[1] for r in rows if r[1].isdigit()] == ["2", "4"], table.stdout
    assert "c=2: 4 x HTTP 422: refused [bold]on[/bold] purpose" in table.stdout
    assert table.stderr.strip().splitlines()[-1] == (
        "error: no level kept p99 <= 60000 ms with no errors; nothing to recommend, dev left as it was"
    )
    assert stack.read_text() == before

    # the same server as an endpoint, through boto3 with no retries: each refusal is one request, a
    # ModelError (or the 4xx the runtime answers) carrying the container's status
    remote = run_cli(
        "bench",
        "--endpoint",
        "my-model",
        *common[2:],
        "--concurrency",
        "1,2",
        "--json",
        env={**AWS_ENV, "AWS_ENDPOINT_URL": server.url},
    )
    assert json.loads(remote.stdout)["target"] == "endpoint my-model"
    for level in _levels(remote).values():
        assert level["requests"] == 12 and level["ok"] == 4 and level["errors"] == 8
        assert level["errors_by_kind"] == {"ValidationError (HTTP 422)": 4, "ModelError (HTTP 500)": 4}


def test_the_measured_rate_is_written_into_the_stack_file_and_nothing_else(
    run_cli, start_server, tmp_path, body_file
):
    folder = tmp_path / "echo"
    write_script(folder, ECHO)
    server = start_server(folder)
    stack = tmp_path / "Pulumi.prod.yaml"
    shutil.copy(REPO / "Pulumi.prod.yaml", stack)
    before = stack.read_text()
    plot = tmp_path / "sweep.png"

    result = run_cli(
        "bench",
        "--url",
        server.url,
        "--body",
        str(body_file),
        "--concurrency",
        "1,2",
        "--requests",
        "20",
        "--duration",
        "300",
        "--slo-p99-ms",
        "600000",  # every level keeps it: the choice is the highest level
        "--instances",
        "2",
        "--write-stack",
        "prod",
        "-C",
        str(tmp_path),
        "--plot",
        str(plot),
        "--json",
    )
    assert result.returncode == 0, result.output
    report = json.loads(result.stdout)
    assert [lv["requests"] for lv in report["levels"]] == [20, 20]
    assert [lv["errors"] for lv in report["levels"]] == [0, 0]
    assert report["best_concurrency"] == 2 and report["instances"] == 2
    best_rps = max(lv["rps"] for lv in report["levels"])
    written = report["max_rps_per_instance"]
    assert written == round_down(best_rps / 2) and 0 < written <= best_rps / 2

    after = stack.read_text()
    assert _diff(before, after) == ["-      maxRpsPerInstance: 40", f"+      maxRpsPerInstance: {written:g}"]
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    old["config"]["aiops:endpoint"]["autoscaling"]["maxRpsPerInstance"] = written
    assert new == old
    assert f"maxRpsPerInstance: {written:g} to {stack}" in result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------- LLM mode, TGI events


class FakeTgi(BaseHTTPRequestHandler):
    """TGI's /invocations with "stream": true: one `data:{...}` event and a blank line per token, each
    event written in two pieces so the client meets events split across reads. A prompt's tokens: its
    words, at most max_new_tokens. Prompt "fail": a 200 whose stream is one error event (as TGI refuses a
    streamed request); "bad": a 422 before the stream."""

    seen: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(request)
        prompt, limit = request["inputs"], request["parameters"]["max_new_tokens"]
        if prompt == "bad":
            body = json.dumps({"error": "Input validation error: bad", "error_type": "validation"}).encode()
            self.send_response(422)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b":keep-alive comment, not a token\n\n")
        if prompt == "fail":
            self.wfile.write(
                b'data:{"error":"Request failed during generation","error_type":"generation"}\n\n'
            )
            return
        words = prompt.split()[:limit]
        for i, word in enumerate(words):
            last = i == len(words) - 1
            event = {
                "index": i + 1,
                "token": {"id": i, "text": f" {word}", "logprob": -0.5, "special": False},
                "generated_text": " ".join(words) if last else None,
                "details": None,
            }
            data = b"data:" + json.dumps(event).encode() + b"\n\n"
            self.wfile.write(data[:7])
            self.wfile.flush()
            self.wfile.write(data[7:])
            self.wfile.flush()


@pytest.fixture
def fake_tgi():
    FakeTgi.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTgi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("as_jsonl", [False, True], ids=["text", "jsonl"])
def test_llm_sweep_counts_tokens_from_the_events(run_cli, fake_tgi, tmp_path, as_jsonl):
    prompts = ["a b c", "one two", "fail", "x y z w v", "bad"]
    path = tmp_path / "prompts.txt"
    lines = [json.dumps({"inputs": p}) for p in prompts] if as_jsonl else prompts
    if as_jsonl:  # a line with its own output length
        lines[3] = json.dumps({"inputs": "x y z w v", "parameters": {"max_new_tokens": 5, "seed": 1}})
    path.write_text("\n".join(lines) + "\n\n")
    result = run_cli(
        "bench",
        "--url",
        fake_tgi,
        "--prompts",
        str(path),
        "--max-new-tokens",
        "4",
        "--concurrency",
        "1,2",
        "--requests",
        "10",
        "--duration",
        "300",
        "--json",
        # the same counts from two load processes (at c=2 one client and 5 requests each)
        *(["--processes", "2"] if as_jsonl else []),
    )
    levels = _levels(result)
    for level in levels.values():
        # each prompt twice a level: 3 + 2 + min(4 or 5, 5) tokens answered, "fail" and "bad" are errors
        assert level["requests"] == 10 and level["ok"] == 6 and level["errors"] == 4
        assert level["output_tokens"] == 2 * (3 + 2 + (5 if as_jsonl else 4))
        assert level["errors_by_kind"] == {"HTTP 422": 2, "stream error": 2}
        assert level["error_examples"]["stream error"] == "Request failed during generation (generation)"
        assert level["ttft_p50_ms"] <= level["ttft_p99_ms"] <= level["p99_ms"]
        assert level["inter_token_p50_ms"] is not None and level["output_tokens_per_s"] > 0
    assert len(FakeTgi.seen) == 21  # the warm-up request, then 10 a level
    assert FakeTgi.seen[0] == {"inputs": "a b c", "parameters": {"max_new_tokens": 4}, "stream": True}
    own = {"max_new_tokens": 5, "seed": 1} if as_jsonl else {"max_new_tokens": 4}
    assert FakeTgi.seen[4] == {"inputs": "x y z w v", "parameters": own, "stream": True}


# A handler that streams TGI's events: one a word of the prompt, at most max_new_tokens.
TGI_EVENTS = (
    NO_TORCH_MODEL_FN
    + """
import json

def input_fn(body, content_type):
    return json.loads(body)

def events(words):
    for i, word in enumerate(words):
        token = {"id": i, "text": " " + word, "logprob": -0.1, "special": False}
        event = {"index": i + 1, "token": token, "generated_text": None, "details": None}
        yield ("data:" + json.dumps(event) + "\\n\\n").encode()

def predict_fn(data, model):
    assert data["stream"] is True
    return events(data["inputs"].split()[: data["parameters"]["max_new_tokens"]])

def output_fn(prediction, accept):
    return prediction, "text/event-stream"
"""
)


def test_llm_mode_through_aiops_serve_chunked_and_as_an_endpoint_response_stream(
    run_cli, start_server, tmp_path
):
    folder = tmp_path / "tgi-events"
    write_script(folder, TGI_EVENTS)
    server = start_server(folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a b c\none two three four five six\n")
    common = ["--prompts", str(prompts), "--max-new-tokens", "5", "--requests", "4", "--duration", "300"]
    common += ["--concurrency", "1,2", "--json"]
    local = run_cli("bench", "--url", server.url, *common)
    remote = run_cli(
        "bench", "--endpoint", "my-llm", *common, env={**AWS_ENV, "AWS_ENDPOINT_URL": server.url}
    )
    for result in (local, remote):  # chunked /invocations; InvokeEndpointWithResponseStream's PayloadParts
        for level in _levels(result).values():
            assert level["requests"] == 4 and level["errors"] == 0, level
            assert level["output_tokens"] == 2 * (3 + 5)
            assert level["ttft_p99_ms"] <= level["p99_ms"]


@pytest.mark.parametrize("container", ["tgi", "lmi"])
def test_the_request_is_the_containers_and_their_stream_is_counted_token_by_token(container):
    """The project's twins of TGI's and LMI's /invocations read the bench's request as a streamed generate
    call; the bytes they answer, fed one at a time, give one token per generated token."""
    from aiops.inference.llm import api_lmi, api_tgi
    from aiops.inference.llm.calls import ModelContext
    from aiops.inference.llm.generation import Finished, Token, TokenEvent

    api = {"tgi": api_tgi, "lmi": api_lmi}[container]
    call = api.parse_invocations(llm_payloads(["hello there"], 3)[0].body, ModelContext("m"))
    assert call.stream and call.requests[0].params.max_new_tokens == 3
    tokens = [Token(i, f" t{i}", -0.1, False) for i in range(3)]
    data = call.head() + b"".join(call.event(0, TokenEvent(t, i + 1)) for i, t in enumerate(tokens[:2]))
    data += call.event(0, Finished("length", tokens[2], 3, " t0 t1 t2", 2, tuple(tokens))) + call.end()
    clock = iter(range(1, len(data) + 1))
    times = TokenTimes(call.content_type, start=0.0, clock=lambda: float(next(clock)))
    for byte in data:
        times.feed(bytes([byte]))
    times.close()
    assert times.tokens == 3 and times.error is None
    # each token is timed at the byte that completed its event (the clock ticks once a token)
    assert times.arrivals == [1.0, 2.0, 3.0]


def test_llm_table_has_the_token_columns(run_cli, fake_tgi, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a b c d e f\n")
    result = run_cli(
        "bench",
        "--url",
        fake_tgi,
        "--prompts",
        str(path),
        "--concurrency",
        "1,2",
        "--requests",
        "4",
        "--slo-p99-ms",
        "600000",
        "--slo-ttft-p99-ms",
        "600000",
    )
    assert result.returncode == 0, result.output
    assert "TTFT p99" in result.stdout and "tokens/s" in result.stdout
    assert "highest concurrency keeping p99 <= 600000 ms and TTFT p99 <= 600000 ms: 2 (*)" in result.stdout


# ------------------------------------------------------------------------------- the event reader


def test_token_times_follow_the_events_not_the_bytes():
    now = [0.0]
    times = TokenTimes("text/event-stream; charset=utf-8", start=0.0, clock=lambda: now[0])
    chunks = [
        (1.0, b": ping\r\n\r\nda"),  # a comment, then half a field name
        (2.0, b'ta: {"token": {"id": 1, "text": "a"}}\r'),  # the event's line, its CRLF split
        (3.0, b"\n\r\n"),  # the blank line: the first token is complete now
        (4.0, b'data:{"token": {"id": 2, "text": "b"}}\n\ndata:{"token": {"id": 3'),
        (6.0, b', "text": "c"}, "generated_text": "abc"}\n\ndata: [DONE]\n\n'),
    ]
    for at, chunk in chunks:
        now[0] = at
        times.feed(chunk)
    times.close()
    assert times.arrivals == [3.0, 4.0, 6.0] and times.tokens == 3
    assert times.ttft == 3.0 and times.inter_token == 1.5 and times.error is None


def test_event_reader_multi_line_data_json_lines_and_a_cut_event():
    sse = EventReader("text/event-stream")
    assert list(sse.feed(b'event: x\nid: 1\ndata: {"a":\ndata: 1}\n\n')) == [{"a": 1}]
    assert list(sse.feed(b'data: {"b": 2}\n')) == [] and list(sse.close()) == []  # no blank line: dropped
    lines = EventReader("application/jsonlines")
    assert list(lines.feed(b'{"token": {"id": 1}}\n{"token": ')) == [{"token": {"id": 1}}]
    assert list(lines.feed(b'{"id": 2}}')) == [] and list(lines.close()) == [{"token": {"id": 2}}]
    errors = TokenTimes("text/event-stream", start=0.0, clock=lambda: 1.0)
    errors.feed(b'data:{"token": {"id": 1}}\n\ndata:{"error": "boom", "error_type": "generation"}\n\n')
    assert errors.tokens == 1 and errors.error == "boom (generation)"


def test_percentiles_rounding_and_levels():
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile(list(range(1, 101)), 99) == 99 and percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert round_down(1234.5) == 1230 and round_down(23.47) == 23.4 and round_down(0.5678) == 0.567
    assert round_down(100.0) == 100 and round_down(0.0) == 0.0
    assert parse_concurrency(" 16, 1,4") == (1, 4, 16)


# ------------------------------------------------------------------------------- the stack file


def _diff(before: str, after: str) -> list[str]:
    """The changed lines, each as its sign and the line."""
    return [d[0] + d[2:] for d in difflib.ndiff(before.splitlines(), after.splitlines()) if d[:1] in "+-"]


def test_stack_edit_keeps_comments_and_adds_a_missing_block(tmp_path):
    from aiops.infra.stack_file import set_max_rps_per_instance

    dev = tmp_path / "Pulumi.dev.yaml"
    dev.write_text(
        (REPO / "Pulumi.dev.yaml")
        .read_text()
        .replace("maxRpsPerInstance: 20", "maxRpsPerInstance: 20  # measured")
    )
    before = dev.read_text()
    assert set_max_rps_per_instance(dev, 31.5) == []
    assert _diff(before, dev.read_text()) == [
        "-      maxRpsPerInstance: 20  # measured",
        "+      maxRpsPerInstance: 31.5  # measured",
    ]

    llm = tmp_path / "Pulumi.llm.yaml"
    shutil.copy(REPO / "Pulumi.llm.yaml", llm)
    before = llm.read_text()
    warnings = set_max_rps_per_instance(llm, 7)
    assert len(warnings) == 1 and "inferenceComponents" in warnings[0]
    added = _diff(before, llm.read_text())
    assert added == ["+    autoscaling:", "+      maxRpsPerInstance: 7"]
    expected = yaml.safe_load(before)
    expected["config"]["aiops:endpoint"]["autoscaling"] = {"maxRpsPerInstance": 7}
    assert yaml.safe_load(llm.read_text()) == expected
    # checking only writes nothing
    assert (
        set_max_rps_per_instance(llm, 9, write=False) == warnings
        and "maxRpsPerInstance: 7" in llm.read_text()
    )


HEAD = "config:\n  aws:region: us-east-1\n  aiops:endpoint:\n    enabled: true\n    modelDataUrl: s3://aiops-bucket/models/model.tar.gz\n"


@pytest.mark.parametrize(
    "before, after",
    [
        (  # no line end at the end of the file
            HEAD + "    autoscaling:\n      minCapacity: 1",
            HEAD + "    autoscaling:\n      minCapacity: 1\n      maxRpsPerInstance: 12.5\n",
        ),
        (  # quoted keys, the value's comment
            HEAD.replace("aiops:endpoint:", "'aiops:endpoint':")
            + '    "autoscaling":\n      "maxRpsPerInstance": 3 # old\n',
            HEAD.replace("aiops:endpoint:", "'aiops:endpoint':")
            + '    "autoscaling":\n      "maxRpsPerInstance": 12.5 # old\n',
        ),
        (  # a block with no value yet, then a comment and another section
            HEAD + "    autoscaling:\n    # on demand\n  aiops:compute:\n    enabled: false\n",
            HEAD
            + "    autoscaling:\n      maxRpsPerInstance: 12.5\n    # on demand\n"
            + "  aiops:compute:\n    enabled: false\n",
        ),
        (  # CRLF line ends stay CRLF, the added lines too
            HEAD.replace("\n", "\r\n"),
            (HEAD + "    autoscaling:\n      maxRpsPerInstance: 12.5\n").replace("\n", "\r\n"),
        ),
    ],
    ids=["no-final-newline", "quoted-keys", "empty-block", "crlf"],
)
def test_stack_edit_keeps_the_files_own_writing(tmp_path, before, after):
    from aiops.infra.stack_file import set_max_rps_per_instance

    path = tmp_path / "Pulumi.x.yaml"
    path.write_bytes(before.encode())
    assert set_max_rps_per_instance(path, 12.5) == []
    assert path.read_bytes().decode() == after


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "config:\n  aiops:endpoint:\n    autoscaling: {minCapacity: 1}\n",
            "cannot edit aiops:endpoint.autoscaling.maxRpsPerInstance in place",
        ),
        (
            "config:\n  aiops:endpoint:\n    autoscaling:\n      targetInvocationsPerInstance: 100\n",
            "targetInvocationsPerInstance is set and takes precedence",
        ),
        ("config:\n  aws:region: us-east-1\n", "no aiops:endpoint section"),
        ("config: [1\n", "malformed stack file"),
    ],
    ids=["flow-style", "explicit-target", "no-endpoint", "not-yaml"],
)
def test_stack_edit_refuses_what_it_cannot_do_safely(tmp_path, text, message):
    from aiops.infra.stack_file import set_max_rps_per_instance

    from aiops.errors import ConfigError

    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        set_max_rps_per_instance(path, 5)
    assert message in str(err.value) and path.read_text() == text


# ------------------------------------------------------------------------------- refusals


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "body.json").write_text("{}")
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "prompts.txt").write_text("hello\n")
    (tmp_path / "bad.jsonl").write_text('{"inputs": "a"}\n{"nope": 1}\n')
    (tmp_path / "bad-tokens.jsonl").write_text('{"inputs": "a", "parameters": {"max_new_tokens": "9"}}\n')
    return {"dir": str(tmp_path)}


REFUSALS = [
    (["--body", "body.json"], "no target: give --url"),
    (
        ["--url", "http://127.0.0.1:1", "--endpoint", "e", "--body", "body.json"],
        "give --url or --endpoint, not both",
    ),
    (["--url", "http://example.com:8080", "--body", "body.json"], "not a local address"),
    (["--url", "http://10.0.0.8:8080", "--body", "body.json"], "not a local address"),
    (["--url", "http://127.0.0.1:1"], "no payload: give --body FILE"),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--prompts", "prompts.txt"], "not both"),
    (["--url", "http://127.0.0.1:1", "--body", "missing.json"], "--body missing.json: cannot read it"),
    (["--url", "http://127.0.0.1:1", "--prompts", "empty.txt"], "no prompt in it"),
    (["--url", "http://127.0.0.1:1", "--prompts", "bad.jsonl"], "line 2: expected a string or an object"),
    (
        ["--url", "http://127.0.0.1:1", "--prompts", "bad-tokens.jsonl"],
        "line 1: max_new_tokens must be an integer",
    ),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--concurrency", "1,x"], "comma-separated list"),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--concurrency", "0,4"], "between 1 and 1024"),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--concurrency", "4,4"], "given twice"),
    (
        ["--url", "http://127.0.0.1:1", "--body", "body.json", "--concurrency", "4", "--slo-p99-ms", "50"],
        "two levels",
    ),
    (
        ["--url", "http://127.0.0.1:1", "--body", "body.json", "--write-stack", "dev"],
        "--write-stack needs an SLO",
    ),
    (
        ["--url", "http://127.0.0.1:1", "--body", "body.json", "--slo-p99-ms", "50", "--write-stack", "nope"],
        "Pulumi.nope.yaml: no such stack file",
    ),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--plot", "out.svg"], "name a .png file"),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--max-new-tokens", "5"], "needs --prompts"),
    (["--url", "http://127.0.0.1:1", "--prompts", "prompts.txt", "--max-new-tokens", "0"], "between 1 and"),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--duration", "0"], "--duration 0: must be in"),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--requests", "0"], "--requests 0: must be"),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--slo-ttft-p99-ms", "5"], "needs --prompts"),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--warmup", "-1"], "--warmup -1: must be"),
    (["--url", "http://127.0.0.1:1", "--body", "body.json", "--processes", "0"], "--processes 0: must be"),
    (
        ["--url", "http://127.0.0.1:1", "--body", "body.json", "--slo-p99-ms", "-5"],
        "--slo-p99-ms -5: must be",
    ),
]


@pytest.mark.parametrize("args, message", REFUSALS, ids=[m for _, m in REFUSALS])
def test_bad_input_is_one_line_exit_2_before_any_request(cli_in_process, inputs, args, message):
    result = cli_in_process("bench", *args, cwd=Path(inputs["dir"]))
    assert result.returncode == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == ""


def test_bad_input_in_a_fresh_process_too(run_cli, tmp_path):
    result = run_cli("bench", "--url", "https://api.example.com", "--body", "x.json")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_nothing_listening_fails_at_the_warm_up_in_one_line(cli_in_process, body_file):
    from helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = cli_in_process("bench", "--url", url, "--body", str(body_file))
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}: the warm-up request failed (connection")
    assert lines[0].endswith("nothing was measured")
