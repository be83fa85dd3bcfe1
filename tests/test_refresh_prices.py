"""The price refresher's parsing, on Price List items of the API's documented shape."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "refresh_prices", Path(__file__).resolve().parents[1] / "scripts" / "refresh_prices.py"
)
refresh_prices = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refresh_prices)  # type: ignore[union-attr]


def item(usd: str, unit: str = "Hrs") -> dict:
    return {
        "product": {"attributes": {"instanceName": "ml.g5.xlarge", "regionCode": "us-east-1"}},
        "terms": {
            "OnDemand": {
                "ABC.JRTCKXETXF": {
                    "priceDimensions": {
                        "ABC.JRTCKXETXF.6YS6EN2CT7": {"unit": unit, "pricePerUnit": {"USD": usd}}
                    }
                }
            }
        },
    }


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
    table = {
        "as_of": "old",
        "source": "old",
        "regions": {
            "us-east-1": {"sagemaker": {"ml.g5.xlarge": 1.0, "ml.p3.2xlarge": 3.0}, "ec2": {"g5.xlarge": 1.0}}
        },
    }
    client = FakePricing()
    missing = refresh_prices.refresh(table, client, ["us-east-1"])
    assert table["regions"]["us-east-1"]["sagemaker"] == {"ml.g5.xlarge": 2.5, "ml.p3.2xlarge": 3.0}
    assert table["regions"]["us-east-1"]["ec2"] == {"g5.xlarge": 2.5}
    assert missing == ["us-east-1 sagemaker ml.p3.2xlarge"]
    assert table["as_of"] != "old" and "Price List API" in table["source"]
    assert {c["ServiceCode"] for c in client.calls} == {"AmazonSageMaker", "AmazonEC2"}


def gpu_item(gpu: str, memory: str) -> dict:
    return {
        "product": {"attributes": {"instanceType": "g5.12xlarge", "gpu": gpu, "gpuMemory": memory}},
        "terms": {},
    }


def test_gpu_attributes_give_count_and_memory_per_gpu() -> None:
    assert refresh_prices.gpu_attributes(gpu_item("4", "96 GiB")) == (4, 24.0)
    assert refresh_prices.gpu_attributes(gpu_item("8", "640 GB")) == (8, 80.0)
    assert refresh_prices.gpu_attributes(gpu_item("NA", "NA")) is None
    assert refresh_prices.gpu_attributes(gpu_item("0", "0 GiB")) is None
    assert refresh_prices.gpu_attributes({"product": {"attributes": {}}}) is None


def test_refresh_gpus_updates_rows_and_lists_the_rest() -> None:
    class Fake:
        def __init__(self) -> None:
            self.types: list[str] = []

        def get_products(self, **kwargs):
            names = {f["Field"]: f["Value"] for f in kwargs["Filters"]}
            self.types.append(names["instanceType"])
            if names["instanceType"] == "g5.12xlarge":
                return {"PriceList": [json.dumps(gpu_item("4", "96 GiB"))]}
            return {"PriceList": []}

    table = {
        "as_of": "old",
        "source": "old",
        "instance_types": {
            "ml.g5.12xlarge": {"gpus": 1, "gpu_model": "NVIDIA A10G", "gpu_memory_gib": 1},
            "ml.p5.48xlarge": {"gpus": 8, "gpu_model": "NVIDIA H100", "gpu_memory_gib": 80},
        },
    }
    client = Fake()
    missing = refresh_prices.refresh_gpus(table, client)
    assert table["instance_types"]["ml.g5.12xlarge"] == {
        "gpus": 4,
        "gpu_model": "NVIDIA A10G",
        "gpu_memory_gib": 24.0,
    }
    assert table["instance_types"]["ml.p5.48xlarge"]["gpu_memory_gib"] == 80
    assert missing == ["ml.p5.48xlarge"] and client.types == ["g5.12xlarge", "p5.48xlarge"]
    assert table["as_of"] != "old" and "gpuMemory" in table["source"]
