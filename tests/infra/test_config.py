"""Every config error: one line naming the key, the value and what is allowed; exit 2."""

from __future__ import annotations

import pytest
from aiops.infra.config import parse
from aiops.infra.stack_file import load_stack_file

from aiops.errors import ConfigError

from .conftest import REPO, merged


def error_of(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        parse(merged(**sections), stack="t")
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message
    return message


def test_example_stack_files_are_valid():
    dev = load_stack_file(REPO / "Pulumi.dev.yaml")
    prod = load_stack_file(REPO / "Pulumi.prod.yaml")
    assert dev.stack == "dev" and dev.compute.enabled and dev.endpoint.enabled
    assert prod.region == "us-west-2" and prod.endpoint.autoscaling.min_capacity == 2


def test_non_gpu_endpoint_type():
    msg = error_of(endpoint={"instanceType": "ml.m5.xlarge"})
    assert "aiops:endpoint" in msg and "ml.m5.xlarge" in msg and "GPU" in msg and "ml.g5.*" in msg


def test_cpu_endpoint_allowed_when_gpu_not_required():
    cfg = parse(merged(endpoint={"instanceType": "ml.m5.xlarge", "requireGpu": False}), stack="t")
    assert cfg.endpoint.instance_type == "ml.m5.xlarge"


def test_non_gpu_compute_type():
    msg = error_of(compute={"instanceType": "t3.large"})
    assert "aiops:compute.instanceType='t3.large'" in msg and "GPU" in msg


def test_gpu_families_are_the_gpu_tables():
    """One source: the stack accepts as GPU types exactly the NVIDIA families of aiops/data/gpus.json
    (the table that picks the CUDA image and answers the fit check)."""
    from aiops.gpufit import load_gpus
    from aiops.images import cuda_families, instance_family

    families = {
        instance_family(s.instance_type) for s in load_gpus().all() if s.gpu_model.startswith("NVIDIA")
    }
    assert families == cuda_families() and {"g4dn", "g5", "p5"} <= families
    for family in sorted(families):
        assert (
            parse(
                merged(
                    endpoint={"instanceType": f"ml.{family}.xlarge"},
                    compute={"instanceType": f"{family}.xlarge"},
                ),
                stack="t",
            ).compute.instance_type
            == f"{family}.xlarge"
        )
    # g4ad: AMD GPUs, no CUDA (the old hand-kept list accepted it, and the NVIDIA driver AMI)
    assert "ml.g4ad.xlarge" in error_of(endpoint={"instanceType": "ml.g4ad.xlarge"})
    assert "g4ad.xlarge" in error_of(compute={"instanceType": "g4ad.xlarge"})
    assert "GPU" in error_of(compute={"instanceType": "ml.g5.xlarge"})  # EC2 names have no ml. prefix


def test_min_greater_than_max_autoscaling():
    msg = error_of(endpoint={"autoscaling": {"minCapacity": 3, "maxCapacity": 2}})
    assert "aiops:endpoint.autoscaling" in msg and "minCapacity=3 > maxCapacity=2" in msg


def test_min_greater_than_max_compute():
    msg = error_of(compute={"minSize": 2, "maxSize": 1, "desiredCapacity": 1})
    assert "aiops:compute" in msg and "minSize=2 > maxSize=1" in msg


def test_unknown_region():
    msg = error_of(region="moon-central-1")
    assert "aws:region='moon-central-1'" in msg and "unknown region" in msg and "us-east-1" in msg


def test_missing_region():
    raw = merged()
    del raw["aws:region"]
    with pytest.raises(ConfigError, match="aws:region is missing"):
        parse(raw, stack="t")


def test_missing_model_when_endpoint_enabled():
    raw = merged()
    del raw["aiops:endpoint"]["modelDataUrl"]
    with pytest.raises(ConfigError, match=r"aiops:endpoint: modelDataUrl is missing.*aiops deploy --model"):
        parse(raw, stack="t")


def test_malformed_model_uri():
    msg = error_of(endpoint={"modelDataUrl": "https://x/model.tar.gz"})
    assert "aiops:endpoint.modelDataUrl='https://x/model.tar.gz'" in msg and "s3://" in msg


def test_unknown_key_lists_allowed():
    msg = error_of(endpoint={"instanceTyp": "ml.g5.xlarge"})
    assert "aiops:endpoint.instanceTyp: unknown key" in msg and "instanceType" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown key 'aiops:endpoints'"):
        parse({**merged(), "aiops:endpoints": {}}, stack="t")


def test_bad_enum_names_allowed_values():
    msg = error_of(endpoint={"deployment": {"traffic": "big-bang"}})
    assert "aiops:endpoint.deployment.traffic='big-bang'" in msg and "canary" in msg and "linear" in msg


def test_serverless_memory():
    msg = error_of(
        endpoint={"serverless": {"enabled": True, "memoryMb": 1000}, "dataCapture": {"enabled": False}}
    )
    assert "memoryMb=1000" in msg and "6144" in msg


def test_wrong_type_value():
    msg = error_of(endpoint={"initialInstanceCount": "many"})
    assert "aiops:endpoint.initialInstanceCount='many'" in msg


def test_initial_count_outside_scaling_bounds():
    msg = error_of(endpoint={"initialInstanceCount": 5, "autoscaling": {"minCapacity": 1, "maxCapacity": 2}})
    assert "initialInstanceCount=5" in msg


def test_idle_alarm_hours_and_email():
    msg = error_of(endpoint={"idleAlarm": {"hours": 0}})
    assert "aiops:endpoint.idleAlarm.hours=0" in msg and "greater than or equal to 1" in msg
    msg = error_of(endpoint={"idleAlarm": {"hours": 200}})
    assert "aiops:endpoint.idleAlarm.hours=200" in msg and "less than or equal to 168" in msg
    msg = error_of(endpoint={"idleAlarm": {"email": "not-an-address"}})
    assert "aiops:endpoint.idleAlarm.email='not-an-address'" in msg and "e-mail address" in msg
    msg = error_of(endpoint={"idleAlarm": {"hour": 3}})
    assert "aiops:endpoint.idleAlarm.hour: unknown key" in msg and "hours" in msg
    msg = error_of(endpoint={"dashboard": {"periodSeconds": 90}})
    assert "aiops:endpoint.dashboard.periodSeconds=90" in msg and "multiple of 60" in msg


def test_malformed_stack_file(tmp_path):
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text("config:\n  aws:region: [unclosed\n")
    with pytest.raises(ConfigError, match=r"Pulumi.bad.yaml: line \d+: malformed stack file"):
        load_stack_file(path)


def test_stack_file_not_a_mapping(tmp_path):
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_stack_file(path)


def test_missing_stack_file(tmp_path):
    with pytest.raises(ConfigError, match="no such stack file"):
        load_stack_file(tmp_path / "Pulumi.nope.yaml")


def test_overrides_fill_missing_model(tmp_path):
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text("config:\n  aws:region: eu-west-1\n  aiops:endpoint:\n    enabled: true\n")
    cfg = load_stack_file(path, overrides={"aiops:endpoint.modelDataUrl": "s3://b-1/m.tar.gz"})
    assert cfg.endpoint.model_data_url == "s3://b-1/m.tar.gz"


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        (
            "config:\n  aws:region: us-east-1\n  aiops:endpoint:\n    "
            "modelDataUrl: s3://b-1/m.tar.gz\n    instanceType: ml.c5.xlarge\n",
            "ml.c5.xlarge",
        ),
        ("config:\n  aws:region: mars-1\n", "mars-1"),
        ("config: [\n", "malformed stack file"),
        (
            "config:\n  aws:region: us-east-1\n  aiops:endpoint:\n    modelDataUrl: s3://b-1/m.tar.gz\n"
            "    idleAlarm: {hours: 0}\n",
            "aiops:endpoint.idleAlarm.hours=0",
        ),
    ],
)
def test_cli_config_errors_exit_2_one_line(run_cli, tmp_path, yaml_text, expected):
    (tmp_path / "Pulumi.bad.yaml").write_text(yaml_text)
    result = run_cli("preview", "--offline", "--stack", "bad", "-C", str(tmp_path))
    assert result.returncode == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert result.stdout == ""  # nothing declared, nothing printed


def test_engine_config_path_reads_the_same_keys(monkeypatch):
    """`infra/__main__.py` under the engine: structured config arrives as JSON strings."""
    import json

    import pulumi
    from aiops.infra.config import from_pulumi_config
    from pulumi.runtime import config as runtime_config

    from .conftest import merged as _merged

    raw = _merged(endpoint={"instanceType": "ml.p3.2xlarge"})
    token = runtime_config.CONFIG.set({})
    try:
        for key, value in raw.items():
            pulumi.runtime.set_config(key, value if isinstance(value, str) else json.dumps(value))
        monkeypatch.setattr(pulumi, "get_stack", lambda: "engine")
        cfg = from_pulumi_config()
        assert cfg.stack == "engine" and cfg.endpoint.instance_type == "ml.p3.2xlarge" and cfg.compute.enabled
        pulumi.runtime.set_config("aiops:endpoint", json.dumps({"instanceType": "ml.m5.large"}))
        with pytest.raises(ConfigError, match="stack 'engine'.*ml.m5.large"):
            from_pulumi_config()
    finally:
        runtime_config.CONFIG.reset(token)


def test_training_secrets_are_full_secret_arns():
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:aiops/hf-token-AbC123"
    cfg = parse(merged(access={"trainingSecrets": [arn, arn]}), stack="t")
    assert cfg.access.training_secrets == (arn,)
    partial = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token"  # no 6-character suffix
    msg = error_of(access={"trainingSecrets": [partial]})
    assert "aiops:access.trainingSecrets" in msg and "not a Secrets Manager secret's full ARN" in msg
    msg = error_of(access={"trainingSecretKeys": ["arn:aws:kms:us-east-1:123456789012:key/k-1"]})
    assert "trainingSecretKeys without trainingSecrets" in msg
