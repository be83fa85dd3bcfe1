"""Metrics from a script's log, the way SageMaker's MetricDefinitions read them.

A definition is ``{"Name": ..., "Regex": ...}``; the first capture group of each match is the value.
Without definitions for a name, aiops also reads ``name=value;`` pairs (the example prints them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from aiops.errors import UsageError

# `name=value;` pairs, e.g. "epoch=3; train_loss=0.1234; test_accuracy=0.97;"
DEFAULT_PATTERN = re.compile(
    r"(?<![\w.:/-])([A-Za-z_][\w.:/-]*)\s*=\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf))\s*;"
)


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    regex: str

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.regex)

    def as_sagemaker(self) -> dict[str, str]:
        return {"Name": self.name, "Regex": self.regex}


def parse_metric_option(text: str) -> MetricDefinition:
    """`--metric NAME=REGEX`."""
    name, sep, regex = text.partition("=")
    name = name.strip()
    if not sep or not name or not regex:
        raise UsageError(f"--metric {text!r}: expected NAME=REGEX, e.g. --metric 'loss=loss: ([0-9.]+)'.")
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise UsageError(f"--metric {name}: the regex {regex!r} does not compile ({err}).") from None
    if pattern.groups < 1:
        raise UsageError(
            f"--metric {name}: the regex {regex!r} has no capture group; SageMaker takes the value "
            "from the first group, e.g. 'loss: ([0-9.]+)'."
        )
    return MetricDefinition(name, regex)


@dataclass(frozen=True)
class MetricSample:
    name: str
    value: float


class MetricParser:
    """Reads metrics from log lines with the given definitions plus the `name=value;` default."""

    def __init__(self, definitions: Iterable[MetricDefinition] = (), *, use_default: bool = True) -> None:
        self._definitions = [(d.name, d.compiled()) for d in definitions]
        self._use_default = use_default

    def parse(self, line: str) -> list[MetricSample]:
        samples: list[MetricSample] = []
        for name, pattern in self._definitions:
            for match in pattern.finditer(line):
                value = _to_float(match.group(1))
                if value is not None:
                    samples.append(MetricSample(name, value))
        if self._use_default and "=" in line:
            for match in DEFAULT_PATTERN.finditer(line):
                value = _to_float(match.group(2))
                if value is not None:
                    samples.append(MetricSample(match.group(1), value))
        return samples


def _to_float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    # NaN/inf are not JSON numbers; a diverged loss still shows in the log itself.
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# Series: a run's metrics over time, for tables and plots


@dataclass(frozen=True)
class Point:
    elapsed_seconds: float
    value: float


def series_from_jsonl(path) -> dict[str, list[Point]]:
    """A local run's metrics.jsonl as {name: [points in order]}."""
    import json
    from pathlib import Path

    series: dict[str, list[Point]] = {}
    file = Path(path)
    if not file.is_file():
        return series
    for line in file.read_text().splitlines():
        if not line.strip():
            continue
        sample = json.loads(line)
        series.setdefault(sample["name"], []).append(
            Point(float(sample["elapsed_seconds"]), float(sample["value"]))
        )
    return series


def latest_values(path) -> dict[str, float]:
    """The last value of each metric in a metrics.jsonl that may still be written (a running job):
    only complete lines count. {name: value}, in order of first appearance."""
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        return {}
    latest: dict[str, float] = {}
    for line in file.read_text().split("\n")[:-1]:  # the text after the last newline may be half a line
        if line.strip():
            sample = json.loads(line)
            latest[sample["name"]] = float(sample["value"])
    return latest


def split_series(series: dict[str, list[Point]]) -> tuple[dict[str, list[Point]], dict[str, float]]:
    """(metrics seen more than once: curves, metrics seen once: final figures)."""
    curves = {name: points for name, points in series.items() if len(points) > 1}
    finals = {name: points[-1].value for name, points in series.items() if len(points) == 1}
    return curves, finals
