"""The price table and cost arithmetic, checked against figures computed from the table itself
(never typed-in prices: refreshing the shipped table must not break these tests)."""

from __future__ import annotations

import pytest

from aiops.pricing import estimate_training_job, load_prices


def test_table_has_date_source_and_known_prices() -> None:
    table = load_prices()
    assert table.as_of and "AWS" in table.source
    price = table.lookup("sagemaker", "ml.g5.xlarge", "us-east-1")
    listed = table.data["regions"]["us-east-1"]["sagemaker"]["ml.g5.xlarge"]
    assert price is not None and price.on_demand_hourly == listed > 0
    assert price.spot_hourly == pytest.approx(listed * (1 - table.data["spot_discount"]["sagemaker"]))
    # a region that shares another's list
    assert table.data["regions"]["us-west-2"]["same_as"] == "us-east-1"
    assert table.lookup("sagemaker", "ml.g5.xlarge", "us-west-2").on_demand_hourly == listed


def test_unknown_prices_are_none_not_zero() -> None:
    table = load_prices()
    assert table.lookup("sagemaker", "ml.trn1.32xlarge", "us-east-1") is None
    assert table.lookup("sagemaker", "ml.g5.xlarge", "ap-south-2") is None
    estimate = estimate_training_job("ml.trn1.32xlarge", 2, 3600, "us-east-1")
    assert not estimate.known and estimate.cost(spot=True) is None


def test_training_estimate_by_hand() -> None:
    # 2 x ml.p3.2xlarge for at most 3 hours: 2 * 3 * hourly on-demand; spot (1 - discount) of it
    price = load_prices().lookup("sagemaker", "ml.p3.2xlarge", "us-east-1")
    estimate = estimate_training_job("ml.p3.2xlarge", 2, 3 * 3600, "us-east-1")
    assert estimate.cost(spot=False) == pytest.approx(
        6 * price.on_demand_hourly, abs=0.006
    )  # rounded to cents
    assert estimate.cost(spot=True) == pytest.approx(6 * price.spot_hourly, abs=0.006)
