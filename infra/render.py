"""The plan as a table (rich) or JSON: every resource with its type, name, parent and key inputs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiops.infra.offline import Plan, PlannedResource

if TYPE_CHECKING:
    from aiops.infra.commands import CostEstimate
    from aiops.infra.costs import PlanCosts

    from aiops.gpufit import Fit

KEY_INPUTS: dict[str, tuple[str, ...]] = {
    "pulumi:providers:aws": ("region",),
    "pulumi:providers:aws-native": ("region",),
    "aws-native:sagemaker:InferenceComponent": (
        "inferenceComponentName",
        "runtimeConfig.copyCount",
        "specification.computeResourceRequirements.numberOfAcceleratorDevicesRequired",
        "specification.startupParameters.modelDataDownloadTimeoutInSeconds",
        "specification.startupParameters.containerStartupHealthCheckTimeoutInSeconds",
    ),
    "aws:kms/key:Key": ("enableKeyRotation", "deletionWindowInDays"),
    "aws:kms/alias:Alias": ("name",),
    "aws:s3/bucket:Bucket": ("bucketPrefix", "forceDestroy"),
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": (
        "blockPublicAcls",
        "blockPublicPolicy",
        "ignorePublicAcls",
        "restrictPublicBuckets",
    ),
    "aws:s3/bucketVersioning:BucketVersioning": ("versioningConfiguration.status",),
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": (
        "rules[0].applyServerSideEncryptionByDefault.sseAlgorithm",
        "rules[0].bucketKeyEnabled",
    ),
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": ("rules[*].id",),
    "aws:s3/bucketPolicy:BucketPolicy": ("policy.Statement[*].Sid",),
    "aws:iam/role:Role": ("assumeRolePolicy.Statement[0].Principal.Service",),
    "aws:iam/rolePolicy:RolePolicy": ("policy.Statement[*].Sid",),
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": ("policyArn",),
    "aws:ecr/repository:Repository": ("name", "imageTagMutability"),
    "aws:cloudwatch/metricAlarm:MetricAlarm": ("name", "metricName", "threshold", "treatMissingData"),
    "aws:cloudwatch/dashboard:Dashboard": ("dashboardName",),
    "aws:sns/topic:Topic": ("name", "kmsMasterKeyId"),
    "aws:sns/topicSubscription:TopicSubscription": ("protocol", "endpoint"),
    "aws:sagemaker/model:Model": (
        "primaryContainer.image",
        "primaryContainer.modelDataUrl",
        "primaryContainer.modelDataSource.s3DataSources[0].s3Uri",
        "primaryContainer.modelDataSource.s3DataSources[0].compressionType",
    ),
    "aws:sagemaker/endpointConfiguration:EndpointConfiguration": (
        "namePrefix",
        "productionVariants[0].instanceType",
        "productionVariants[0].initialInstanceCount",
        "productionVariants[0].serverlessConfig.memorySizeInMb",
        "kmsKeyArn",
        "dataCaptureConfig.initialSamplingPercentage",
        "productionVariants[0].modelDataDownloadTimeoutInSeconds",
        "productionVariants[0].containerStartupHealthCheckTimeoutInSeconds",
        "productionVariants[0].volumeSizeInGb",
        "productionVariants[0].managedInstanceScaling.minInstanceCount",
        "productionVariants[0].managedInstanceScaling.maxInstanceCount",
        "asyncInferenceConfig.outputConfig.s3OutputPath",
    ),
    "aws:sagemaker/endpoint:Endpoint": (
        "name",
        "deploymentConfig.blueGreenUpdatePolicy.trafficRoutingConfiguration.type",
        "deploymentConfig.autoRollbackConfiguration.alarms[*].alarmName",
    ),
    "aws:appautoscaling/target:Target": ("resourceId", "minCapacity", "maxCapacity"),
    "aws:appautoscaling/policy:Policy": (
        "targetTrackingScalingPolicyConfiguration.targetValue",
        "targetTrackingScalingPolicyConfiguration.scaleInCooldown",
        "targetTrackingScalingPolicyConfiguration.scaleOutCooldown",
        "stepScalingPolicyConfiguration.adjustmentType",
    ),
    "aws:ec2/securityGroup:SecurityGroup": ("ingress", "egress[0].cidrBlocks"),
    "aws:ec2/launchTemplate:LaunchTemplate": (
        "instanceType",
        "imageId",
        "metadataOptions.httpTokens",
        "blockDeviceMappings[0].ebs.volumeType",
        "blockDeviceMappings[0].ebs.encrypted",
    ),
    "aws:autoscaling/group:Group": (
        "minSize",
        "maxSize",
        "desiredCapacity",
        "mixedInstancesPolicy.instancesDistribution.onDemandPercentageAboveBaseCapacity",
    ),
    "aws:iam/instanceProfile:InstanceProfile": (),
}


def lookup(value: Any, path: str) -> Any:
    """``a.b[0].c`` and ``a[*].b`` over the plan's (camelCase) inputs; JSON strings are decoded."""
    current: list[Any] = [value]
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        nxt: list[Any] = []
        for item in current:
            if isinstance(item, str) and item[:1] in "{[":
                try:
                    item = json.loads(item)
                except ValueError:
                    pass
            if part == "[*]" and isinstance(item, list):
                nxt.extend(item)
            elif part.startswith("[") and isinstance(item, list):
                i = int(part[1:-1])
                if i < len(item):
                    nxt.append(item[i])
            elif isinstance(item, dict) and part in item:
                nxt.append(item[part])
        current = nxt
    if not current:
        return None
    return current if "[*]" in path else current[0]


def key_inputs(resource: PlannedResource) -> str:
    paths = KEY_INPUTS.get(resource.type)
    if paths is None:
        paths = tuple(k for k, v in resource.inputs.items() if isinstance(v, (str, int, float, bool)))[:3]
    shown = []
    for path in paths:
        value = lookup(resource.inputs, path)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, list):
            value = ",".join(str(v) for v in value) or "[]"
        shown.append(f"{path.split('.')[-1].replace('[*]', '').replace('[0]', '')}={value}")
    return " ".join(shown)


def short_type(type_: str) -> str:
    if type_.startswith("aws:"):
        module, _, name = type_[4:].partition(":")
        return f"{module.split('/')[0]}.{name}"
    return type_


def to_json(plan: Plan, costs: PlanCosts | None = None, gpu_fit: Fit | None = None) -> str:
    data = plan.to_dict()
    if costs is not None:
        data["costs"] = costs.to_dict()
    if gpu_fit is not None:
        data["gpu_fit"] = gpu_fit.to_dict()
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def _usd(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def _usd_h(value: float | None) -> str:
    from aiops.infra.costs import rate

    return "" if value is None else rate(value)


def cost_total_line(costs: PlanCosts) -> str:
    """One line: the total now and at maximum capacity, and what it leaves out."""
    line = (
        f"total: ${_usd_h(costs.total_hourly)}/h, ${_usd(costs.total_monthly)}/month "
        f"(up to ${_usd_h(costs.max_hourly)}/h, ${_usd(costs.max_monthly)}/month at max capacity)"
    )
    note = costs.total_note()
    return f"{line}; {note}" if note else line


def deploy_cost_lines(estimate: CostEstimate) -> list[str]:
    """What `deploy` shows between its preview and the question: the cost as configured, or why not."""
    costs = estimate.costs
    if costs is None:
        return [f"cost estimate unavailable: {estimate.error}"]
    lines = [f"estimated cost of the stack as configured (not a diff; prices as of {costs.as_of}):"]
    for line in costs.lines:
        lines.append(
            f"  {line.resource}: {line.describe()}"
            + (f" = ${line.hourly:g}/h, ${line.monthly:,.2f}/month" if line.hourly is not None else "")
        )
    lines.append(f"  {cost_total_line(costs)}")
    return lines


def print_costs(costs: PlanCosts, console: Any, *, title: str | None = None) -> None:
    """The cost table: one row per priced resource, the total, the price table's date and source."""
    from rich.table import Table

    table = Table(
        title=title or f"estimated cost of stack '{costs.stack}' ({costs.region}, {costs.currency})"
    )
    table.add_column("resource", overflow="fold", max_width=28)
    table.add_column("instances", overflow="fold")
    table.add_column("$/h", justify="right")
    table.add_column("$/month", justify="right")
    table.add_column("at max $/h", justify="right")
    table.add_column("note", overflow="fold", ratio=1)
    for line in costs.lines:
        if line.pricing == "usage":
            table.add_row(line.resource, "serverless", "usage-based", "usage-based", "", line.note)
            continue
        if not line.known:
            table.add_row(
                line.resource, f"{line.count} x {line.instance_type}", "unknown", "unknown", "", line.note
            )
            continue
        count = f"{line.count}" + (
            f" (max {line.max_count})" if line.max_count not in (None, line.count) else ""
        )
        note = line.note
        if line.spot and line.on_demand_unit_hourly is not None:
            note += (
                f"; on-demand ${_usd_h(line.on_demand_hourly)}/h now, "
                f"${_usd_h(line.on_demand_max_hourly)}/h at max"
            )
        table.add_row(
            line.resource,
            f"{count} x {line.instance_type}",
            _usd_h(line.hourly),
            _usd(line.monthly),
            _usd_h(line.max_hourly),
            note,
        )
    if not costs.lines:
        table.add_row("(none)", "", "0", "0", "", "no instance-backed resource in this stack")
    console.print(table)
    console.print(cost_total_line(costs))
    console.print(f"{costs.unpriced_resources} other resources: no instance charge. {costs.notes[0]}.")
    console.print(f"prices as of {costs.as_of} ({costs.hours_per_month:g} h/month): {costs.source}")


def print_table(plan: Plan, console: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"aiops stack '{plan.stack}' ({plan.region}): {len(plan.resources)} resources, offline preview"
    )
    table.add_column("type", overflow="fold", max_width=26)
    table.add_column("name", overflow="fold", max_width=24)
    table.add_column("parent", overflow="fold", max_width=10)
    table.add_column("key inputs", overflow="fold", min_width=36, ratio=1)
    for r in plan.resources:
        table.add_row(short_type(r.type), r.name, r.parent or "", key_inputs(r))
    console.print(table)
    outs = Table(title="outputs (mocked values)")
    outs.add_column("output")
    outs.add_column("value", overflow="fold")
    for k in sorted(plan.outputs):
        outs.add_row(k, str(plan.outputs[k]))
    console.print(outs)
