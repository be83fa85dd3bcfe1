"""`aiops --help` must stay fast: it imports none of the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "boto3", "botocore", "pulumi", "pulumi_aws", "sagemaker", "numpy", "uvicorn", "onnxruntime",
         "onnx")

PROBE = """
import contextlib, io, json, sys
from aiops.cli.app import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules), "help": out.getvalue()}))
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["jobs", "--help"], ["example", "--help"],
                                  ["export", "--help"]])
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["code"] == 0
    assert "Usage" in result["help"]
    loaded = {m.split(".")[0] for m in result["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_top_level_help_lists_the_command_groups() -> None:
    out = subprocess.run([sys.executable, "-m", "aiops.cli.app", "--help"], capture_output=True, text=True,
                         check=True, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    for word in ("train", "jobs", "example", "Training"):
        assert word in out.stdout
