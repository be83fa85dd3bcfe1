"""The load of `aiops bench`: what each client thread sends with, the threads of a level, and the load
processes that share a level when one Python process cannot send enough.

The senders are the project's synchronous clients: http.client with one keep-alive connection per thread
for a local URL (``synchronous.connect``), one boto3 ``sagemaker-runtime`` client a process for an endpoint
(``endpoint_request``; no retries: a throttled request is an error here, not a hidden second try). Each
request becomes one :class:`Sample`; any outcome but an answer (2xx, and for an LLM at least one token and
no error event) is an error of a kind (``HTTP 503``, ``connection``, ``ModelError (HTTP 500)``, ...).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiops.inference.client.sse import StreamFormatError, TokenTimes
from aiops.inference.client.synchronous import (
    READ_SIZE,
    PassBody,
    connect,
    copy_body,
    endpoint_request,
    read_error_body,
)

from aiops.errors import UsageError

if TYPE_CHECKING:
    from aiops.inference.client.bench import BenchPlan, Payload

ERROR_EXAMPLE_CHARS = 200
NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}
START_DELAY_S = 0.1  # from the parent's go to every process sending: they are idle, waiting for it

#: (concurrency, requests finished so far, seconds since the level began); called about 10 times a second
OnProgress = Callable[[int, int, float], None]


@dataclass(slots=True)
class Sample:
    """One request's outcome. Times in seconds from sending it."""

    latency: float
    error: str | None = None  # the kind ("HTTP 503", "connection", ...); None: answered
    detail: str = ""  # an example message of that kind
    ttft: float | None = None
    inter_token: float | None = None
    tokens: int = 0
    reached: bool = True  # False: nothing answered (no connection, no status, a timeout)


def _failed(start: float, kind: str, detail: Any = "", *, reached: bool = True) -> Sample:
    text = " ".join(str(detail).split())[:ERROR_EXAMPLE_CHARS]
    return Sample(time.perf_counter() - start, kind, text, reached=reached)


def _streamed(start: float, times: TokenTimes, content_type: str | None) -> Sample:
    times.close()
    if times.error is not None:
        return _failed(start, "stream error", times.error)
    if not times.tokens:
        return _failed(
            start,
            "no tokens",
            f"the answer ({content_type}) carried no token event: is this a TGI or LMI server?",
        )
    return Sample(
        time.perf_counter() - start, ttft=times.ttft, inter_token=times.inter_token, tokens=times.tokens
    )


def _discard(limit: int) -> PassBody:
    return PassBody(lambda data: None, limit)


class UrlSender:
    """One thread's requests to a local server over one keep-alive connection (reopened when the
    server closes it)."""

    def __init__(self, plan: BenchPlan) -> None:
        self.plan = plan
        self.conn: http.client.HTTPConnection | None = None
        self.path = "/invocations"
        self.headers: dict[str, str] = {}
        self.used = 0  # requests answered on the open connection

    def _open(self, content_type: str) -> http.client.HTTPConnection:
        if self.conn is None:
            assert self.plan.url is not None
            self.conn, self.path, self.headers = connect(
                self.plan.url,
                content_type=content_type,
                accept=self.plan.accept,
                api_key=self.plan.api_key,
                timeout=self.plan.timeout_s,
            )
            self.used = 0
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __call__(self, payload: Payload) -> Sample:
        reused = self.conn is not None and self.used > 0
        sample = self._send(payload)
        if reused and sample.error == "connection closed":  # a kept-alive connection the server closed
            sample = self._send(payload)
        return sample

    def _send(self, payload: Payload) -> Sample:
        start = time.perf_counter()
        try:
            conn = self._open(payload.content_type)
            conn.request(
                "POST", self.path, payload.body, {**self.headers, "Content-Type": payload.content_type}
            )
            resp = conn.getresponse()
            if not 200 <= resp.status < 300:
                body = read_error_body(resp.read)
                sample = _failed(start, f"HTTP {resp.status}", _error_text(body))
            elif self.plan.llm:
                ctype = resp.getheader("Content-Type")
                times, sink = TokenTimes(ctype, start), _discard(self.plan.max_response_bytes)
                while chunk := resp.read1(READ_SIZE):
                    sink.write(chunk)
                    times.feed(chunk)
                sample = _streamed(start, times, ctype)
            else:
                copy_body(resp.read, _discard(self.plan.max_response_bytes))
                sample = Sample(time.perf_counter() - start)
            if not resp.isclosed():  # an error body past its first block: the connection cannot be reused
                self.close()
            self.used += 1
            return sample
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as err:
            self.close()
            return _failed(start, "connection closed", err, reached=False)
        except TimeoutError as err:
            self.close()
            return _failed(
                start, "timeout", f"no answer within {self.plan.timeout_s:g} s ({err})", reached=False
            )
        except (OSError, http.client.HTTPException) as err:
            self.close()
            return _failed(start, "connection", err, reached=False)
        except StreamFormatError as err:
            self.close()
            return _failed(start, "bad stream", err)
        except UsageError as err:  # the answer is larger than the response cap
            self.close()
            return _failed(start, "too large", err)


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("error"):
            return str(doc["error"])
    except ValueError:
        pass
    return body[:ERROR_EXAMPLE_CHARS].decode("utf-8", "replace")


class EndpointSender:
    """One thread's requests to a deployed endpoint through the shared boto3 client."""

    def __init__(self, plan: BenchPlan, client: Any) -> None:
        self.plan = plan
        self.client = client

    def close(self) -> None:
        pass

    def __call__(self, payload: Payload) -> Sample:
        from aiops import aws

        assert self.plan.endpoint is not None
        kwargs = endpoint_request(
            self.plan.endpoint,
            payload.body,
            content_type=payload.content_type,
            accept=self.plan.accept,
            inference_component=self.plan.inference_component,
        )
        start = time.perf_counter()
        try:
            if not self.plan.llm:
                resp = self.client.invoke_endpoint(**kwargs)
                try:
                    copy_body(resp["Body"].read, _discard(self.plan.max_response_bytes))
                finally:
                    resp["Body"].close()
                return Sample(time.perf_counter() - start)
            resp = self.client.invoke_endpoint_with_response_stream(**kwargs)
            ctype = resp.get("ContentType")
            times, sink = TokenTimes(ctype, start), _discard(self.plan.max_response_bytes)
            try:
                for event in resp["Body"]:
                    part = (event.get("PayloadPart") or {}).get("Bytes")
                    if part:
                        sink.write(part)
                        times.feed(part)
            finally:  # a stream left early (refused, too large) gives its connection back
                resp["Body"].close()
            return _streamed(start, times, ctype)
        except StreamFormatError as err:
            return _failed(start, "bad stream", err)
        except UsageError as err:
            return _failed(start, "too large", err)
        except Exception as err:
            if not aws.is_aws_error(err):
                raise
            kind = _aws_kind(err)
            return _failed(start, kind, err, reached="(HTTP " in kind)


def _aws_kind(err: BaseException) -> str:
    """``ModelError (HTTP 500)``, ``ThrottlingException (HTTP 400)``, or the error's class name."""
    response = getattr(err, "response", None) or {}
    code = (response.get("Error") or {}).get("Code") or type(err).__name__
    status = response.get("OriginalStatusCode") or (response.get("ResponseMetadata") or {}).get(
        "HTTPStatusCode"
    )
    return f"{code} (HTTP {status})" if status else str(code)


@dataclass
class Driven:
    """What one process's threads did in a level: every sample, and when the level began and ended for it
    (``time.perf_counter``, CLOCK_MONOTONIC on Linux: one clock for every process of the machine)."""

    samples: list[Sample]
    start: float
    end: float


def drive(
    send_factory: Callable[[], Any],
    payloads: Sequence[Payload],
    concurrency: int,
    *,
    duration_s: float,
    requests: int,
    start_at: float | None = None,
    on_count: Callable[[int, float], None] | None = None,
) -> Driven:
    """``concurrency`` threads send until ``requests`` are claimed or ``duration_s`` has passed (from
    ``start_at`` when given, else now). ``on_count(finished, seconds)`` about 10 times a second."""
    lock = threading.Lock()
    claimed = 0
    samples: list[Sample] = []
    ends: list[float] = []
    stop = threading.Event()
    failures: list[BaseException] = []
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.perf_counter()))
    start = time.perf_counter()
    deadline = start + duration_s

    def client() -> None:
        nonlocal claimed
        sender = send_factory()
        try:
            while not stop.is_set():
                with lock:
                    if claimed >= requests or time.perf_counter() >= deadline:
                        break
                    index = claimed
                    claimed += 1
                samples.append(sender(payloads[index % len(payloads)]))
        except BaseException as err:  # a bug, not an answer: stop the level and raise it in the caller
            failures.append(err)
            stop.set()
        finally:
            sender.close()
            ends.append(time.perf_counter())

    threads = [threading.Thread(target=client, name=f"bench-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)
                if on_count is not None:
                    on_count(len(samples), time.perf_counter() - start)
    except KeyboardInterrupt:
        stop.set()  # nothing new is sent
        raise
    if failures:
        raise failures[0]
    if on_count is not None:
        on_count(len(samples), time.perf_counter() - start)
    return Driven(samples, start, max(ends))


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` as evenly as can be: 7 in 3 -> [3, 2, 2]."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def sender_factory(plan: BenchPlan, threads: int) -> Callable[[], Any]:
    """What each client thread sends with: its own keep-alive connection to a URL, or the one boto3
    client of this process (a connection a thread in its pool, no retries)."""
    if not plan.endpoint:
        return lambda: UrlSender(plan)
    from aiops import aws

    client = aws.client("sagemaker-runtime", plan.region, retries=NO_RETRIES, max_pool_connections=threads)
    return lambda: EndpointSender(plan, client)


def _child(conn: Any, plan: BenchPlan, counts: Any, slot: int, threads: int) -> None:
    """A load process: its senders made once, then one level per message until None."""
    try:
        factory = sender_factory(plan, threads)
        conn.send(("ready", None))
        while (job := conn.recv()) is not None:
            concurrency, requests, start_at = job

            def count(finished: int, seconds: float) -> None:
                counts[slot] = finished

            driven = drive(
                factory,
                plan.payloads,
                concurrency,
                duration_s=plan.duration_s,
                requests=requests,
                start_at=start_at,
                on_count=count,
            )
            conn.send(("done", driven))
    except KeyboardInterrupt:
        pass
    except BaseException as err:
        conn.send(("failed", f"{type(err).__name__}: {err}"))


class Processes:
    """``processes`` load processes (spawned: no fork of a threaded parent), each driving its share of a
    level's clients and requests, started together at one instant of the machine's monotonic clock."""

    def __init__(self, plan: BenchPlan, processes: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.plan = plan
        self.counts = ctx.Array("q", processes, lock=False)
        self.children: list[tuple[Any, Any]] = []
        most = max(shares(max(plan.concurrency), processes))
        for slot in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_child,
                args=(child, plan, self.counts, slot, most),
                name=f"aiops-bench-{slot}",
                daemon=True,
            )
            proc.start()
            self.children.append((proc, parent))
        for _, conn in self.children:
            self._receive(conn, "ready")

    def _receive(self, conn: Any, expected: str) -> Any:
        from aiops.errors import AiopsError

        try:
            kind, value = conn.recv()
        except EOFError:
            raise AiopsError("a load process ended before it answered; see the messages above") from None
        if kind != expected:
            raise AiopsError(f"a load process failed: {value}")
        return value

    def level(self, concurrency: int, on_progress: OnProgress | None = None) -> tuple[list[Sample], float]:
        """One level: every process's samples, and its time from the first start to the last end."""
        busy = self.children[: min(len(self.children), concurrency)]
        threads = shares(concurrency, len(busy))
        budgets = shares(self.plan.requests, len(busy))
        for slot in range(len(self.counts)):
            self.counts[slot] = 0
        start_at = time.perf_counter() + START_DELAY_S
        for (_, conn), clients, budget in zip(busy, threads, budgets, strict=True):
            conn.send((clients, budget, start_at))
        driven: list[Driven] = []
        for _, conn in busy:
            while not conn.poll(0.1):
                if on_progress is not None:
                    on_progress(concurrency, sum(self.counts), max(0.0, time.perf_counter() - start_at))
            driven.append(self._receive(conn, "done"))
        samples = [sample for part in driven for sample in part.samples]
        seconds = max(d.end for d in driven) - min(d.start for d in driven)
        if on_progress is not None:
            on_progress(concurrency, len(samples), seconds)
        return samples, seconds

    def close(self) -> None:
        for proc, conn in self.children:
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
