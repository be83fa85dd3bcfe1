"""Expected costs for tests, computed from the price table the code reads (aiops/data/prices.json),
never typed in: refreshing the table (scripts/refresh_prices.py) must not break a test."""

from __future__ import annotations

from aiops.infra.costs import rate  # noqa: F401 - how a price per hour is printed (tested in test_costs)

from aiops.pricing import load_prices


def hourly(
    instance_type: str, region: str = "us-east-1", service: str = "sagemaker", *, spot: bool = False
) -> float:
    price = load_prices().lookup(service, instance_type, region)
    assert price is not None, f"the shipped table has no {service} price for {instance_type} in {region}"
    return price.hourly(spot=spot)


def monthly(per_hour: float) -> float:
    return round(per_hour * load_prices().hours_per_month, 2)


def cheapest(instance_types: list[str], region: str = "us-east-1") -> list[tuple[str, float]]:
    """The priced types among `instance_types`, cheapest first (how the fit check lists suggestions)."""
    return sorted(((t, hourly(t, region)) for t in instance_types), key=lambda pair: (pair[1], pair[0]))
