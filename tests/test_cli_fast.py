"""`aiops --help` must stay fast: it imports none of the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "torch",
    "boto3",
    "botocore",
    "pulumi",
    "pulumi_aws",
    "sagemaker",
    "numpy",
    "uvicorn",
    "onnxruntime",
    "onnx",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "optuna",
)

PROBE = """
import contextlib, io, json, sys
from aiops.cli.app import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules), "help": out.getvalue()}))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["train", "--help"],
        ["jobs", "--help"],
        ["example", "--help"],
        ["export", "--help"],
        ["tune", "--help"],
    ],
)
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["code"] == 0
    assert "Usage" in result["help"]
    loaded = {m.split(".")[0] for m in result["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_top_level_help_lists_the_command_groups() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aiops.cli.app", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    for word in ("train", "jobs", "example", "Training"):
        assert word in out.stdout


BLOCKING_PROBE = """
import sys
from importlib.abc import MetaPathFinder

class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Block())
from aiops.cli.app import main
sys.exit(main({args!r}))
"""


@pytest.mark.parametrize(
    "blocked, args, extra",
    [
        (["boto3", "botocore"], ["train", "x.py", "--remote", "--role", "r", "--bucket", "b"], "aiops[aws]"),
        (["numpy"], ["example", "digits-data", "out"], "aiops[examples]"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    tmp_path, blocked: list[str], args: list[str], extra: str
) -> None:
    (tmp_path / "x.py").write_text("print(1)\n")
    probe = BLOCKING_PROBE.format(blocked=set(blocked), args=args)
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "AIOPS_HOME": str(tmp_path / "home")},
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert extra in out.stderr and "Traceback" not in out.stderr
