"""Fixtures for the infrastructure tests: stack configs and offline plans (Pulumi mocks)."""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "aws:region": "us-east-1",
    "aiops:endpoint": {
        "enabled": True,
        "modelDataUrl": "s3://example-bucket/models/sha256/abc/model.tar.gz",
        "instanceType": "ml.g5.xlarge",
        "dataCapture": {"enabled": True},
    },
    "aiops:compute": {"enabled": True, "instanceType": "g5.xlarge"},
}


def merged(**sections: Any) -> dict[str, Any]:
    """BASE with sections deep-merged: merged(endpoint={"instanceType": "ml.p3.2xlarge"})."""
    raw = copy.deepcopy(BASE)
    for name, value in sections.items():
        key = "aws:region" if name == "region" else f"aiops:{name}"
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            _deep(raw[key], value)
        else:
            raw[key] = value
    return raw


def _deep(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep(into[k], v)
        else:
            into[k] = v


@pytest.fixture
def make_config():
    from aiops.infra.config import parse

    def make(stack: str = "test", **sections: Any):
        return parse(merged(**sections), stack=stack)

    return make


@pytest.fixture
def make_plan(make_config):
    from aiops.infra.offline import plan

    def run(stack: str = "test", **sections: Any):
        return plan(make_config(stack, **sections))

    return run


@pytest.fixture(scope="module")
def full_plan():
    """The full stack (every component on) planned once per module."""
    from aiops.infra.config import parse
    from aiops.infra.offline import plan

    return plan(parse(merged(), stack="test"))


@pytest.fixture(scope="session")
def moto_server():
    """A real moto server on 127.0.0.1 (the AWS stand-in); yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    try:
        wait_until(listening, "the moto server listening", timeout=60)
    except AssertionError:
        proc.kill()
        raise
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).read()
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env
