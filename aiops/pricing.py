"""Instance prices for cost estimates: the offline plan, `aiops cost`, and the check before a remote job.

The table (`aiops/data/prices.json`) is shipped data with its date and source; refresh it with
`scripts/refresh_prices.py` (AWS Price List API). An instance type with no known price is reported
as unknown, never priced at zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

Service = Literal["sagemaker", "ec2"]


@dataclass(frozen=True)
class Price:
    instance_type: str
    region: str
    on_demand_hourly: float
    spot_discount: float  # typical saving, 0..1

    @property
    def spot_hourly(self) -> float:
        return round(self.on_demand_hourly * (1.0 - self.spot_discount), 6)

    def hourly(self, *, spot: bool = False) -> float:
        return self.spot_hourly if spot else self.on_demand_hourly


@dataclass(frozen=True)
class DatedTable:
    """A shipped JSON table that says when and where its figures were read (prices, GPUs)."""

    data: dict[str, Any]

    @property
    def as_of(self) -> str:
        return self.data["as_of"]

    @property
    def source(self) -> str:
        return self.data["source"]


@dataclass(frozen=True)
class PriceTable(DatedTable):
    @property
    def hours_per_month(self) -> float:
        return float(self.data["hours_per_month"])

    def _region(self, region: str) -> dict[str, Any] | None:
        entry = self.data["regions"].get(region)
        if entry and "same_as" in entry:
            entry = self.data["regions"].get(entry["same_as"])
        return entry

    def lookup(self, service: Service, instance_type: str, region: str) -> Price | None:
        entry = self._region(region)
        hourly = (entry or {}).get(service, {}).get(instance_type)
        if hourly is None:
            return None
        return Price(instance_type, region, float(hourly), float(self.data["spot_discount"][service]))

    def regions(self) -> list[str]:
        return sorted(self.data["regions"])


@lru_cache(maxsize=1)
def load_prices() -> PriceTable:
    text = resources.files("aiops").joinpath("data/prices.json").read_text()
    return PriceTable(json.loads(text))


@dataclass(frozen=True)
class JobEstimate:
    instance_type: str
    instance_count: int
    max_run_seconds: int
    price: Price | None

    @property
    def known(self) -> bool:
        return self.price is not None

    def cost(self, *, spot: bool) -> float | None:
        """The most the job can cost: every host for the whole max run."""
        if self.price is None:
            return None
        return round(self.instance_count * self.max_run_seconds / 3600.0 * self.price.hourly(spot=spot), 2)


def estimate_training_job(
    instance_type: str,
    instance_count: int,
    max_run_seconds: int,
    region: str,
    table: PriceTable | None = None,
) -> JobEstimate:
    table = table or load_prices()
    return JobEstimate(
        instance_type, instance_count, max_run_seconds, table.lookup("sagemaker", instance_type, region)
    )
