"""Hyperparameter tuning, the policy: what `aiops tune` searches (ranges), what it optimizes (the
objective), how much work it may do (trials, parallel), and which trial is best.

The names and shapes are SageMaker's (`CreateHyperParameterTuningJob`'s `ParameterRanges`,
`HyperParameterTuningJobObjective`, `ResourceLimits`), so the same spec drives both runners:
`training.tune_local` (Optuna, local runs) and `training.tune_remote` (one SageMaker tuning job).
Nothing here runs anything or imports Optuna.

    --range lr=1e-5:1e-2:log        Continuous (a bound with '.', 'e' or 'inf' in it), Logarithmic
    --range epochs=1:4              Integer (both bounds whole numbers), Auto scaling
    --range batch-size=16,32,64     Categorical (a comma list; one value needs a trailing comma)
    --objective test_accuracy:max   Maximize (max) or Minimize (min) the metric's final value
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiops.training.job_inputs import parse_hyperparameter_value
from aiops.training.metrics import MetricDefinition

from aiops.errors import UsageError

CONTINUOUS, INTEGER, CATEGORICAL = "Continuous", "Integer", "Categorical"
# --range ...:SCALE -> SageMaker's ScalingType; without one, SageMaker's (and the SDK's) default "Auto"
SCALES = {"auto": "Auto", "linear": "Linear", "log": "Logarithmic"}
GOALS = {"max": "Maximize", "min": "Minimize"}
MAX_CATEGORICAL_VALUES = 30  # SageMaker: at most 30 values in a categorical range
MAX_TUNED_PARAMETERS = 30  # SageMaker: at most 30 ranges in all
_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")
_INTEGER = re.compile(r"^[-+]?\d+$")


@dataclass(frozen=True)
class ParameterRange:
    """One tuned hyperparameter: `kind` is Continuous, Integer or Categorical; `low`/`high` bound the
    first two, `values` are the third's; `scaling` is SageMaker's ScalingType."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    values: tuple[str, ...] = ()
    scaling: str = "Auto"

    @property
    def log(self) -> bool:
        return self.scaling == "Logarithmic"

    def as_sagemaker(self) -> dict[str, Any]:
        """This range as one entry of ParameterRanges (the SDK's `as_tuning_range`: every value a string)."""
        if self.kind == CATEGORICAL:
            return {"Name": self.name, "Values": list(self.values)}
        return {
            "Name": self.name,
            "MinValue": _number_text(self.low, self.kind),
            "MaxValue": _number_text(self.high, self.kind),
            "ScalingType": self.scaling,
        }


def _number_text(value: float, kind: str) -> str:
    return str(int(value)) if kind == INTEGER else str(value)


def parse_range(text: str) -> ParameterRange:
    """`--range NAME=LOW:HIGH[:SCALE]` or `--range NAME=V1,V2,...`; UsageError (exit 2) on anything else."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    example = "e.g. --range lr=1e-5:1e-2:log or --range batch-size=16,32,64"
    if not sep or not name or not spec.strip():
        raise UsageError(f"--range {text!r}: expected NAME=LOW:HIGH[:log] or NAME=V1,V2,...; {example}.")
    if not _NAME.match(name):
        raise UsageError(f"--range {name!r}: a hyperparameter name is letters, digits, '_', '-' and '.'.")
    if "," in spec:
        values = tuple(v.strip() for v in spec.split(",") if v.strip())
        if not values:
            raise UsageError(f"--range {text!r}: no values; {example}.")
        if len(set(values)) != len(values):
            raise UsageError(f"--range {name}: a value is listed twice ({spec}); list each value once.")
        if len(values) > MAX_CATEGORICAL_VALUES:
            raise UsageError(
                f"--range {name}: {len(values)} values; SageMaker takes at most {MAX_CATEGORICAL_VALUES}."
            )
        return ParameterRange(name, CATEGORICAL, values=values)
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise UsageError(f"--range {text!r}: expected NAME=LOW:HIGH[:SCALE]; {example}.")
    scale = parts[2].strip().lower() if len(parts) == 3 else "auto"
    if scale not in SCALES:
        raise UsageError(f"--range {name}: scale {parts[2]!r} is not one of {', '.join(SCALES)}.")
    low_text, high_text = parts[0].strip(), parts[1].strip()
    kind = INTEGER if _INTEGER.match(low_text) and _INTEGER.match(high_text) else CONTINUOUS
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise UsageError(f"--range {name}: bounds {low_text!r} and {high_text!r} must be numbers.") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UsageError(f"--range {name}: bounds must be finite numbers.")
    if low >= high:
        raise UsageError(
            f"--range {name}: the bounds are inverted ({low_text}:{high_text}); "
            f"give LOW:HIGH with LOW below HIGH, e.g. --range {name}={high_text}:{low_text}."
            if low > high
            else f"--range {name}: LOW equals HIGH ({low_text}); fix the value with --hp {name}={low_text}."
        )
    if SCALES[scale] == "Logarithmic" and low <= 0:
        raise UsageError(
            f"--range {name}: log scale needs bounds above 0 (LOW is {low_text}); raise LOW or drop ':log'."
        )
    return ParameterRange(name, kind, low=low, high=high, scaling=SCALES[scale])


@dataclass(frozen=True)
class Objective:
    metric: str
    goal: str  # "Maximize" | "Minimize"

    @property
    def maximize(self) -> bool:
        return self.goal == "Maximize"

    def as_sagemaker(self) -> dict[str, str]:
        return {"Type": self.goal, "MetricName": self.metric}

    def better(self, a: float, b: float) -> bool:
        """True when `a` is strictly better than `b`."""
        return a > b if self.maximize else a < b


def parse_objective(text: str) -> Objective:
    """`--objective NAME:max` or `NAME:min`."""
    metric, sep, goal = text.rpartition(":")
    metric = metric.strip()
    if not sep or not metric or goal.strip().lower() not in GOALS:
        raise UsageError(
            f"--objective {text!r}: expected METRIC:max or METRIC:min, e.g. --objective test_accuracy:max."
        )
    return Objective(metric, GOALS[goal.strip().lower()])


@dataclass(frozen=True)
class TuningSpec:
    """What to search, what to optimize, and how much work: validated by `tuning_spec`."""

    ranges: tuple[ParameterRange, ...]
    objective: Objective
    max_trials: int
    parallel: int

    def parameter_ranges(self) -> dict[str, list[dict[str, Any]]]:
        """SageMaker's ParameterRanges (every kind listed, empty or not, as the SDK sends them)."""
        out: dict[str, list[dict[str, Any]]] = {
            "ContinuousParameterRanges": [],
            "IntegerParameterRanges": [],
            "CategoricalParameterRanges": [],
        }
        for r in self.ranges:
            out[f"{r.kind}ParameterRanges"].append(r.as_sagemaker())
        return out

    def names(self) -> list[str]:
        return [r.name for r in self.ranges]


def tuning_spec(
    ranges: Sequence[str],
    objective: str | None,
    *,
    max_trials: int,
    parallel: int,
    metric_definitions: Sequence[MetricDefinition],
) -> TuningSpec:
    """The whole tuning request checked before anything is written or launched (UsageError, exit 2)."""
    if not ranges:
        raise UsageError("no --range: give at least one, e.g. --range lr=1e-5:1e-2:log.")
    if objective is None:
        raise UsageError(
            "missing --objective: name the metric to optimize, e.g. --objective test_accuracy:max."
        )
    parsed = [parse_range(r) for r in ranges]
    seen: set[str] = set()
    for r in parsed:
        if r.name in seen:
            raise UsageError(f"--range {r.name} is given twice; give each hyperparameter one range.")
        seen.add(r.name)
    if len(parsed) > MAX_TUNED_PARAMETERS:
        raise UsageError(f"{len(parsed)} ranges; SageMaker tunes at most {MAX_TUNED_PARAMETERS} at once.")
    goal = parse_objective(objective)
    defined = [d.name for d in metric_definitions]
    if goal.metric not in defined:
        known = f" (defined: {', '.join(defined)})" if defined else ""
        raise UsageError(
            f"--objective {goal.metric}: no --metric definition of that name{known}; add one, e.g. "
            f"--metric '{goal.metric}={re.escape(goal.metric)}=([0-9.eE+-]+)'."
        )
    if max_trials < 1:
        raise UsageError(f"--max-trials {max_trials}: needs at least 1 trial.")
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: needs at least 1.")
    if parallel > max_trials:
        raise UsageError(
            f"--parallel {parallel} is greater than --max-trials {max_trials}; "
            f"lower --parallel to at most {max_trials} or raise --max-trials."
        )
    return TuningSpec(tuple(parsed), goal, max_trials, parallel)


def first_values(spec: TuningSpec) -> dict[str, Any]:
    """One point of the space (the low bounds, the first values): what the up-front check prepares."""
    return {
        r.name: parse_hyperparameter_value(r.values[0])
        if r.kind == CATEGORICAL
        else (int(r.low) if r.kind == INTEGER else r.low)
        for r in spec.ranges
    }


def static_hyperparameters(hyperparameters: Mapping[str, Any], spec: TuningSpec) -> dict[str, Any]:
    """The hyperparameters every trial gets as given: the tuned ones are dropped (as the SDK does)."""
    tuned = set(spec.names())
    return {k: v for k, v in hyperparameters.items() if k not in tuned}


@dataclass
class Trial:
    """One trial as both runners report it: `value` is the objective metric's final value (None
    when the trial never printed it); `state` is SageMaker's TrainingJobStatus, or `Pruned` locally."""

    number: int
    job_name: str
    hyperparameters: dict[str, Any]
    status: str
    value: float | None = None
    run_dir: str | None = None
    model: str | None = None
    failure_reason: str | None = None


def best_trial(trials: Sequence[Trial], objective: Objective) -> Trial | None:
    """The trial whose objective value is best; ties go to the earlier trial."""
    best: Trial | None = None
    for trial in trials:
        if trial.value is None or trial.status != "Completed":
            continue
        if best is None or objective.better(trial.value, best.value):  # type: ignore[arg-type]
            best = trial
    return best
