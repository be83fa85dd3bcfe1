"""Plan costs against hand-computed figures (shipped price table, offline plans)."""

from __future__ import annotations

import json

import pytest

from aiops.infra.config import load_stack_file
from aiops.infra.costs import CostLine, PlanCosts, plan_costs, rate
from aiops.infra.offline import plan
from aiops.pricing import PriceTable, load_prices

from .conftest import REPO


def test_line_arithmetic_by_hand():
    # 2 x ml.g5.xlarge at 1.408 $/h = 2.816 $/h; x 730 h = 2055.68 $/month; at 4 instances 5.632 $/h
    line = CostLine(resource="ec/primary", type="t", service="sagemaker", pricing="instance",
                    instance_type="ml.g5.xlarge", count=2, max_count=4, unit_hourly=1.408,
                    on_demand_unit_hourly=1.408, hours_per_month=730)
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
    # 1 x ml.g5.xlarge (initialInstanceCount 1, maxCapacity 2)
    assert (ep.instance_type, ep.count, ep.max_count) == ("ml.g5.xlarge", 1, 2)
    assert ep.hourly == pytest.approx(1.408) and ep.monthly == 1027.84 and ep.max_hourly == pytest.approx(2.816)
    gpu = by_name["gpu-asg"]
    # desiredCapacity 0 of maxSize 1 g5.xlarge, spot: 1.006 * (1 - 0.65) = 0.3521 $/h at max
    assert (gpu.instance_type, gpu.count, gpu.max_count, gpu.spot) == ("g5.xlarge", 0, 1, True)
    assert gpu.hourly == 0 and gpu.max_hourly == pytest.approx(0.3521)
    assert gpu.on_demand_max_hourly == pytest.approx(1.006)
    assert costs.total_hourly == pytest.approx(1.408)
    assert costs.total_monthly == 1027.84
    assert costs.max_hourly == pytest.approx(2.816 + 0.3521)
    assert costs.max_monthly == pytest.approx(3.1681 * 730, abs=0.01)
    assert costs.unpriced_resources > 15 and costs.total_note() == ""


def test_prod_plan_totals():
    costs = plan_costs(plan(load_stack_file(REPO / "Pulumi.prod.yaml")))
    (line,) = costs.lines  # no GPU machines in prod
    # us-west-2 lists us-east-1's prices: 2 x ml.g5.2xlarge at 1.515 = 3.03 $/h, 2211.90 $/month;
    # up to 8 x 1.515 = 12.12 $/h at maxCapacity
    assert (line.instance_type, line.count, line.max_count) == ("ml.g5.2xlarge", 2, 8)
    assert costs.total_hourly == pytest.approx(3.03)
    assert costs.total_monthly == 2211.90
    assert costs.max_hourly == pytest.approx(12.12) and costs.max_monthly == 8847.60


def test_on_demand_gpu_group(make_plan):
    costs = plan_costs(make_plan(endpoint={"enabled": False},
                                 compute={"instanceType": "p3.2xlarge", "desiredCapacity": 2, "maxSize": 3}))
    (line,) = costs.lines
    # 2 x p3.2xlarge on-demand at 3.06 = 6.12 $/h, 4467.60 $/month; 3 at max = 9.18 $/h
    assert not line.spot and line.unit_hourly == 3.06
    assert line.hourly == pytest.approx(6.12) and line.monthly == 4467.60 and line.max_hourly == pytest.approx(9.18)


def test_unknown_price_is_reported_never_zero(make_plan):
    # ml.g6.xlarge is a valid GPU type the table does not list
    costs = plan_costs(make_plan(endpoint={"instanceType": "ml.g6.xlarge"}, compute={"desiredCapacity": 1}))
    ep = next(line for line in costs.lines if line.service == "sagemaker")
    assert not ep.known and ep.hourly is None and ep.monthly is None
    assert "no known price for ml.g6.xlarge in us-east-1" in ep.describe()
    assert not costs.complete and costs.total_note() == "incomplete: 1 resource without a known price"
    # the rest is still priced: the one on-demand g5.xlarge machine
    assert costs.total_hourly == pytest.approx(1.006)
    data = costs.to_dict()
    assert data["complete"] is False and data["unknown"] == ["endpoint-config/primary"]


def test_unknown_region_prices(make_plan):
    costs = plan_costs(make_plan(region="ap-south-2"))
    assert len(costs.unknown) == 2 and costs.total_hourly == 0
    assert costs.total_note() == "incomplete: 2 resources without a known price"


def test_serverless_is_usage_based(make_plan):
    costs = plan_costs(make_plan(endpoint={"serverless": {"enabled": True}, "dataCapture": {"enabled": False}},
                                 compute={"enabled": False}))
    (line,) = costs.lines
    assert line.pricing == "usage" and line.known and line.hourly is None
    assert line.describe().startswith("usage-based")
    assert costs.total_hourly == 0 and "usage-based charges of 1 serverless variant" in costs.total_note()


def test_table_date_and_source_and_roundtrip():
    costs = plan_costs(plan(load_stack_file(REPO / "Pulumi.dev.yaml")))
    table = load_prices()
    assert costs.as_of == table.as_of and costs.source == table.source and costs.hours_per_month == 730
    data = json.loads(json.dumps(costs.to_dict()))
    back = PlanCosts.from_dict(data, stack="dev")
    assert back.total_hourly == costs.total_hourly and back.lines == costs.lines


def test_custom_price_table(make_plan):
    table = PriceTable({"as_of": "x", "source": "test", "hours_per_month": 720, "currency": "USD",
                        "spot_discount": {"sagemaker": 0.5, "ec2": 0.5},
                        "regions": {"us-east-1": {"sagemaker": {"ml.g5.xlarge": 1.0}, "ec2": {"g5.xlarge": 2.0}}}})
    costs = plan_costs(make_plan(compute={"spot": False, "desiredCapacity": 1}), table)
    assert costs.total_hourly == pytest.approx(3.0) and costs.total_monthly == 2160.0
