"""The price refresher's parsing, on Price List items of the API's documented shape."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "refresh_prices", Path(__file__).resolve().parents[1] / "scripts" / "refresh_prices.py")
refresh_prices = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refresh_prices)  # type: ignore[union-attr]


def item(usd: str, unit: str = "Hrs") -> dict:
    return {"product": {"attributes": {"instanceName": "ml.g5.xlarge", "regionCode": "us-east-1"}},
            "terms": {"OnDemand": {"ABC.JRTCKXETXF": {"priceDimensions": {"ABC.JRTCKXETXF.6YS6EN2CT7": {
                "unit": unit, "pricePerUnit": {"USD": usd}}}}}}}


def test_on_demand_hourly_reads_the_usd_dimension() -> None:
    assert refresh_prices.on_demand_hourly(item("1.4080000000")) == 1.408
    assert refresh_prices.on_demand_hourly(item("0.0000000000")) is None
    assert refresh_prices.on_demand_hourly(item("0.10", unit="GB-Mo")) is None


class FakePricing:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def get_products(self, **kwargs):
        self.calls.append(kwargs)
        names = {f["Field"]: f["Value"] for f in kwargs["Filters"]}
        if names.get("instanceName") == "ml.g5.xlarge" or names.get("instanceType") == "g5.xlarge":
            return {"PriceList": [json.dumps(item("2.5"))]}
        return {"PriceList": []}


def test_refresh_updates_known_types_and_lists_the_rest() -> None:
    table = {"as_of": "old", "source": "old", "regions": {"us-east-1": {
        "sagemaker": {"ml.g5.xlarge": 1.0, "ml.p3.2xlarge": 3.0}, "ec2": {"g5.xlarge": 1.0}}}}
    client = FakePricing()
    missing = refresh_prices.refresh(table, client, ["us-east-1"])
    assert table["regions"]["us-east-1"]["sagemaker"] == {"ml.g5.xlarge": 2.5, "ml.p3.2xlarge": 3.0}
    assert table["regions"]["us-east-1"]["ec2"] == {"g5.xlarge": 2.5}
    assert missing == ["us-east-1 sagemaker ml.p3.2xlarge"]
    assert table["as_of"] != "old" and "Price List API" in table["source"]
    assert {c["ServiceCode"] for c in client.calls} == {"AmazonSageMaker", "AmazonEC2"}
