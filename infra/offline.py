"""Run the stack program under Pulumi mocks: no Pulumi CLI, no credentials, no network.

``plan(cfg)`` is what ``aiops preview --offline`` prints and what the tests inspect: the same code
path. The mocks record every resource and every invoke, answer only the invokes they know, and
raise on any other (an unmocked invoke would otherwise return ``{}`` silently).
"""

from __future__ import annotations

import asyncio
import gc
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from aiops.infra.config import StackConfig

from aiops.errors import AiopsError

FAKE_ACCOUNT = "123456789012"


class UnknownInvokeError(AiopsError):
    pass


@dataclass
class PlannedResource:
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    urn: str = ""
    custom: bool = True
    dependencies: list[str] = field(default_factory=list)  # names of what it waits for (inputs, dependsOn)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    stack: str
    region: str
    resources: list[PlannedResource]
    invokes: list[dict[str, Any]]
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> PlannedResource:
        found = self.of_type(type_)
        if len(found) != 1:
            raise AssertionError(f"expected one {type_}, found {len(found)}")
        return found[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "region": self.region,
            "resources": [r.to_dict() for r in self.resources],
            "invokes": self.invokes,
            "outputs": self.outputs,
        }


def _mock_invoke(token: str, args: dict[str, Any], region: str) -> dict[str, Any]:
    if token == "aws:index/getCallerIdentity:getCallerIdentity":
        return {
            "accountId": FAKE_ACCOUNT,
            "arn": f"arn:aws:iam::{FAKE_ACCOUNT}:user/preview",
            "userId": "AIDAPREVIEW",
            "id": FAKE_ACCOUNT,
        }
    if token == "aws:index/getPartition:getPartition":
        part = (
            "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
        )
        return {
            "partition": part,
            "dnsSuffix": "amazonaws.com",
            "id": part,
            "reverseDnsPrefix": "com.amazonaws",
        }
    if token == "aws:ec2/getAmi:getAmi":
        return {
            "id": "ami-0123456789abcdef0",
            "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261101",
            "rootDeviceName": "/dev/sda1",
            "architecture": "x86_64",
        }
    if token == "aws:ec2/getVpc:getVpc":
        return {"id": "vpc-0default", "cidrBlock": "172.31.0.0/16", "default": True}
    if token == "aws:ec2/getSubnets:getSubnets":
        return {"id": "subnets", "ids": ["subnet-0a", "subnet-0b", "subnet-0c"]}
    raise UnknownInvokeError(f"offline preview: no mock for invoke {token} (args {sorted(args)})")


def _computed(typ: str, name: str, inputs: dict[str, Any], region: str) -> dict[str, Any]:
    """Values the provider would compute (ids, ARNs, names), so apply callbacks never see None."""
    service = typ.split(":")[1].split("/")[0] if ":" in typ else "aws"
    physical = inputs.get("name") or (inputs.get("namePrefix") or inputs.get("bucketPrefix") or "") + name
    state: dict[str, Any] = {"name": physical, "arn": f"arn:aws:{service}:{region}:{FAKE_ACCOUNT}:{name}"}
    if typ == "aws:s3/bucket:Bucket":
        state.update(bucket=physical, arn=f"arn:aws:s3:::{physical}")
    elif typ == "aws:kms/key:Key":
        state.update(keyId=f"key-{name}", arn=f"arn:aws:kms:{region}:{FAKE_ACCOUNT}:key/{name}")
    elif typ == "aws:iam/role:Role":
        state.update(arn=f"arn:aws:iam::{FAKE_ACCOUNT}:role/{physical}", id=physical)
    elif typ == "aws:iam/instanceProfile:InstanceProfile":
        state.update(arn=f"arn:aws:iam::{FAKE_ACCOUNT}:instance-profile/{physical}")
    elif typ == "aws:ecr/repository:Repository":
        state.update(repositoryUrl=f"{FAKE_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{physical}")
    elif typ == "aws:sagemaker/endpoint:Endpoint":
        state.update(arn=f"arn:aws:sagemaker:{region}:{FAKE_ACCOUNT}:endpoint/{physical}")
    elif typ == "aws:sns/topic:Topic":
        state.update(arn=f"arn:aws:sns:{region}:{FAKE_ACCOUNT}:{physical}")
    elif typ == "aws:cloudwatch/dashboard:Dashboard":
        state.update(
            dashboardArn=f"arn:aws:cloudwatch::{FAKE_ACCOUNT}:dashboard/{inputs.get('dashboardName')}"
        )
    elif typ == "aws:appautoscaling/target:Target":
        state.update(
            serviceNamespace=inputs.get("serviceNamespace"),
            scalableDimension=inputs.get("scalableDimension"),
            resourceId=inputs.get("resourceId"),
        )
    return state


@contextmanager
def _collector_paused():
    """No cyclic garbage collection while the plan loads pulumi_aws and runs the program; what it
    loaded is then frozen (``gc.freeze``).

    The service packages the program touches (ec2, sagemaker, s3, ...) add some 300,000 objects that
    live as long as the process. While they load, each full collection scans all of them again and
    frees almost nothing, and at exit the interpreter's last collection tears them all down: together
    about 1 s of CPU of a 2.4 s preview (bench/results/preview-offline-profile.md). Frozen objects are
    skipped by later collections and by the exit. The price: the cycles of the plan that loaded the
    modules (~9,000 objects) are frozen too and never freed, once per set of modules loaded."""
    enabled = gc.isenabled()
    modules = len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > modules:
            gc.freeze()
        if enabled:
            gc.enable()


def plan(cfg: StackConfig, *, preview: bool = True) -> Plan:
    """Run ``program.build(cfg)`` under mocks and return every resource it declared."""
    with _collector_paused():
        return _plan(cfg, preview=preview)


def _plan(cfg: StackConfig, *, preview: bool) -> Plan:
    import pulumi
    from pulumi.runtime import mocks as pmocks

    resources: list[PlannedResource] = []
    invokes: list[dict[str, Any]] = []
    unknown: list[str] = []
    urn_to_name: dict[str, str] = {}
    region = cfg.region

    pending: dict[tuple[str, str], tuple[dict[str, Any], bool]] = {}

    class Recorder(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            inputs = dict(args.inputs)
            computed = _computed(args.typ, args.name, inputs, region)
            state = {**computed, **inputs}
            state["arn"] = inputs.get("arn") or computed["arn"]
            pending[(args.typ, args.name)] = (inputs, True if args.custom is None else args.custom)
            return state.get("id") or f"{args.name}-id", state

        def call(self, args: pulumi.runtime.MockCallArgs):
            invokes.append({"token": args.token, "args": dict(args.args)})
            try:
                return _mock_invoke(args.token, dict(args.args), region)
            except UnknownInvokeError:
                unknown.append(args.token)
                raise

    class Monitor(pmocks.MockMonitor):
        def RegisterResource(self, request):  # noqa: N802 - the gRPC name
            response = super().RegisterResource(request)
            if request.type != "pulumi:pulumi:Stack":
                urn_to_name[response.urn] = request.name
                inputs, custom = pending.pop((request.type, request.name), ({}, True))
                resources.append(
                    PlannedResource(
                        type=request.type,
                        name=request.name,
                        parent=urn_to_name.get(request.parent) if request.parent else None,
                        inputs=inputs,
                        urn=response.urn,
                        custom=custom,
                        dependencies=sorted({urn_to_name.get(u, u) for u in request.dependencies}),
                    )
                )
            return response

    mocks = Recorder()
    _ensure_event_loop()
    pulumi.runtime.set_mocks(
        mocks, project=cfg.project, stack=cfg.stack, preview=preview, monitor=Monitor(mocks)
    )

    from aiops.infra.program import build

    result: dict[str, Any] = {}

    @pulumi.runtime.test
    def run():
        outputs = build(cfg).exported()
        keys = list(outputs)
        return pulumi.Output.all(*[outputs[k] for k in keys]).apply(
            lambda vals: result.update(zip(keys, vals, strict=True))
        )

    run()
    if unknown:
        raise UnknownInvokeError(f"offline preview: no mock for invoke {unknown[0]}")
    # Registration order is not deterministic: sort by component, then component first, type, name.
    resources.sort(key=lambda r: (r.parent or r.name, r.parent is not None, r.type, r.name))
    return Plan(stack=cfg.stack, region=cfg.region, resources=resources, invokes=invokes, outputs=result)


def _ensure_event_loop() -> None:
    """Pulumi's mocks make their futures on the thread's current event loop. After an
    ``asyncio.run`` (which leaves none set) or in a worker thread there is none, so the plan
    would fail with "no current event loop": give the thread a fresh one then."""
    try:
        if not asyncio.get_event_loop_policy().get_event_loop().is_closed():
            return
    except RuntimeError:
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())
