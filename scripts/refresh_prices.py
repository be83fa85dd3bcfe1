"""Refresh aiops/data/prices.json from the AWS Price List API (needs AWS credentials).

    python scripts/refresh_prices.py [--regions us-east-1 eu-west-1] [--dry-run] [--gpus]

For every instance type already in the table, it asks the Price List API (`pricing` client,
us-east-1) for the on-demand Linux hourly price — SageMaker (ServiceCode AmazonSageMaker,
component Training) and EC2 (AmazonEC2, shared tenancy, no pre-installed software) — and rewrites
the table with today's date. Types the API does not answer for keep their old figure and are listed.

With ``--gpus`` it also refreshes aiops/data/gpus.json (the GPU-fit check's table): for every
instance type there, the EC2 product of the same hardware (``ml.`` dropped) carries the attributes
``gpu`` (count) and ``gpuMemory`` (the instance's total GPU memory, e.g. "96 GiB"); types the API
does not describe keep their row and are listed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TABLE = Path(__file__).resolve().parents[1] / "aiops" / "data" / "prices.json"
GPU_TABLE = TABLE.with_name("gpus.json")


def on_demand_hourly(price_item: dict[str, Any]) -> float | None:
    """The USD per-hour figure of one Price List item (`get_products` returns them as JSON strings)."""
    for term in price_item.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if usd is not None and dimension.get("unit", "Hrs").lower().startswith("hr") and float(usd) > 0:
                return float(usd)
    return None


def filters(service: str, instance_type: str, region: str) -> list[dict[str, str]]:
    common = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]
    if service == "sagemaker":
        return common + [
            {"Type": "TERM_MATCH", "Field": "instanceName", "Value": instance_type},
            {"Type": "TERM_MATCH", "Field": "component", "Value": "Training"},
        ]
    return common + [
        {"Type": "TERM_MATCH", "Field": "instanceType", "Value": instance_type},
        {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
        {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
        {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
        {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
    ]


def fetch(client: Any, service: str, instance_type: str, region: str) -> float | None:
    code = "AmazonSageMaker" if service == "sagemaker" else "AmazonEC2"
    answer = client.get_products(
        ServiceCode=code, Filters=filters(service, instance_type, region), MaxResults=10
    )
    prices = [p for p in (on_demand_hourly(json.loads(item)) for item in answer.get("PriceList", [])) if p]
    return min(prices) if prices else None


def refresh(table: dict[str, Any], client: Any, regions: Iterable[str]) -> list[str]:
    missing: list[str] = []
    for region in regions:
        entry = table["regions"].setdefault(region, {})
        entry.pop("same_as", None)
        for service in ("sagemaker", "ec2"):
            types = sorted(set(entry.get(service, {})) | set(table["regions"]["us-east-1"].get(service, {})))
            for instance_type in types:
                price = fetch(client, service, instance_type, region)
                if price is None:
                    missing.append(f"{region} {service} {instance_type}")
                else:
                    entry.setdefault(service, {})[instance_type] = round(price, 4)
    table["as_of"] = datetime.date.today().isoformat()
    table["source"] = (
        "AWS Price List API (get_products), on-demand Linux hourly prices; SageMaker: Training component."
    )
    return missing


def gpu_attributes(price_item: dict[str, Any]) -> tuple[int, float] | None:
    """(GPU count, memory per GPU in GiB) from an EC2 product's ``gpu`` and ``gpuMemory`` attributes
    ("4" and "96 GiB" / "96 GB"); None when either is absent, "NA" or zero."""
    attrs = price_item.get("product", {}).get("attributes", {})
    count, memory = str(attrs.get("gpu", "")).strip(), str(attrs.get("gpuMemory", "")).strip()
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*(GiB|GB)", memory, flags=re.IGNORECASE)
    if not count.isdigit() or int(count) == 0 or match is None:
        return None
    return int(count), round(float(match.group(1)) / int(count), 2)


def refresh_gpus(table: dict[str, Any], client: Any) -> list[str]:
    missing: list[str] = []
    for instance_type, row in table["instance_types"].items():
        ec2_type = instance_type.removeprefix("ml.")
        answer = client.get_products(
            ServiceCode="AmazonEC2", Filters=filters("ec2", ec2_type, "us-east-1"), MaxResults=10
        )
        found = [g for g in (gpu_attributes(json.loads(item)) for item in answer.get("PriceList", [])) if g]
        if not found:
            missing.append(instance_type)
            continue
        row["gpus"], row["gpu_memory_gib"] = found[0]
    table["as_of"] = datetime.date.today().isoformat()
    table["source"] = (
        "AWS Price List API (get_products, AmazonEC2 attributes gpu and gpuMemory of the same "
        "hardware; SageMaker AI instance types add the ml. prefix). Memory per GPU = gpuMemory / gpu."
    )
    return missing


def main() -> None:
    import boto3

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", nargs="+", default=["us-east-1", "us-west-2", "eu-west-1"])
    parser.add_argument("--dry-run", action="store_true", help="print the table instead of writing it")
    parser.add_argument(
        "--gpus", action="store_true", help="also refresh aiops/data/gpus.json (GPU count and memory)"
    )
    args = parser.parse_args()
    table = json.loads(TABLE.read_text())
    missing = refresh(table, boto3.client("pricing", region_name="us-east-1"), args.regions)
    text = json.dumps(table, indent=2, sort_keys=False) + "\n"
    if args.dry_run:
        print(text)
    else:
        TABLE.write_text(text)
    for line in missing:
        print(f"no price from the API, kept the old figure: {line}")
    if args.gpus:
        gpus = json.loads(GPU_TABLE.read_text())
        for line in refresh_gpus(gpus, boto3.client("pricing", region_name="us-east-1")):
            print(f"no GPU attributes from the API, kept the old row: {line}")
        text = json.dumps(gpus, indent=2) + "\n"
        print(text) if args.dry_run else GPU_TABLE.write_text(text)


if __name__ == "__main__":
    main()
