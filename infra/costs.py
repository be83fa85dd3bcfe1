"""What a planned stack costs per hour and per month: instance charges from the shipped price table.

Pure functions over an offline ``Plan`` (``infra/offline.py``) and a ``PriceTable``
(``aiops.pricing``): no pulumi import, no network. Priced:

- SageMaker ``EndpointConfiguration`` production variants: instance type x initial instance count
  at the hosting price; the autoscaling target's ``maxCapacity`` (same component, same variant) is
  shown as the most the variant can cost. A variant that scales to zero (managed instance scaling
  from 0 with inference components, or a scaling target from 0 with asynchronous inference) is
  priced at its idle count, 0 ($0/h), up to its maximum, with the cold start in its note. Serverless
  variants are billed per use: "usage-based", never $0, and not in the total.
- EC2 ``autoscaling.Group``: desired capacity (else min size) x the launch template's instance type
  (the template under the same component); spot price when the group's mixed-instances policy buys
  spot (on-demand shown beside it), and the cost at ``maxSize``.

Every other resource has no instance charge (KMS keys, alarms, dashboards, S3 storage and requests,
data transfer are not estimated). An instance type the table does not know is reported as unknown
in its row and makes the total "incomplete", never a silent zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from aiops.infra.offline import Plan, PlannedResource

from aiops.pricing import PriceTable, load_prices

ENDPOINT_CONFIG = "aws:sagemaker/endpointConfiguration:EndpointConfiguration"
SCALING_TARGET = "aws:appautoscaling/target:Target"
ASG = "aws:autoscaling/group:Group"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"

Pricing = Literal["instance", "usage"]


def _money(value: float) -> float:
    return round(value, 6)


def rate(value: float) -> str:
    """A price per hour for people: up to 4 decimals, no trailing zeros (1.408, 0.3521, 2)."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class CostLine:
    """One priced resource (one production variant, or one autoscaling group)."""

    resource: str  # the plan's resource name (plus the variant for endpoint configurations)
    type: str
    service: str  # "sagemaker" | "ec2"
    pricing: Pricing
    instance_type: str | None
    count: int  # instances now (initial / desired)
    max_count: int | None  # at maximum capacity (autoscaling), when known
    spot: bool = False
    unit_hourly: float | None = None  # the price of one instance-hour as billed (spot when spot)
    on_demand_unit_hourly: float | None = None
    hours_per_month: float = 730.0
    note: str = ""

    @property
    def known(self) -> bool:
        return self.pricing == "usage" or self.unit_hourly is not None

    @property
    def hourly(self) -> float | None:
        if self.pricing != "instance" or self.unit_hourly is None:
            return None
        return _money(self.count * self.unit_hourly)

    @property
    def monthly(self) -> float | None:
        return None if self.hourly is None else round(self.hourly * self.hours_per_month, 2)

    @property
    def max_hourly(self) -> float | None:
        if self.pricing != "instance" or self.unit_hourly is None or self.max_count is None:
            return None
        return _money(self.max_count * self.unit_hourly)

    @property
    def on_demand_hourly(self) -> float | None:
        if not self.spot or self.on_demand_unit_hourly is None:
            return None
        return _money(self.count * self.on_demand_unit_hourly)

    @property
    def on_demand_max_hourly(self) -> float | None:
        if not self.spot or self.on_demand_unit_hourly is None or self.max_count is None:
            return None
        return _money(self.max_count * self.on_demand_unit_hourly)

    def describe(self) -> str:
        """$/h as a phrase: '2 x ml.g5.xlarge at $1.408/h', 'usage-based', 'no known price'."""
        if self.pricing == "usage":
            return f"usage-based ({self.note})" if self.note else "usage-based"
        if self.unit_hourly is None:
            return self.note or f"no known price for {self.instance_type}"
        what = f"{self.count} x {self.instance_type} at ${rate(self.unit_hourly)}/h"
        return what + (" spot" if self.spot else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            known=self.known,
            hourly=self.hourly,
            monthly=self.monthly,
            max_hourly=self.max_hourly,
            on_demand_hourly=self.on_demand_hourly,
            on_demand_max_hourly=self.on_demand_max_hourly,
            description=self.describe(),
        )
        return d


@dataclass(frozen=True)
class PlanCosts:
    stack: str
    region: str
    lines: list[CostLine]
    unpriced_resources: int  # resources with no instance charge
    as_of: str
    source: str
    currency: str
    hours_per_month: float
    notes: list[str] = field(default_factory=list)

    @property
    def unknown(self) -> list[CostLine]:
        return [line for line in self.lines if not line.known]

    @property
    def usage_based(self) -> list[CostLine]:
        return [line for line in self.lines if line.pricing == "usage"]

    @property
    def complete(self) -> bool:
        return not self.unknown

    @property
    def total_hourly(self) -> float:
        """The sum of the known instance charges (see ``complete`` and ``usage_based``)."""
        return _money(sum(line.hourly or 0.0 for line in self.lines))

    @property
    def total_monthly(self) -> float:
        return round(self.total_hourly * self.hours_per_month, 2)

    @property
    def max_hourly(self) -> float:
        """At maximum capacity: every variant and group at its autoscaling maximum."""
        return _money(
            sum(
                (line.max_hourly if line.max_hourly is not None else line.hourly or 0.0)
                for line in self.lines
            )
        )

    @property
    def max_monthly(self) -> float:
        return round(self.max_hourly * self.hours_per_month, 2)

    def total_note(self) -> str:
        """What the total leaves out, in words (empty when nothing)."""
        parts = []
        if self.unknown:
            n = len(self.unknown)
            parts.append(f"incomplete: {n} resource{'s' if n != 1 else ''} without a known price")
        if self.usage_based:
            n = len(self.usage_based)
            parts.append(f"plus usage-based charges of {n} serverless variant{'s' if n != 1 else ''}")
        return "; ".join(parts)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, stack: str) -> PlanCosts:
        """Back from ``to_dict`` (what `aiops cost --json` prints)."""
        names = {f.name for f in fields(CostLine)}
        return cls(
            stack=stack,
            region=data["region"],
            lines=[CostLine(**{k: v for k, v in line.items() if k in names}) for line in data["lines"]],
            unpriced_resources=data["unpriced_resources"],
            as_of=data["as_of"],
            source=data["source"],
            currency=data["currency"],
            hours_per_month=data["hours_per_month"],
            notes=list(data.get("notes", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "as_of": self.as_of,
            "source": self.source,
            "hours_per_month": self.hours_per_month,
            "region": self.region,
            "lines": [line.to_dict() for line in self.lines],
            "total_hourly": self.total_hourly,
            "total_monthly": self.total_monthly,
            "max_hourly": self.max_hourly,
            "max_monthly": self.max_monthly,
            "complete": self.complete,
            "unknown": [line.resource for line in self.unknown],
            "usage_based": [line.resource for line in self.usage_based],
            "unpriced_resources": self.unpriced_resources,
            "total_note": self.total_note(),
            "notes": self.notes,
        }


def _scaling_target(plan: Plan, config: PlannedResource, variant: str) -> PlannedResource | None:
    """The scaling target of this variant's instance count, found under the same component."""
    for target in plan.of_type(SCALING_TARGET):
        rid = str(target.inputs.get("resourceId", ""))
        if (
            target.parent == config.parent
            and rid.endswith(f"/variant/{variant}")
            and rid.startswith("endpoint/")
        ):
            return target
    return None


def _scaling_max(plan: Plan, config: PlannedResource, variant: str) -> int | None:
    """maxCapacity of the scaling target for this variant, found under the same component."""
    target = _scaling_target(plan, config, variant)
    value = target.inputs.get("maxCapacity") if target else None
    return int(value) if value is not None else None


SCALES_TO_ZERO = (
    "scales to 0 when idle ($0/h); cold start: minutes (instance launch, model download, "
    "container start) for the first request after idle"
)


def _idle_range(plan: Plan, config: PlannedResource, variant: dict) -> tuple[int, int] | None:
    """(instances when idle, at most) for a variant that scales to zero: managed instance scaling
    (inference components) or a scaling target with minCapacity 0 (asynchronous inference)."""
    managed = variant.get("managedInstanceScaling") or {}
    if managed.get("status") == "ENABLED" and int(managed.get("minInstanceCount") or 0) == 0:
        return 0, int(managed.get("maxInstanceCount") or 1)
    target = _scaling_target(plan, config, str(variant.get("variantName")))
    if target is not None and int(target.inputs.get("minCapacity", 1)) == 0:
        return 0, int(target.inputs.get("maxCapacity") or 1)
    return None


def variant_lines(plan: Plan, config: PlannedResource, table: PriceTable) -> list[CostLine]:
    lines = []
    variants = config.inputs.get("productionVariants") or []
    for v in variants:
        name = f"{config.name}/{v.get('variantName', '?')}"
        if v.get("serverlessConfig"):
            sl = v["serverlessConfig"]
            lines.append(
                CostLine(
                    resource=name,
                    type=config.type,
                    service="sagemaker",
                    pricing="usage",
                    instance_type=None,
                    count=0,
                    max_count=None,
                    hours_per_month=table.hours_per_month,
                    note=f"serverless, {sl.get('memorySizeInMb')} MB, billed per request and compute time",
                )
            )
            continue
        itype = str(v.get("instanceType"))
        count = int(v.get("initialInstanceCount") or 1)
        max_count = _scaling_max(plan, config, str(v.get("variantName")))
        idle = _idle_range(plan, config, v)
        if idle is not None:
            count, max_count = idle
        price = table.lookup("sagemaker", itype, plan.region)
        note = "hosting, on-demand" if price else f"no known price for {itype} in {plan.region}"
        if idle is not None:
            note += f"; {SCALES_TO_ZERO}"
        lines.append(
            CostLine(
                resource=name,
                type=config.type,
                service="sagemaker",
                pricing="instance",
                instance_type=itype,
                count=count,
                max_count=max_count if max_count is not None else count,
                unit_hourly=price.on_demand_hourly if price else None,
                on_demand_unit_hourly=price.on_demand_hourly if price else None,
                hours_per_month=table.hours_per_month,
                note=note,
            )
        )
    return lines


def _group_template_type(plan: Plan, group: PlannedResource) -> str | None:
    templates = [t for t in plan.of_type(LAUNCH_TEMPLATE) if t.parent == group.parent]
    if len(templates) != 1:
        return None
    value = templates[0].inputs.get("instanceType")
    return str(value) if value else None


def group_line(plan: Plan, group: PlannedResource, table: PriceTable) -> CostLine:
    inputs = group.inputs
    mixed = inputs.get("mixedInstancesPolicy") or {}
    dist = mixed.get("instancesDistribution") or {}
    overrides = (mixed.get("launchTemplate") or {}).get("overrides") or []
    itype = _group_template_type(plan, group)
    if overrides and overrides[0].get("instanceType"):
        itype = str(overrides[0]["instanceType"])
    desired = inputs.get("desiredCapacity")
    count = int(desired if desired is not None else inputs.get("minSize") or 0)
    max_count = int(inputs.get("maxSize") or count)
    # Spot when the mixed-instances policy buys less than 100 % on-demand above a zero base.
    spot = (
        bool(mixed)
        and int(dist.get("onDemandBaseCapacity") or 0) == 0
        and int(dist.get("onDemandPercentageAboveBaseCapacity", 100)) < 100
    )
    od_share = int(dist.get("onDemandPercentageAboveBaseCapacity", 100)) / 100.0 if spot else 1.0
    price = table.lookup("ec2", itype, plan.region) if itype else None
    unit = None
    if price is not None:
        unit = (
            price.on_demand_hourly * od_share + price.spot_hourly * (1.0 - od_share)
            if spot
            else price.on_demand_hourly
        )
    if price is None:
        note = (
            f"no known price for {itype} in {plan.region}" if itype else "instance type not found in the plan"
        )
    elif spot:
        note = f"spot (typical discount {round((1 - price.spot_hourly / price.on_demand_hourly) * 100)} %)"
        if od_share:
            note += f", {round(od_share * 100)} % on-demand"
    else:
        note = "on-demand"
    return CostLine(
        resource=group.name,
        type=group.type,
        service="ec2",
        pricing="instance",
        instance_type=itype,
        count=count,
        max_count=max_count,
        spot=spot,
        unit_hourly=_money(unit) if unit is not None else None,
        on_demand_unit_hourly=price.on_demand_hourly if price else None,
        hours_per_month=table.hours_per_month,
        note=note,
    )


def plan_costs(plan: Plan, table: PriceTable | None = None) -> PlanCosts:
    """Price every instance-backed resource of the plan; see the module docstring for the rules."""
    table = table or load_prices()
    lines: list[CostLine] = []
    priced: set[str] = set()
    for config in plan.of_type(ENDPOINT_CONFIG):
        lines += variant_lines(plan, config, table)
        priced.add(config.name)
    for group in plan.of_type(ASG):
        lines.append(group_line(plan, group, table))
        priced.add(group.name)
    custom = [r for r in plan.resources if r.type.startswith("aws:")]  # not components, not the provider
    notes = [
        "Instance charges only, running all month: KMS keys, alarms, dashboards, S3 "
        "storage and requests, data transfer and serverless usage are not estimated"
    ]
    return PlanCosts(
        stack=plan.stack,
        region=plan.region,
        lines=lines,
        unpriced_resources=len([r for r in custom if r.name not in priced]),
        as_of=table.as_of,
        source=table.source,
        currency=table.data.get("currency", "USD"),
        hours_per_month=table.hours_per_month,
        notes=notes,
    )
