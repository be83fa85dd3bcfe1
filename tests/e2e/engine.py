"""A stand-in for the Pulumi engine: applies the offline plan's resources to moto.

The ``pulumi`` binary cannot run here, so nothing can run ``aiops deploy`` for real. What the
user's stack would hold is known exactly, though: ``aiops preview --offline --json`` runs the
stack program under Pulumi mocks and lists every resource with its inputs. This engine creates
those resources in moto from those inputs, as the AWS provider would (camelCase inputs turned
into the API's parameters), in dependency order, with the admin credentials a user deploying the
stack would hold.

What it does like the real engine: auto-named resources get a random suffix (``bucketPrefix``,
``namePrefix``, no ``name``), and every value the mocks computed (ids, ARNs, names, the KMS key
id) is replaced in later inputs by the value moto returned, so nothing downstream can depend on
a mock's placeholder. Applying a second plan updates what changed: a SageMaker model or endpoint
configuration is replaced (create, switch the endpoint, delete the old one), an endpoint is
updated in place, a policy is put again. A resource type it does not know stops it with an error
naming the type: nothing in a plan is silently skipped but providers and component resources.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The order the AWS provider's dependency graph gives for these types.
ORDER = [
    "aws:kms/key:Key",
    "aws:kms/alias:Alias",
    "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet",
    "aws:ec2/securityGroup:SecurityGroup",
    "aws:ec2/routeTable:RouteTable",
    "aws:ec2/routeTableAssociation:RouteTableAssociation",
    "aws:ec2/vpcEndpoint:VpcEndpoint",
    "aws:s3/bucket:Bucket",
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
    "aws:s3/bucketVersioning:BucketVersioning",
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketPolicy:BucketPolicy",
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
    "aws:iam/role:Role",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:sns/topic:Topic",
    "aws:sns/topicSubscription:TopicSubscription",
    "aws:cloudwatch/metricAlarm:MetricAlarm",
    "aws:sagemaker/model:Model",
    "aws:sagemaker/endpointConfiguration:EndpointConfiguration",
    "aws:sagemaker/endpoint:Endpoint",
    "aws-native:sagemaker:InferenceComponent",
    "aws:appautoscaling/target:Target",
    "aws:appautoscaling/policy:Policy",
    "aws:cloudwatch/dashboard:Dashboard",
]


def _ints(value: Any) -> Any:
    """Mock inputs carry every number as a float; the APIs want integers where they are integral."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    return value


def pascal(value: Any) -> Any:
    """camelCase input keys -> the API's PascalCase (recursively)."""
    if isinstance(value, list):
        return [pascal(v) for v in value]
    if isinstance(value, dict):
        return {k[:1].upper() + k[1:]: pascal(v) for k, v in value.items()}
    return _ints(value)


def _suffix() -> str:
    return secrets.token_hex(4)[:7]


@dataclass
class Applied:
    type: str
    name: str
    inputs: dict[str, Any]  # after substitution
    physical: dict[str, Any]  # what moto returned: name, arn, id, ...


@dataclass
class StandInEngine:
    clients: Callable[[str], Any]  # admin clients, through the platform proxy
    region: str
    account: str = "123456789012"
    state: dict[tuple[str, str], Applied] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # "create aws:s3/bucket:Bucket storage-bucket", ...
    _subst: dict[str, str] = field(default_factory=dict)  # mock value -> real value

    # ------------------------------------------------------------------ substitution

    def _mock_values(self, resource: dict[str, Any]) -> dict[str, str]:
        from aiops.infra.offline import _computed

        computed = _computed(resource["type"], resource["name"], resource["inputs"], self.region)
        values = {k: v for k, v in computed.items() if isinstance(v, str)}
        values["id"] = computed.get("id") or f"{resource['name']}-id"
        return values

    def substitute(self, value: Any) -> Any:
        if isinstance(value, str):
            if value in self._subst:
                return self._subst[value]
            for mock in sorted(self._subst, key=len, reverse=True):
                if mock.startswith("arn:") and mock in value:
                    value = value.replace(mock, self._subst[mock])
                elif f"s3://{mock}/" in value:
                    value = value.replace(f"s3://{mock}/", f"s3://{self._subst[mock]}/")
            if value.startswith("{"):  # a JSON document (policies) holding ARNs: substituted above
                return value
            return value
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        return value

    def _learn(self, mock: dict[str, str], real: dict[str, str]) -> None:
        for key, mock_value in mock.items():
            real_value = real.get(key)
            if real_value and mock_value and mock_value != real_value:
                self._subst[mock_value] = real_value

    # ------------------------------------------------------------------ apply

    def apply(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Create or update every resource of the plan; return the stack's outputs (substituted)."""
        resources = [
            r
            for r in plan["resources"]
            if r.get("custom", True) and not r["type"].startswith(("pulumi:", "aiops:"))
        ]
        unknown = sorted({r["type"] for r in resources} - set(ORDER))
        if unknown:
            raise NotImplementedError(
                f"the stand-in engine cannot create {unknown[0]}; add it to tests/e2e/engine.py"
            )
        resources.sort(key=lambda r: (ORDER.index(r["type"]), r["name"]))
        seen = set()
        replaced: list[Applied] = []
        for resource in resources:
            key = (resource["type"], resource["name"])
            seen.add(key)
            mock = self._mock_values(resource)
            inputs = self.substitute(resource["inputs"])
            previous = self.state.get(key)
            if previous is not None and previous.inputs == inputs:
                self._learn(mock, previous.physical)
                continue
            handler = getattr(self, "_" + resource["type"].rsplit(":", 1)[1].lower())
            physical = handler(resource["name"], inputs, previous)
            self.log.append(f"{'update' if previous else 'create'} {resource['type']} {resource['name']}")
            self._learn(mock, physical)
            if previous is not None and physical.get("replaced"):
                replaced.append(previous)
            self.state[key] = Applied(resource["type"], resource["name"], inputs, physical)
        for old in replaced:  # create-before-delete, as Pulumi replaces
            self._delete(old)
        gone = [k for k in self.state if k not in seen]  # dependents first: the reverse of the create order
        for key in sorted(gone, key=lambda k: ORDER.index(k[0]), reverse=True):
            self._delete(self.state.pop(key))
        return {k: self.substitute(v) for k, v in plan["outputs"].items()}

    def _delete(self, applied: Applied) -> None:
        sm = self.clients("sagemaker")
        scaling = self.clients("application-autoscaling")
        inputs = applied.inputs
        if applied.type == "aws:sagemaker/model:Model":
            sm.delete_model(ModelName=applied.physical["name"])
        elif applied.type == "aws:sagemaker/endpointConfiguration:EndpointConfiguration":
            sm.delete_endpoint_config(EndpointConfigName=applied.physical["name"])
        elif applied.type == "aws-native:sagemaker:InferenceComponent":
            sm.delete_inference_component(InferenceComponentName=applied.physical["name"])
        elif applied.type == "aws:appautoscaling/policy:Policy":
            scaling.delete_scaling_policy(
                PolicyName=applied.physical["name"],
                ServiceNamespace=inputs["serviceNamespace"],
                ResourceId=inputs["resourceId"],
                ScalableDimension=inputs["scalableDimension"],
            )
        elif applied.type == "aws:appautoscaling/target:Target":
            scaling.deregister_scalable_target(
                ServiceNamespace=inputs["serviceNamespace"],
                ResourceId=inputs["resourceId"],
                ScalableDimension=inputs["scalableDimension"],
            )
        elif applied.type == "aws:cloudwatch/metricAlarm:MetricAlarm":
            self.clients("cloudwatch").delete_alarms(AlarmNames=[applied.physical["name"]])
        elif applied.type == "aws:sns/topic:Topic":
            self.clients("sns").delete_topic(TopicArn=applied.physical["arn"])
        else:
            raise NotImplementedError(f"the stand-in engine cannot delete {applied.type}")
        self.log.append(f"delete {applied.type} {applied.name}")

    # ------------------------------------------------------------------ one method per type

    def _key(self, name, inputs, previous):
        kms = self.clients("kms")
        if previous:
            kms.put_key_policy(
                KeyId=previous.physical["keyId"], PolicyName="default", Policy=inputs["policy"]
            )
            return previous.physical
        meta = kms.create_key(
            Description=inputs.get("description", ""), Policy=inputs["policy"], KeyUsage="ENCRYPT_DECRYPT"
        )["KeyMetadata"]
        if inputs.get("enableKeyRotation"):
            kms.enable_key_rotation(KeyId=meta["KeyId"])
        return {"keyId": meta["KeyId"], "arn": meta["Arn"], "id": meta["KeyId"]}

    def _alias(self, name, inputs, previous):
        kms = self.clients("kms")
        if previous:
            kms.update_alias(AliasName=inputs["name"], TargetKeyId=inputs["targetKeyId"])
        else:
            kms.create_alias(AliasName=inputs["name"], TargetKeyId=inputs["targetKeyId"])
        return {
            "name": inputs["name"],
            "id": inputs["name"],
            "arn": f"arn:aws:kms:{self.region}:{self.account}:{inputs['name']}",
        }

    def _bucket(self, name, inputs, previous):
        if previous:
            return previous.physical
        bucket = inputs.get("bucket") or (inputs.get("bucketPrefix") or f"{name}-") + _suffix()
        s3 = self.clients("s3")
        args: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        s3.create_bucket(**args)
        return {"bucket": bucket, "id": bucket, "name": bucket, "arn": f"arn:aws:s3:::{bucket}"}

    def _bucketpublicaccessblock(self, name, inputs, previous):
        self.clients("s3").put_public_access_block(
            Bucket=inputs["bucket"],
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": inputs["blockPublicAcls"],
                "BlockPublicPolicy": inputs["blockPublicPolicy"],
                "IgnorePublicAcls": inputs["ignorePublicAcls"],
                "RestrictPublicBuckets": inputs["restrictPublicBuckets"],
            },
        )
        return {"id": inputs["bucket"]}

    def _bucketversioning(self, name, inputs, previous):
        self.clients("s3").put_bucket_versioning(
            Bucket=inputs["bucket"], VersioningConfiguration=pascal(inputs["versioningConfiguration"])
        )
        return {"id": inputs["bucket"]}

    def _bucketserversideencryptionconfiguration(self, name, inputs, previous):
        rules = []
        for rule in inputs["rules"]:
            default = rule["applyServerSideEncryptionByDefault"]
            rules.append(
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": default["sseAlgorithm"],
                        "KMSMasterKeyID": default["kmsMasterKeyId"],
                    },
                    "BucketKeyEnabled": rule.get("bucketKeyEnabled", False),
                }
            )
        self.clients("s3").put_bucket_encryption(
            Bucket=inputs["bucket"], ServerSideEncryptionConfiguration={"Rules": rules}
        )
        return {"id": inputs["bucket"]}

    def _bucketpolicy(self, name, inputs, previous):
        self.clients("s3").put_bucket_policy(Bucket=inputs["bucket"], Policy=inputs["policy"])
        return {"id": inputs["bucket"]}

    def _bucketlifecycleconfiguration(self, name, inputs, previous):
        rules = []
        for rule in inputs["rules"]:
            out: dict[str, Any] = {"ID": rule["id"], "Status": rule["status"], "Filter": {"Prefix": ""}}
            if "noncurrentVersionExpiration" in rule:
                out["NoncurrentVersionExpiration"] = pascal(rule["noncurrentVersionExpiration"])
            if "abortIncompleteMultipartUpload" in rule:
                out["AbortIncompleteMultipartUpload"] = pascal(rule["abortIncompleteMultipartUpload"])
            rules.append(out)
        self.clients("s3").put_bucket_lifecycle_configuration(
            Bucket=inputs["bucket"], LifecycleConfiguration={"Rules": rules}
        )
        return {"id": inputs["bucket"]}

    def _role(self, name, inputs, previous):
        iam = self.clients("iam")
        if previous:
            iam.update_assume_role_policy(
                RoleName=previous.physical["name"], PolicyDocument=inputs["assumeRolePolicy"]
            )
            return previous.physical
        role_name = inputs.get("name") or (inputs.get("namePrefix") or f"{name}-") + _suffix()
        role = iam.create_role(
            RoleName=role_name,
            AssumeRolePolicyDocument=inputs["assumeRolePolicy"],
            Description=inputs.get("description", ""),
            MaxSessionDuration=_ints(inputs.get("maxSessionDuration", 3600)),
        )["Role"]
        return {"name": role_name, "id": role_name, "arn": role["Arn"]}

    def _rolepolicy(self, name, inputs, previous):
        policy_name = previous.physical["name"] if previous else inputs.get("name") or f"{name}-{_suffix()}"
        self.clients("iam").put_role_policy(
            RoleName=inputs["role"], PolicyName=policy_name, PolicyDocument=inputs["policy"]
        )
        return {"name": policy_name, "id": f"{inputs['role']}:{policy_name}"}

    def _topic(self, name, inputs, previous):
        if previous:
            return previous.physical
        attributes = {"KmsMasterKeyId": inputs["kmsMasterKeyId"]} if inputs.get("kmsMasterKeyId") else {}
        topic_name = inputs.get("name") or f"{name}-{_suffix()}"
        arn = self.clients("sns").create_topic(Name=topic_name, Attributes=attributes)["TopicArn"]
        return {"arn": arn, "id": arn, "name": topic_name}

    def _topicsubscription(self, name, inputs, previous):
        arn = self.clients("sns").subscribe(
            TopicArn=inputs["topic"], Protocol=inputs["protocol"], Endpoint=inputs["endpoint"]
        )["SubscriptionArn"]
        return {"arn": arn, "id": arn}

    def _metricalarm(self, name, inputs, previous):
        args = {
            "AlarmName": inputs["name"],
            "AlarmDescription": inputs.get("alarmDescription", ""),
            "ComparisonOperator": inputs["comparisonOperator"],
            "EvaluationPeriods": _ints(inputs["evaluationPeriods"]),
            "MetricName": inputs["metricName"],
            "Namespace": inputs["namespace"],
            "Period": _ints(inputs["period"]),
            "Threshold": inputs.get("threshold", 0.0),
            "TreatMissingData": inputs.get("treatMissingData", "missing"),
            "Dimensions": [{"Name": k, "Value": v} for k, v in sorted(inputs.get("dimensions", {}).items())],
        }
        for source, target in (
            ("statistic", "Statistic"),
            ("extendedStatistic", "ExtendedStatistic"),
            ("datapointsToAlarm", "DatapointsToAlarm"),
            ("alarmActions", "AlarmActions"),
            ("okActions", "OKActions"),
        ):
            if source in inputs:
                args[target] = _ints(inputs[source])
        self.clients("cloudwatch").put_metric_alarm(**args)
        return {
            "name": inputs["name"],
            "id": inputs["name"],
            "arn": f"arn:aws:cloudwatch:{self.region}:{self.account}:alarm:{inputs['name']}",
        }

    def _dashboard(self, name, inputs, previous):
        self.clients("cloudwatch").put_dashboard(
            DashboardName=inputs["dashboardName"], DashboardBody=inputs["dashboardBody"]
        )
        return {"dashboardName": inputs["dashboardName"], "id": inputs["dashboardName"]}

    def _model(self, name, inputs, previous):
        model_name = inputs.get("name") or f"{name}-{_suffix()}"
        args: dict[str, Any] = {
            "ModelName": model_name,
            "ExecutionRoleArn": inputs["executionRoleArn"],
            "PrimaryContainer": pascal(inputs["primaryContainer"]),
        }
        if "environment" in inputs["primaryContainer"]:  # keys of the environment stay as written
            args["PrimaryContainer"]["Environment"] = inputs["primaryContainer"]["environment"]
        source = args["PrimaryContainer"].get("ModelDataSource")
        if source:  # the provider's list of one; the API's one object
            (source["S3DataSource"],) = source.pop("S3DataSources")
        if inputs.get("enableNetworkIsolation"):
            args["EnableNetworkIsolation"] = True
        if inputs.get("vpcConfig"):
            args["VpcConfig"] = pascal(inputs["vpcConfig"])
        arn = self.clients("sagemaker").create_model(**args)["ModelArn"]
        return {"name": model_name, "id": model_name, "arn": arn, "replaced": previous is not None}

    def _endpointconfiguration(self, name, inputs, previous):
        config_name = inputs.get("name") or (inputs.get("namePrefix") or f"{name}-") + _suffix()
        args: dict[str, Any] = {
            "EndpointConfigName": config_name,
            "ProductionVariants": pascal(inputs["productionVariants"]),
        }
        if inputs.get("kmsKeyArn"):
            args["KmsKeyId"] = inputs["kmsKeyArn"]
        if inputs.get("dataCaptureConfig"):
            args["DataCaptureConfig"] = pascal(inputs["dataCaptureConfig"])
        if inputs.get("asyncInferenceConfig"):
            args["AsyncInferenceConfig"] = pascal(inputs["asyncInferenceConfig"])
        if inputs.get("executionRoleArn"):  # an endpoint of inference components runs them as this role
            args["ExecutionRoleArn"] = inputs["executionRoleArn"]
        for variant in args["ProductionVariants"]:  # the provider's list of one; the API's one object
            if "RoutingConfigs" in variant:
                variant["RoutingConfig"] = variant.pop("RoutingConfigs")[0]
        arn = self.clients("sagemaker").create_endpoint_config(**args)["EndpointConfigArn"]
        return {"name": config_name, "id": config_name, "arn": arn, "replaced": previous is not None}

    def _endpoint(self, name, inputs, previous):
        sm = self.clients("sagemaker")
        endpoint_name = inputs.get("name") or f"{name}-{_suffix()}"
        if previous:
            sm.update_endpoint(EndpointName=endpoint_name, EndpointConfigName=inputs["endpointConfigName"])
        else:
            args: dict[str, Any] = {
                "EndpointName": endpoint_name,
                "EndpointConfigName": inputs["endpointConfigName"],
            }
            if inputs.get("deploymentConfig"):
                args["DeploymentConfig"] = pascal(inputs["deploymentConfig"])
            sm.create_endpoint(**args)
        status = wait_endpoint(sm, endpoint_name)
        if status["EndpointStatus"] != "InService":
            raise RuntimeError(
                f"endpoint {endpoint_name} is {status['EndpointStatus']}: {status.get('FailureReason')}"
            )
        return {"name": endpoint_name, "id": endpoint_name, "arn": status["EndpointArn"]}

    def _target(self, name, inputs, previous):
        self.clients("application-autoscaling").register_scalable_target(
            ServiceNamespace=inputs["serviceNamespace"],
            ResourceId=inputs["resourceId"],
            ScalableDimension=inputs["scalableDimension"],
            MinCapacity=_ints(inputs["minCapacity"]),
            MaxCapacity=_ints(inputs["maxCapacity"]),
        )
        return {
            "id": inputs["resourceId"],
            "resourceId": inputs["resourceId"],
            "serviceNamespace": inputs["serviceNamespace"],
            "scalableDimension": inputs["scalableDimension"],
        }

    def _policy(self, name, inputs, previous):
        policy_name = inputs.get("name") or name
        args: dict[str, Any] = {
            "PolicyName": policy_name,
            "ServiceNamespace": inputs["serviceNamespace"],
            "ResourceId": inputs["resourceId"],
            "ScalableDimension": inputs["scalableDimension"],
            "PolicyType": inputs["policyType"],
        }
        if inputs["policyType"] == "StepScaling":
            step = pascal(inputs["stepScalingPolicyConfiguration"])
            for adjustment in step.get("StepAdjustments", []):  # the provider's strings; the API's numbers
                for bound in ("MetricIntervalLowerBound", "MetricIntervalUpperBound"):
                    if isinstance(adjustment.get(bound), str):
                        adjustment[bound] = float(adjustment[bound])
            args["StepScalingPolicyConfiguration"] = step
        else:
            args["TargetTrackingScalingPolicyConfiguration"] = pascal(
                inputs["targetTrackingScalingPolicyConfiguration"]
            )
        arn = self.clients("application-autoscaling").put_scaling_policy(**args)["PolicyARN"]
        return {"name": policy_name, "id": policy_name, "arn": arn}

    def _inferencecomponent(self, name, inputs, previous):
        """aws-native's InferenceComponent (moto has none: the platform emulator keeps them)."""
        sm = self.clients("sagemaker")
        component = inputs["inferenceComponentName"]
        spec = pascal(inputs["specification"])
        runtime = pascal(inputs.get("runtimeConfig") or {"copyCount": 1})
        if previous:
            sm.update_inference_component(
                InferenceComponentName=component, Specification=spec, RuntimeConfig=runtime
            )
        else:
            sm.create_inference_component(
                InferenceComponentName=component,
                EndpointName=inputs["endpointName"],
                VariantName=inputs["variantName"],
                Specification=spec,
                RuntimeConfig=runtime,
            )
        described = wait_inference_component(sm, component)
        if described["InferenceComponentStatus"] != "InService":
            raise RuntimeError(
                f"inference component {component} is {described['InferenceComponentStatus']}: "
                f"{described.get('FailureReason')}"
            )
        return {
            "name": component,
            "id": component,
            "inferenceComponentName": component,
            "arn": described["InferenceComponentArn"],
        }

    # ec2 (the stack's VPC option)

    def _vpc(self, name, inputs, previous):
        if previous:
            return previous.physical
        ec2 = self.clients("ec2")
        vpc = ec2.create_vpc(CidrBlock=inputs["cidrBlock"])["Vpc"]
        for attribute in ("enableDnsSupport", "enableDnsHostnames"):
            if attribute in inputs:
                ec2.modify_vpc_attribute(
                    VpcId=vpc["VpcId"],
                    **{attribute[:1].upper() + attribute[1:]: {"Value": inputs[attribute]}},
                )
        return {"id": vpc["VpcId"], "arn": f"arn:aws:ec2:{self.region}:{self.account}:vpc/{vpc['VpcId']}"}

    def _subnet(self, name, inputs, previous):
        if previous:
            return previous.physical
        args: dict[str, Any] = {"VpcId": inputs["vpcId"], "CidrBlock": inputs["cidrBlock"]}
        if inputs.get("availabilityZone"):
            args["AvailabilityZone"] = inputs["availabilityZone"]
        subnet = self.clients("ec2").create_subnet(**args)["Subnet"]
        return {
            "id": subnet["SubnetId"],
            "arn": f"arn:aws:ec2:{self.region}:{self.account}:subnet/{subnet['SubnetId']}",
        }

    def _securitygroup(self, name, inputs, previous):
        if previous:
            return previous.physical
        ec2 = self.clients("ec2")
        group_name = inputs.get("name") or (inputs.get("namePrefix") or f"{name}-") + _suffix()
        group = ec2.create_security_group(
            GroupName=group_name,
            VpcId=inputs["vpcId"],
            Description=inputs.get("description") or "Managed by Pulumi",
        )
        group_id = group["GroupId"]
        ingress = [_permission(rule) for rule in inputs.get("ingress", [])]
        if ingress:
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ingress)
        egress = [_permission(rule) for rule in inputs.get("egress", [])]
        if egress:
            ec2.authorize_security_group_egress(GroupId=group_id, IpPermissions=egress)
        return {
            "id": group_id,
            "name": group_name,
            "arn": f"arn:aws:ec2:{self.region}:{self.account}:security-group/{group_id}",
        }

    def _routetable(self, name, inputs, previous):
        if previous:
            return previous.physical
        table = self.clients("ec2").create_route_table(VpcId=inputs["vpcId"])["RouteTable"]
        return {"id": table["RouteTableId"]}

    def _routetableassociation(self, name, inputs, previous):
        if previous:
            return previous.physical
        answer = self.clients("ec2").associate_route_table(
            RouteTableId=inputs["routeTableId"], SubnetId=inputs["subnetId"]
        )
        return {"id": answer["AssociationId"]}

    def _vpcendpoint(self, name, inputs, previous):
        if previous:
            return previous.physical
        args: dict[str, Any] = {
            "VpcId": inputs["vpcId"],
            "ServiceName": inputs["serviceName"],
            "VpcEndpointType": inputs.get("vpcEndpointType", "Gateway"),
        }
        for source, target in (
            ("routeTableIds", "RouteTableIds"),
            ("subnetIds", "SubnetIds"),
            ("securityGroupIds", "SecurityGroupIds"),
            ("privateDnsEnabled", "PrivateDnsEnabled"),
        ):
            if source in inputs:
                args[target] = inputs[source]
        if inputs.get("policy"):
            args["PolicyDocument"] = inputs["policy"]
        endpoint = self.clients("ec2").create_vpc_endpoint(**args)["VpcEndpoint"]
        return {"id": endpoint["VpcEndpointId"]}


def _permission(rule: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "IpProtocol": str(rule.get("protocol", "-1")),
        "FromPort": _ints(rule.get("fromPort", 0)),
        "ToPort": _ints(rule.get("toPort", 0)),
    }
    if rule.get("cidrBlocks"):
        out["IpRanges"] = [{"CidrIp": c} for c in rule["cidrBlocks"]]
    if rule.get("self"):
        out["UserIdGroupPairs"] = [{"GroupId": "self"}]
    if rule.get("securityGroups"):
        out["UserIdGroupPairs"] = [{"GroupId": g} for g in rule["securityGroups"]]
    return out


def wait_endpoint(sm: Any, name: str, timeout: float = 180.0) -> dict[str, Any]:
    """Poll DescribeEndpoint until it leaves Creating/Updating, as the provider does (bounded)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        described = sm.describe_endpoint(EndpointName=name)
        if described["EndpointStatus"] not in ("Creating", "Updating", "SystemUpdating"):
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(f"endpoint {name} still {described['EndpointStatus']} after {timeout:.0f}s")
        time.sleep(0.1)


def wait_inference_component(sm: Any, name: str, timeout: float = 180.0) -> dict[str, Any]:
    """Poll DescribeInferenceComponent until it leaves Creating/Updating (bounded)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        described = sm.describe_inference_component(InferenceComponentName=name)
        if described["InferenceComponentStatus"] not in ("Creating", "Updating"):
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"inference component {name} still {described['InferenceComponentStatus']} "
                f"after {timeout:.0f}s"
            )
        time.sleep(0.1)


def plan_json(text: str) -> dict[str, Any]:
    return json.loads(text)
