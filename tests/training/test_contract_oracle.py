"""The contract oracle: what `aiops train` gives the script equals what the real toolkit computes.

For the run tree aiops laid out, the `sagemaker-training` toolkit's own `Environment` class (it
honours SAGEMAKER_BASE_DIR) computes `to_env_vars()` and `to_cmd_args()`; the script must have
seen exactly those, key by key. The PyTorch container's own additions (NCCL_*, MASTER_ADDR/PORT)
come from the real `sagemaker_pytorch_container.training` functions run on the same Environment.

Documented exceptions: locally MASTER_ADDR is 127.0.0.1 and MASTER_PORT a free port (algo-1 does not
resolve outside the container, and 7777 is shared by every local run), while
`container.pytorch_container_environment` with its defaults gives the container's algo-1:7777;
PYTHONPATH differs (the toolkit puts its whole sys.path there; aiops prepends the code dir to yours).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DUMP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    rank = os.environ.get("RANK", "0")
    seen = {"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd()}
    with open(os.path.join(os.environ["SM_MODEL_DIR"], f"seen-{rank}.json"), "w") as f:
        json.dump(seen, f)
    """
)

ORACLE = textwrap.dedent(
    """
    import json, os, sys
    from sagemaker_training import environment
    from sagemaker_pytorch_container import training
    env = environment.Environment()
    before = dict(os.environ)
    training._set_nccl_environment(env.network_interface_name)
    training._set_distributed_environment(env)
    training._set_torch_version_environment()
    added = {k: v for k, v in os.environ.items() if before.get(k) != v}
    json.dump({"env": env.to_env_vars(), "argv": env.to_cmd_args(), "pytorch": added}, sys.stdout)
    """
)
# set by the PyTorch container's entry (sagemaker_pytorch_container.training), not by Environment
CONTAINER_KEYS = {"SM_DLC_TORCH_VERSION"}


def toolkit_view(base_dir: Path, job_name: str) -> dict:
    """Run the real toolkit on the tree, with only what the platform and the DLC image set."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "SAGEMAKER_BASE_DIR": str(base_dir),
        "TRAINING_JOB_NAME": job_name,
        "SAGEMAKER_TRAINING_MODULE": "sagemaker_pytorch_container.training:main",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    out = subprocess.run([sys.executable, "-c", ORACLE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def dump_script(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "dump_env.py").write_text(DUMP_SCRIPT)
    (src / "helper.py").write_text("VALUE = 1\n")
    return src


def _compare(seen: dict, oracle: dict) -> None:
    ours = {k: v for k, v in seen["env"].items() if k.startswith("SM_") and k not in CONTAINER_KEYS}
    theirs = oracle["env"]
    assert sorted(ours) == sorted(theirs), (
        f"missing: {sorted(set(theirs) - set(ours))}, extra: {sorted(set(ours) - set(theirs))}"
    )
    for key in sorted(theirs):
        if key == "SM_TRAINING_ENV":
            assert json.loads(ours[key]) == json.loads(theirs[key])
        assert ours[key] == theirs[key], key
    assert seen["argv"] == oracle["argv"]
    # the PyTorch container's additions: NCCL_* exactly; MASTER_* local (see the module doc)
    pytorch = oracle["pytorch"]
    assert set(pytorch) == {
        "NCCL_SOCKET_IFNAME",
        "NCCL_IB_DISABLE",
        "NCCL_DEBUG",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SM_DLC_TORCH_VERSION",
    }
    for key in ("NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_DEBUG", "SM_DLC_TORCH_VERSION"):
        assert seen["env"][key] == pytorch[key], key
    assert pytorch["MASTER_ADDR"] == "algo-1" and pytorch["MASTER_PORT"] == "7777"
    assert seen["env"]["MASTER_ADDR"] == "127.0.0.1" and int(seen["env"]["MASTER_PORT"]) > 0
    assert seen["env"]["AWS_REGION"] == seen["env"]["SAGEMAKER_REGION"]


def test_env_and_argv_match_the_toolkit(run_cli, dump_script: Path, tmp_path: Path) -> None:
    train = tmp_path / "data" / "train"
    test = tmp_path / "data" / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    (train / "a.csv").write_text("1,2\n")
    (test / "b.csv").write_text("3,4\n")
    hps = tmp_path / "hps.json"
    hps.write_text(json.dumps({"layers": [64, 32], "opts": {"beta": 0.9, "amsgrad": True}, "name": "cnn"}))
    result = run_cli(
        "train",
        "dump_env.py",
        "--source-dir",
        str(dump_script),
        "--job-name",
        "oracle-1",
        "--hyperparameters",
        str(hps),
        "--hp",
        "epochs=3",
        "--hp",
        "lr=0.1",
        "--hp",
        "batch-size=64",
        "--hp",
        "k=5",
        "--hp",
        "use_amp=true",
        "--hp",
        "tag=v1.2-rc",
        "--channel",
        f"train={train}",
        "--channel",
        f"test={test}",
        "--json",
    )
    assert result.returncode == 0, result.output
    summary = json.loads(result.stdout)
    base = Path(summary["run_dir"]) / "opt" / "ml"
    seen = json.loads((base / "model" / "seen-0.json").read_text())
    oracle = toolkit_view(base, "oracle-1")
    _compare(seen, oracle)
    # spot checks against the contract notes, so a shared mistake in both cannot pass silently
    env = seen["env"]
    assert env["SM_CHANNELS"] == '["test","train"]'
    assert env["SM_HP_BATCH-SIZE"] == "64"
    assert env["SM_CHANNEL_TRAIN"] == str(base / "input" / "data" / "train")
    assert seen["argv"][:8] == ["--batch-size", "64", "--epochs", "3", "-k", "5", "--layers", "[64, 32]"]
    assert seen["argv"][-2:] == ["--use_amp", "True"]  # the toolkit passes str(True)
    assert env["SM_USER_ENTRY_POINT"] == "dump_env.py" and env["SM_MODULE_NAME"] == "dump_env"
    assert Path(seen["cwd"]) == base / "code"
    assert (base / "code" / "helper.py").is_file()
    assert env["AIOPS_CHECKPOINT_DIR"] == str(base / "checkpoints")
    config = json.loads((base / "input" / "config" / "hyperparameters.json").read_text())
    assert (
        config["epochs"] == "3"
        and config["name"] == '"cnn"'
        and config["sagemaker_program"] == '"dump_env.py"'
    )


def test_torch_distributed_env_matches_the_toolkit(run_cli, dump_script: Path) -> None:
    result = run_cli(
        "train",
        "dump_env.py",
        "--source-dir",
        str(dump_script),
        "--job-name",
        "oracle-ddp",
        "--nproc",
        "2",
        "--hp",
        "epochs=1",
        "--json",
    )
    assert result.returncode == 0, result.output
    base = Path(json.loads(result.stdout)["run_dir"]) / "opt" / "ml"
    oracle = toolkit_view(base, "oracle-ddp")
    for rank in ("0", "1"):
        seen = json.loads((base / "model" / f"seen-{rank}.json").read_text())
        _compare(seen, oracle)
        assert seen["env"]["WORLD_SIZE"] == "2" and seen["env"]["RANK"] == rank
    framework = json.loads(oracle["env"]["SM_FRAMEWORK_PARAMS"])
    assert framework["sagemaker_torch_distributed_enabled"] is True
