"""The stack configuration: one typed model, validated before any resource is declared.

Values come from the stack's config (``Pulumi.<stack>.yaml``): ``aws:region`` and the ``aiops:``
namespace, whose values are YAML objects (Pulumi structured config) in camelCase::

    config:
      aws:region: us-east-1
      aiops:endpoint:
        instanceType: ml.g5.xlarge
        autoscaling: {minCapacity: 1, maxCapacity: 4}

``infra/stack_file.py``'s ``load_stack_file`` reads the file (offline preview, tests),
``from_pulumi_config`` reads the same keys from the running engine; both end in ``parse`` and so in
the same model and the same errors: one line naming the key, the value and what is allowed
(``ConfigError``, exit 2). The sections are ``infra/config_sections.py``'s (storage, access,
network, compute) and ``infra/endpoint_config.py``'s (the endpoint).

This module imports neither pulumi nor pulumi_aws: config errors come before any of that is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiops.infra.config_sections import AccessConfig, ComputeConfig, NetworkConfig, Section, StorageConfig
from aiops.infra.endpoint_config import EndpointConfig
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from aiops.errors import ConfigError

PROJECT = "aiops"
NAMESPACE = "aiops"
SECTIONS = ("namePrefix", "tags", "storage", "access", "network", "compute", "endpoint")


class StackConfig(Section):
    project: str = PROJECT
    stack: str
    region: str
    name_prefix: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    storage: StorageConfig = StorageConfig()
    access: AccessConfig = AccessConfig()
    network: NetworkConfig = NetworkConfig()
    compute: ComputeConfig = ComputeConfig()
    endpoint: EndpointConfig = EndpointConfig(enabled=False)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        from aiops.stack import check_region

        check_region(value)  # botocore's partition data
        return value

    @field_validator("name_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,29}", value):
            raise ValueError("allowed: lowercase letters, digits and '-', at most 30")
        return value

    @model_validator(mode="after")
    def _wiring(self) -> StackConfig:
        if self.endpoint.enabled and not self.access.enabled:
            raise ValueError("the endpoint needs the execution role: set access.enabled: true")
        return self

    @property
    def prefix(self) -> str:
        return self.name_prefix or f"{self.project}-{self.stack}"[:30].rstrip("-").lower()

    @property
    def endpoint_name(self) -> str:
        return self.endpoint.name or f"{self.prefix}-endpoint"


# --------------------------------------------------------------------------- parsing and errors


def _top_key(name: str) -> str:
    return "aws:region" if name == "region" else f"{NAMESPACE}:{name}"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = StackConfig
    for part in loc:
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        field = fields.get(part) or model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def describe(err: ValidationError, raw: Mapping[str, Any]) -> str:
    parts = []
    for item in err.errors():
        loc = tuple(item["loc"])
        if not loc:
            key, msg = "config", item["msg"]
        else:
            key = _top_key(str(loc[0])) + "".join(
                f".{p}" if isinstance(p, str) else f"[{p}]" for p in loc[1:]
            )
            msg = item["msg"]
        msg = msg.removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            parts.append(f"{key}: unknown key; allowed here: {', '.join(allowed)}")
            continue
        if item["type"] == "missing":
            parts.append(f"{key} is missing: it must be set in the stack config")
            continue
        value = item.get("input")
        if isinstance(value, dict) and re.match(r"^[a-zA-Z][a-zA-Z0-9.]*=", msg):
            parts.append(f"{key}.{msg}")  # a cross-field rule: its message starts with the field
            continue
        shown = "" if isinstance(value, dict) else f"={value!r}"
        parts.append(f"{key}{shown}: {msg}")
    return "invalid stack config: " + "; ".join(parts)


def parse(raw: Mapping[str, Any], *, stack: str, source: str = "stack config") -> StackConfig:
    """Validate the stack's config (keys as in the stack file: ``aws:region``, ``aiops:<section>``)."""
    data: dict[str, Any] = {"stack": stack}
    unknown = []
    for key, value in raw.items():
        ns, _, name = str(key).partition(":")
        if key == "aws:region":
            data["region"] = value
        elif ns == NAMESPACE:
            if name not in SECTIONS:
                unknown.append(key)
            data[name] = value
    if unknown:
        allowed = ", ".join(f"{NAMESPACE}:{s}" for s in SECTIONS)
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; allowed: aws:region, {allowed}")
    if "region" not in data:
        raise ConfigError(f"{source}: aws:region is missing; set it, e.g. `aws:region: us-east-1`")
    try:
        return StackConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe(err, raw)}") from None


def from_pulumi_config() -> StackConfig:
    """Read the same keys from the running Pulumi engine (``pulumi up``, Automation API)."""
    import json

    import pulumi

    raw: dict[str, Any] = {}
    region = pulumi.Config("aws").get("region")
    if region is not None:
        raw["aws:region"] = region
    cfg = pulumi.Config(NAMESPACE)
    for section in SECTIONS:
        text = cfg.get(section)
        if text is None:
            continue
        try:
            raw[f"{NAMESPACE}:{section}"] = json.loads(text)
        except ValueError:
            raw[f"{NAMESPACE}:{section}"] = text
    return parse(raw, stack=pulumi.get_stack(), source=f"stack {pulumi.get_stack()!r}")
