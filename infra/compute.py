"""GpuCompute: GPU EC2 machines for interactive or self-managed work, reached through Session
Manager (no SSH ingress), behind an autoscaling group that can sit at 0."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pulumi
from aiops.infra.config_sections import ComputeConfig
from aiops.infra.policies import assume_role_policy
from pulumi_aws import autoscaling, ec2, iam


@dataclass(frozen=True)
class GpuComputeArgs:
    prefix: str
    config: ComputeConfig
    key_arn: pulumi.Input[str]
    partition: pulumi.Input[str]


def user_data() -> str:
    script = "#!/bin/bash\nset -eu\nnvidia-smi || true\n"
    return base64.b64encode(script.encode()).decode()


class GpuCompute(pulumi.ComponentResource):
    launch_template: ec2.LaunchTemplate
    group: autoscaling.Group

    def __init__(self, name: str, args: GpuComputeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiops:infra:GpuCompute", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)

        # Every family the GPU table allows (aiops/data/gpus.json) is x86_64 with NVIDIA GPUs: the
        # default AMI filter names the x86 NVIDIA driver image.
        arch = "x86_64"
        ami = ec2.get_ami_output(
            most_recent=True,
            owners=[cfg.ami_owner],
            filters=[
                {"name": "name", "values": [cfg.ami_name_filter]},
                {"name": "architecture", "values": [arch]},
                {"name": "state", "values": ["available"]},
            ],
            opts=invoke,
        )
        if cfg.vpc_id:
            vpc_id: pulumi.Input[str] = cfg.vpc_id
            subnet_ids: pulumi.Input[list] = list(cfg.subnet_ids)
        else:
            vpc = ec2.get_vpc_output(default=True, opts=invoke)
            vpc_id = vpc.id
            subnet_ids = ec2.get_subnets_output(
                filters=[
                    {"name": "vpc-id", "values": [vpc.id]},
                    {"name": "default-for-az", "values": ["true"]},
                ],
                opts=invoke,
            ).ids

        # No ingress rule at all: shells go through Session Manager (the SSM agent dials out).
        self.security_group = ec2.SecurityGroup(
            f"{name}-sg",
            description=f"{args.prefix} GPU machines: no inbound, all outbound",
            vpc_id=vpc_id,
            ingress=[],
            egress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"]}],
            opts=child,
        )
        self.role = iam.Role(
            f"{name}-role",
            description=f"{args.prefix}: GPU machines (Session Manager)",
            assume_role_policy=json.dumps(assume_role_policy("ec2.amazonaws.com")),
            opts=child,
        )
        self.ssm = iam.RolePolicyAttachment(
            f"{name}-ssm",
            role=self.role.name,
            policy_arn=pulumi.Output.from_input(args.partition).apply(
                lambda p: f"arn:{p}:iam::aws:policy/AmazonSSMManagedInstanceCore"
            ),
            opts=child,
        )
        self.profile = iam.InstanceProfile(f"{name}-profile", role=self.role.name, opts=child)

        self.launch_template = ec2.LaunchTemplate(
            f"{name}-template",
            name_prefix=f"{args.prefix}-gpu-",
            image_id=ami.id,
            instance_type=cfg.instance_type,
            iam_instance_profile={"arn": self.profile.arn},
            vpc_security_group_ids=[self.security_group.id],
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",  # IMDSv2 only
                "http_put_response_hop_limit": 1,
                "instance_metadata_tags": "disabled",
            },
            block_device_mappings=[
                {
                    "device_name": ami.root_device_name,
                    "ebs": {
                        "volume_size": cfg.root_volume_gb,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "kms_key_id": args.key_arn,
                        "delete_on_termination": "true",
                    },
                }
            ],
            user_data=user_data(),
            update_default_version=True,
            tag_specifications=[
                {"resource_type": "instance", "tags": {"Name": f"{args.prefix}-gpu"}},
                {"resource_type": "volume", "tags": {"Name": f"{args.prefix}-gpu"}},
            ],
            opts=child,
        )
        template_ref = {"launch_template_id": self.launch_template.id, "version": "$Latest"}
        group_args: dict = {}
        if cfg.spot:
            group_args["mixed_instances_policy"] = {
                "launch_template": {"launch_template_specification": template_ref},
                "instances_distribution": {
                    "on_demand_base_capacity": 0,
                    "on_demand_percentage_above_base_capacity": 0,
                    "spot_allocation_strategy": "price-capacity-optimized",
                },
            }
        else:
            group_args["launch_template"] = {"id": self.launch_template.id, "version": "$Latest"}
        self.group = autoscaling.Group(
            f"{name}-asg",
            name_prefix=f"{args.prefix}-gpu-",
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            desired_capacity=cfg.desired_capacity,
            vpc_zone_identifiers=subnet_ids,
            capacity_rebalance=cfg.spot,
            tags=[{"key": "Name", "value": f"{args.prefix}-gpu", "propagate_at_launch": True}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.ssm]),
            **group_args,
        )
        self.register_outputs(
            {"launch_template_id": self.launch_template.id, "group_name": self.group.name, "ami_id": ami.id}
        )
