"""Plan costs against figures computed by hand from the price table the code reads (offline plans).

The expected costs are derived from `load_prices()`, never typed in: refreshing the shipped table
(scripts/refresh_prices.py) must not break these tests, only wrong arithmetic may."""

from __future__ import annotations

import json

import pytest
from aiops.infra.costs import CostLine, PlanCosts, plan_costs, rate
from aiops.infra.offline import plan
from aiops.infra.stack_file import load_stack_file

from aiops.pricing import PriceTable, load_prices

from .conftest import REPO

TABLE = load_prices()
HOURS = TABLE.hours_per_month


def price(service, instance_type, region="us-east-1"):
    found = TABLE.lookup(service, instance_type, region)
    assert found is not None, f"the shipped table lists no {service} price for {instance_type} in {region}"
    return found


def test_line_arithmetic_by_hand():
    # 2 x ml.g5.xlarge at 1.408 $/h = 2.816 $/h; x 730 h = 2055.68 $/month; at 4 instances 5.632 $/h
    line = CostLine(
        resource="ec/primary",
        type="t",
        service="sagemaker",
        pricing="instance",
        instance_type="ml.g5.xlarge",
        count=2,
        max_count=4,
        unit_hourly=1.408,
        on_demand_unit_hourly=1.408,
        hours_per_month=730,
    )
    assert line.hourly == pytest.approx(2.816)
    assert line.monthly == 2055.68
    assert line.max_hourly == pytest.approx(5.632)
    assert line.describe() == "2 x ml.g5.xlarge at $1.408/h"
    assert rate(0.35210) == "0.3521" and rate(2.0) == "2"


def test_dev_plan_totals():
    costs = plan_costs(plan(load_stack_file(REPO / "Pulumi.dev.yaml")))
    assert costs.region == "us-east-1" and costs.complete and not costs.usage_based
    by_name = {line.resource: line for line in costs.lines}
    assert set(by_name) == {"endpoint-config/primary", "gpu-asg"}
    ep = by_name["endpoint-config/primary"]
    ep_unit = price("sagemaker", "ml.g5.xlarge").on_demand_hourly
    # 1 x ml.g5.xlarge (initialInstanceCount 1, maxCapacity 2)
    assert (ep.instance_type, ep.count, ep.max_count) == ("ml.g5.xlarge", 1, 2)
    assert ep.hourly == pytest.approx(ep_unit) and ep.monthly == round(ep_unit * HOURS, 2)
    assert ep.max_hourly == pytest.approx(2 * ep_unit)
    gpu = by_name["gpu-asg"]
    g5 = price("ec2", "g5.xlarge")
    # desiredCapacity 0 of maxSize 1 g5.xlarge, spot: on-demand x (1 - the ec2 spot discount) at max
    assert (gpu.instance_type, gpu.count, gpu.max_count, gpu.spot) == ("g5.xlarge", 0, 1, True)
    assert gpu.hourly == 0 and gpu.max_hourly == pytest.approx(g5.on_demand_hourly * (1 - g5.spot_discount))
    assert gpu.on_demand_max_hourly == pytest.approx(g5.on_demand_hourly)
    assert costs.total_hourly == pytest.approx(ep_unit)
    assert costs.total_monthly == round(ep_unit * HOURS, 2)
    max_hourly = 2 * ep_unit + g5.spot_hourly
    assert costs.max_hourly == pytest.approx(max_hourly)
    assert costs.max_monthly == pytest.approx(max_hourly * HOURS, abs=0.01)
    assert costs.unpriced_resources > 15 and costs.total_note() == ""


def test_prod_plan_totals():
    costs = plan_costs(plan(load_stack_file(REPO / "Pulumi.prod.yaml")))
    (line,) = costs.lines  # no GPU machines in prod
    # us-west-2 lists us-east-1's prices (same_as): 2 x ml.g5.2xlarge, up to 8 at maxCapacity
    unit = price("sagemaker", "ml.g5.2xlarge", "us-west-2").on_demand_hourly
    assert unit == price("sagemaker", "ml.g5.2xlarge", "us-east-1").on_demand_hourly
    assert (line.instance_type, line.count, line.max_count) == ("ml.g5.2xlarge", 2, 8)
    assert costs.total_hourly == pytest.approx(2 * unit)
    assert costs.total_monthly == round(2 * unit * HOURS, 2)
    assert costs.max_hourly == pytest.approx(8 * unit) and costs.max_monthly == round(8 * unit * HOURS, 2)


def test_on_demand_gpu_group(make_plan):
    costs = plan_costs(
        make_plan(
            endpoint={"enabled": False},
            compute={"instanceType": "p3.2xlarge", "desiredCapacity": 2, "maxSize": 3},
        )
    )
    (line,) = costs.lines
    # 2 x p3.2xlarge on-demand; 3 at max
    unit = price("ec2", "p3.2xlarge").on_demand_hourly
    assert not line.spot and line.unit_hourly == unit
    assert line.hourly == pytest.approx(2 * unit) and line.monthly == round(2 * unit * HOURS, 2)
    assert line.max_hourly == pytest.approx(3 * unit)


def test_unknown_price_is_reported_never_zero(make_plan):
    # ml.g6.xlarge is a valid GPU type the table does not list
    assert TABLE.lookup("sagemaker", "ml.g6.xlarge", "us-east-1") is None, "pick a type the table lacks"
    costs = plan_costs(make_plan(endpoint={"instanceType": "ml.g6.xlarge"}, compute={"desiredCapacity": 1}))
    ep = next(line for line in costs.lines if line.service == "sagemaker")
    assert not ep.known and ep.hourly is None and ep.monthly is None
    assert "no known price for ml.g6.xlarge in us-east-1" in ep.describe()
    assert not costs.complete and costs.total_note() == "incomplete: 1 resource without a known price"
    # the rest is still priced: the one on-demand g5.xlarge machine
    assert costs.total_hourly == pytest.approx(price("ec2", "g5.xlarge").on_demand_hourly)
    data = costs.to_dict()
    assert data["complete"] is False and data["unknown"] == ["endpoint-config/primary"]


def test_unknown_region_prices(make_plan):
    costs = plan_costs(make_plan(region="ap-south-2"))
    assert len(costs.unknown) == 2 and costs.total_hourly == 0
    assert costs.total_note() == "incomplete: 2 resources without a known price"


def test_serverless_is_usage_based(make_plan):
    costs = plan_costs(
        make_plan(
            endpoint={"serverless": {"enabled": True}, "dataCapture": {"enabled": False}},
            compute={"enabled": False},
        )
    )
    (line,) = costs.lines
    assert line.pricing == "usage" and line.known and line.hourly is None
    assert line.describe().startswith("usage-based")
    assert costs.total_hourly == 0 and "usage-based charges of 1 serverless variant" in costs.total_note()


def test_table_date_and_source_and_roundtrip():
    costs = plan_costs(plan(load_stack_file(REPO / "Pulumi.dev.yaml")))
    assert costs.as_of == TABLE.as_of and costs.source == TABLE.source and costs.hours_per_month == HOURS
    data = json.loads(json.dumps(costs.to_dict()))
    back = PlanCosts.from_dict(data, stack="dev")
    assert back.total_hourly == costs.total_hourly and back.lines == costs.lines


def test_custom_price_table(make_plan):
    table = PriceTable(
        {
            "as_of": "x",
            "source": "test",
            "hours_per_month": 720,
            "currency": "USD",
            "spot_discount": {"sagemaker": 0.5, "ec2": 0.5},
            "regions": {"us-east-1": {"sagemaker": {"ml.g5.xlarge": 1.0}, "ec2": {"g5.xlarge": 2.0}}},
        }
    )
    costs = plan_costs(make_plan(compute={"spot": False, "desiredCapacity": 1}), table)
    assert costs.total_hourly == pytest.approx(3.0) and costs.total_monthly == 2160.0
