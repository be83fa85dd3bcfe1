"""`aiops bench`: a closed-loop load test of a local server or a deployed endpoint, one concurrency level
after another.

At each level, ``c`` client threads each send a request, wait for its whole answer, and send the next,
until the level's request budget is spent or its duration has passed (requests in flight then finish).
Payloads are taken in turn, round-robin over the request index. Two kinds:

- a handler model: one body (``--body FILE``) with its Content-Type, the answer read whole;
- an LLM: one prompt a request, in the TGI/LMI generate schema with ``"stream": true``; the answer's
  token events (``sse.TokenTimes``) give the time to first token, the inter-token latency and the
  output tokens.

How requests are sent (the senders, the threads, the load processes) is :mod:`.load`. A level's figures
count answered requests only (2xx, and for an LLM at least one token and no error event); every other
outcome is an error, counted by kind.
"""

from __future__ import annotations

import ipaddress
import json
import math
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiops.inference.client.load import OnProgress, Processes, Sample, drive, sender_factory
from aiops.inference.client.synchronous import DEFAULT_MAX_RESPONSE_MB, MIB

from aiops.errors import UsageError

MAX_CONCURRENCY = 1024  # client threads of a level, over all its processes
MAX_PROCESSES = 64
MAX_LEVELS = 16
MAX_DURATION_S = 3600.0
MAX_REQUESTS = 1_000_000  # per level; each answered request keeps one small record
MAX_NEW_TOKENS = 100_000
DEFAULT_CONCURRENCY = (1, 4, 16)
DEFAULT_DURATION_S = 10.0
DEFAULT_REQUESTS = 10_000
DEFAULT_TIMEOUT_S = 60.0  # SageMaker's own limit for a real-time invocation
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_WARMUP = 1
MAX_WARMUP = 10_000


# ------------------------------------------------------------------------------------------ input


@dataclass(frozen=True)
class Payload:
    body: bytes
    content_type: str


def parse_concurrency(text: str) -> tuple[int, ...]:
    """``1,4,16`` -> (1, 4, 16): distinct integers in 1..MAX_CONCURRENCY, at most MAX_LEVELS, ascending."""
    items = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part.isdigit() for part in items):
        raise UsageError(
            f"--concurrency {text!r}: expected a comma-separated list of positive integers, e.g. 1,4,16"
        )
    levels = [int(part) for part in items]
    if any(not 1 <= level <= MAX_CONCURRENCY for level in levels):
        raise UsageError(f"--concurrency {text!r}: each level must be between 1 and {MAX_CONCURRENCY}")
    if len(set(levels)) != len(levels):
        raise UsageError(f"--concurrency {text!r}: a level is given twice; give each once")
    if len(levels) > MAX_LEVELS:
        raise UsageError(f"--concurrency {text!r}: at most {MAX_LEVELS} levels")
    return tuple(sorted(levels))


def check_url(url: str) -> str:
    """A local server's URL (loopback only); anything else is refused: a deployed endpoint is benched
    by name through SageMaker (--endpoint), and aiops loads no other host."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UsageError(f"--url {url}: expected http://HOST:PORT") from None
    host = parsed.hostname or ""
    if parsed.scheme not in ("http", "https") or not host:
        raise UsageError(f"--url {url}: expected http://HOST:PORT")
    if host != "localhost":
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = False
        if not local:
            raise UsageError(
                f"--url {url}: not a local address; aiops bench loads only a local server "
                "(127.0.0.1, localhost, ::1) or a SageMaker endpoint by name (--endpoint NAME)"
            )
    return url


def read_file(path: Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot read it ({err.strerror or err})") from None


def handler_payloads(path: Path, content_type: str | None) -> list[Payload]:
    """The one body of a handler model's requests; its type from ``--content-type``, else the suffix."""
    from aiops.inference.client.synchronous import _BY_SUFFIX

    body = read_file(path, "--body")
    return [Payload(body, content_type or _BY_SUFFIX.get(Path(path).suffix.lower(), "application/json"))]


@dataclass(frozen=True)
class Prompt:
    text: str
    parameters: dict[str, Any] = field(default_factory=dict)  # a JSON line's own, over the defaults


def read_prompts(path: Path) -> list[Prompt]:
    """One prompt a line, or JSON lines (when the first line is a JSON object): each a JSON string or an
    object with ``inputs`` (or ``prompt``) and optionally its own TGI ``parameters`` (its output length:
    ``{"max_new_tokens": 64}``). Blank lines are skipped."""
    raw = read_file(path, "--prompts")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"--prompts {path}: not UTF-8 text (byte {err.start})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise UsageError(f"--prompts {path}: no prompt in it; write one prompt a line (or JSON lines)")
    if not _is_json_object(lines[0][1]):
        return [Prompt(line) for _, line in lines]
    return [_json_prompt(path, n, line) for n, line in lines]


def _json_prompt(path: Path, n: int, line: str) -> Prompt:
    where = f"--prompts {path}: line {n}"
    try:
        value = json.loads(line)
    except ValueError:
        raise UsageError(f"{where} is not JSON (the file is JSON lines: its first line is)") from None
    prompt = value.get("inputs", value.get("prompt")) if isinstance(value, dict) else value
    if not isinstance(prompt, str) or not prompt:
        raise UsageError(
            f'{where}: expected a string or an object with a non-empty "inputs" (or "prompt") string'
        )
    parameters = value.get("parameters", {}) if isinstance(value, dict) else {}
    if not isinstance(parameters, dict):
        raise UsageError(f'{where}: "parameters" must be an object, e.g. {{"max_new_tokens": 64}}')
    tokens = parameters.get("max_new_tokens")
    if tokens is not None and (type(tokens) is not int or not 1 <= tokens <= MAX_NEW_TOKENS):
        raise UsageError(f"{where}: max_new_tokens must be an integer between 1 and {MAX_NEW_TOKENS}")
    return Prompt(prompt, parameters)


def _is_json_object(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def llm_payloads(prompts: Sequence[Prompt | str], max_new_tokens: int) -> list[Payload]:
    """TGI's generate schema, as LMI also reads it, streamed: ``{"inputs", "parameters", "stream"}``;
    ``max_new_tokens`` for the prompts that do not give their own."""
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: must be between 1 and {MAX_NEW_TOKENS}")
    payloads = []
    for prompt in prompts:
        prompt = Prompt(prompt) if isinstance(prompt, str) else prompt
        parameters = {"max_new_tokens": max_new_tokens, **prompt.parameters}
        body = {"inputs": prompt.text, "parameters": parameters, "stream": True}
        payloads.append(Payload(json.dumps(body).encode(), "application/json"))
    return payloads


# ------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class BenchPlan:
    payloads: tuple[Payload, ...]
    llm: bool
    url: str | None = None
    endpoint: str | None = None
    inference_component: str | None = None
    region: str | None = None
    accept: str | None = None
    api_key: str | None = None
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    duration_s: float = DEFAULT_DURATION_S
    requests: int = DEFAULT_REQUESTS
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_MB * MIB
    slo_p99_ms: float | None = None
    slo_ttft_p99_ms: float | None = None
    instances: int = 1
    warmup: int = DEFAULT_WARMUP  # requests sent one by one before the sweep, not counted
    processes: int = 1  # load processes sharing each level's clients (one: threads of this process)

    def check(self) -> None:
        """The combinations that cannot work, refused before any request."""
        if self.url and self.endpoint:
            raise UsageError("give --url or --endpoint, not both")
        if not self.url and not self.endpoint:
            raise UsageError(
                "no target: give --url http://127.0.0.1:PORT (a local server) or --endpoint NAME"
            )
        if self.url:
            check_url(self.url)
        if not self.payloads:
            raise UsageError("no payload: give --body FILE (a handler model) or --prompts FILE (an LLM)")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise UsageError(f"--duration {self.duration_s:g}: must be in (0, {MAX_DURATION_S:g}] seconds")
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise UsageError(f"--requests {self.requests}: must be between 1 and {MAX_REQUESTS}")
        if not 0 < self.timeout_s <= 600:
            raise UsageError(f"--timeout {self.timeout_s:g}: must be in (0, 600] seconds")
        for flag, bound in (("--slo-p99-ms", self.slo_p99_ms), ("--slo-ttft-p99-ms", self.slo_ttft_p99_ms)):
            if bound is not None and not (math.isfinite(bound) and bound > 0):
                raise UsageError(f"{flag} {bound:g}: must be a number of milliseconds above 0")
        if self.slo_ttft_p99_ms is not None and not self.llm:
            raise UsageError("--slo-ttft-p99-ms needs --prompts (time to first token is an LLM's)")
        slo = self.slo_p99_ms is not None or self.slo_ttft_p99_ms is not None
        if slo and len(self.concurrency) < 2:
            raise UsageError(
                "an SLO picks a level of a sweep: give --concurrency with two levels or more (e.g. 1,4,16)"
            )
        if not 0 <= self.warmup <= MAX_WARMUP:
            raise UsageError(f"--warmup {self.warmup}: must be between 0 and {MAX_WARMUP}")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise UsageError(f"--processes {self.processes}: must be between 1 and {MAX_PROCESSES}")
        if self.instances < 1:
            raise UsageError(f"--instances {self.instances}: must be at least 1")

    @property
    def target(self) -> str:
        return self.url if self.url else f"endpoint {self.endpoint}"


def make_plan(
    *,
    body: Path | None,
    content_type: str | None,
    prompts: Path | None,
    max_new_tokens: int | None,
    concurrency: str,
    **options: Any,
) -> BenchPlan:
    """The command's options as a checked plan: every refusal comes before a request is sent; the target
    and the bounds are checked before the payload files are read."""
    if body is not None and prompts is not None:
        raise UsageError("give --body (a handler model) or --prompts (an LLM), not both")
    if body is None and prompts is None:
        raise UsageError("no payload: give --body FILE (a handler model) or --prompts FILE (an LLM)")
    if prompts is None and max_new_tokens is not None:
        raise UsageError("--max-new-tokens needs --prompts (an LLM's requests)")
    if prompts is not None and content_type is not None:
        raise UsageError("--content-type goes with --body; LLM requests are JSON")
    llm, levels = prompts is not None, parse_concurrency(concurrency)
    BenchPlan(payloads=(Payload(b"", ""),), llm=llm, concurrency=levels, **options).check()
    if prompts is not None:
        tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
        payloads = llm_payloads(read_prompts(prompts), tokens)
    else:
        assert body is not None
        payloads = handler_payloads(body, content_type)
    plan = BenchPlan(payloads=tuple(payloads), llm=llm, concurrency=levels, **options)
    plan.check()
    return plan


# ------------------------------------------------------------------------------------------ levels


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..100): a value that was measured, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


@dataclass
class Level:
    concurrency: int
    requests: int  # sent and finished
    ok: int
    errors: int
    seconds: float  # from the first request sent to the last answer
    rps: float  # answered requests per second
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    inter_token_p50_ms: float | None = None  # each request's mean gap between tokens
    inter_token_p99_ms: float | None = None
    output_tokens: int | None = None
    output_tokens_per_s: float | None = None

    @classmethod
    def of(cls, concurrency: int, samples: Sequence[Sample], seconds: float, *, llm: bool) -> Level:
        answered = [s for s in samples if s.error is None]
        failed = [s for s in samples if s.error is not None]
        kinds = Counter(s.error for s in failed if s.error)
        examples: dict[str, str] = {}
        for s in failed:
            if s.error and s.error not in examples:
                examples[s.error] = s.detail
        latencies = [s.latency for s in answered]
        level = cls(
            concurrency=concurrency,
            requests=len(samples),
            ok=len(answered),
            errors=len(failed),
            seconds=round(seconds, 4),
            rps=round(len(answered) / seconds, 3) if seconds > 0 else 0.0,
            p50_ms=_ms(percentile(latencies, 50)),
            p99_ms=_ms(percentile(latencies, 99)),
            mean_ms=_ms(sum(latencies) / len(latencies)) if latencies else None,
            errors_by_kind=dict(sorted(kinds.items())),
            error_examples=examples,
        )
        if llm:
            ttfts = [s.ttft for s in answered if s.ttft is not None]
            gaps = [s.inter_token for s in answered if s.inter_token is not None]
            tokens = sum(s.tokens for s in answered)
            level.ttft_p50_ms, level.ttft_p99_ms = _ms(percentile(ttfts, 50)), _ms(percentile(ttfts, 99))
            level.inter_token_p50_ms = _ms(percentile(gaps, 50))
            level.inter_token_p99_ms = _ms(percentile(gaps, 99))
            level.output_tokens = tokens
            level.output_tokens_per_s = round(tokens / seconds, 3) if seconds > 0 else 0.0
        return level


def run_level(
    send_factory: Callable[[], Any],
    payloads: Sequence[Payload],
    concurrency: int,
    *,
    duration_s: float,
    requests: int,
    llm: bool,
    on_progress: OnProgress | None = None,
) -> Level:
    """One level from this process's threads."""

    def count(finished: int, seconds: float) -> None:
        if on_progress is not None:
            on_progress(concurrency, finished, seconds)

    driven = drive(
        send_factory, payloads, concurrency, duration_s=duration_s, requests=requests, on_count=count
    )
    return Level.of(concurrency, driven.samples, driven.end - driven.start, llm=llm)


# ------------------------------------------------------------------------------------------ report


@dataclass
class Report:
    target: str
    mode: str  # "handler" or "llm"
    duration_s: float
    requests_per_level: int
    levels: list[Level]
    instances: int = 1
    slo_p99_ms: float | None = None
    slo_ttft_p99_ms: float | None = None
    best_concurrency: int | None = None  # the highest level that keeps the SLO
    max_rps_per_instance: float | None = None  # what to put in the stack's autoscaling

    def to_json(self) -> dict:
        return asdict(self)

    def passes(self, level: Level) -> bool:
        """The level keeps the SLO: no errors, and each p99 given at or under its bound."""
        if level.errors or not level.ok or level.p99_ms is None:
            return False
        if self.slo_p99_ms is not None and level.p99_ms > self.slo_p99_ms:
            return False
        if self.slo_ttft_p99_ms is not None and (
            level.ttft_p99_ms is None or level.ttft_p99_ms > self.slo_ttft_p99_ms
        ):
            return False
        return True


def round_down(value: float, digits: int = 3) -> float:
    """``value`` cut (never rounded up) to ``digits`` significant digits: 1234.5 -> 1230, 23.47 -> 23.4."""
    if value <= 0:
        return 0.0
    decimals = digits - 1 - math.floor(math.log10(value))
    scale = 10.0**decimals
    return round(math.floor(value * scale) / scale, max(0, decimals))


def recommend(report: Report) -> None:
    """The highest level that keeps the SLO, and from the levels that keep it the most requests/s one
    instance sustained, cut to three significant digits: ``maxRpsPerInstance``. No safety factor here:
    the stack's ``targetUtilization`` (0.7 by default) already aims below it."""
    if report.slo_p99_ms is None and report.slo_ttft_p99_ms is None:
        return
    passing = [level for level in report.levels if report.passes(level)]
    if not passing:
        return
    report.best_concurrency = max(level.concurrency for level in passing)
    rps = round_down(max(level.rps for level in passing) / report.instances)
    report.max_rps_per_instance = rps if rps > 0 else None


def run(
    plan: BenchPlan,
    *,
    on_level: Callable[[int], None] | None = None,
    on_progress: OnProgress | None = None,
    on_done: Callable[[Level], None] | None = None,
) -> Report:
    """The sweep: one level after another, then the recommendation."""
    plan.check()
    factory = sender_factory(plan, max(plan.concurrency))
    if plan.warmup:
        warm_up(factory(), plan)
    report = Report(
        target=plan.target,
        mode="llm" if plan.llm else "handler",
        duration_s=plan.duration_s,
        requests_per_level=plan.requests,
        levels=[],
        instances=plan.instances,
        slo_p99_ms=plan.slo_p99_ms,
        slo_ttft_p99_ms=plan.slo_ttft_p99_ms,
    )
    pool = Processes(plan, plan.processes) if plan.processes > 1 else None
    try:
        for concurrency in plan.concurrency:
            if on_level is not None:
                on_level(concurrency)
            if pool is not None:
                samples, seconds = pool.level(concurrency, on_progress)
                level = Level.of(concurrency, samples, seconds, llm=plan.llm)
            else:
                level = run_level(
                    factory,
                    plan.payloads,
                    concurrency,
                    duration_s=plan.duration_s,
                    requests=plan.requests,
                    llm=plan.llm,
                    on_progress=on_progress,
                )
            report.levels.append(level)
            if on_done is not None:
                on_done(level)
    finally:
        if pool is not None:
            pool.close()
    recommend(report)
    return report


def warm_up(sender: Any, plan: BenchPlan) -> None:
    """``plan.warmup`` requests one after another, not counted: the first requests pay for lazy loading
    and connections. When none reached a server (refused, timed out) the sweep would measure nothing:
    AiopsError with the last. A server that answers errors is measured: its errors are the finding."""
    from aiops.errors import AiopsError

    try:
        samples = [sender(plan.payloads[i % len(plan.payloads)]) for i in range(plan.warmup)]
    finally:
        sender.close()
    if not any(sample.reached for sample in samples):
        last = samples[-1]
        raise AiopsError(
            f"{plan.target}: the warm-up request{'s' if len(samples) > 1 else ''} failed "
            f"({last.error}{': ' + last.detail if last.detail else ''}); nothing was measured"
        )


def resolve_endpoint(name: str, inference_component: str | None) -> tuple[str | None, str | None]:
    """The region to find ``name`` in and the inference component to route to, as ``aiops invoke``
    finds them: the current stack's saved outputs, else the settings."""
    from aiops.settings import get_settings
    from aiops.stack import current_outputs, endpoint_region

    settings = get_settings()
    outputs = current_outputs(settings)
    if inference_component is None and name == outputs.endpoint_name:
        inference_component = outputs.inference_component_name
    return endpoint_region(settings, outputs), inference_component


# ------------------------------------------------------------------------------------------ plot


def plot(report: Report, path: Path) -> None:
    """Throughput against latency, one point a level (labelled with its concurrency), as a PNG: requests/s
    against p50 and p99 latency; for an LLM beside it output tokens/s against TTFT p50 and p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if report.mode == "llm" else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.8), squeeze=False)
    rows: list[tuple[str, str, str, str, float | None]] = [
        ("rps", "p50_ms", "p99_ms", "requests/s", report.slo_p99_ms)
    ]
    if report.mode == "llm":
        rows.append(
            ("output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "output tokens/s", report.slo_ttft_p99_ms)
        )
    for ax, (x_key, p50_key, p99_key, x_label, slo) in zip(axes[0], rows, strict=True):
        levels = [lv for lv in report.levels if getattr(lv, p99_key) is not None]
        xs = [getattr(lv, x_key) for lv in levels]
        for key, style, label in ((p50_key, "o-", "p50"), (p99_key, "s--", "p99")):
            ax.plot(xs, [getattr(lv, key) for lv in levels], style, label=label)
        for lv, x in zip(levels, xs, strict=True):
            ax.annotate(
                f"c={lv.concurrency}", (x, getattr(lv, p99_key)), textcoords="offset points", xytext=(4, 4)
            )
        if slo is not None:
            ax.axhline(slo, color="red", linestyle=":", label=f"SLO {slo:g} ms")
        ax.set_xlabel(x_label)
        ax.set_ylabel("time to first token (ms)" if p50_key.startswith("ttft") else "latency (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"aiops bench: {report.target}")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
