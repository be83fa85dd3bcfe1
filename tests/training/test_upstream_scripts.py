"""Scripts written the way the public SageMaker PyTorch examples are, run unchanged by aiops.

- the SM_HOSTS rendezvous pattern: `init_process_group("gloo", rank=hosts.index(current_host),
  world_size=len(hosts))`, which needs MASTER_ADDR/MASTER_PORT from the PyTorch container;
- a script reading its job through `sagemaker_training.environment.Environment()`;
- a training script that also defines `model_fn` and imports a sibling module, then served from
  its run (`aiops serve RUN`) and from `aiops model package RUN`, as `estimator.deploy()` would.

Real torch on a small real data set (a CSV channel), real processes, real HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from helpers import free_port, launch_server, stop_all, wait_ready

# A linear model y = x @ w, the sibling module the training script and model_fn import.
NET = textwrap.dedent(
    """
    import torch

    class Net(torch.nn.Module):
        def __init__(self, features: int = 3):
            super().__init__()
            self.linear = torch.nn.Linear(features, 1, bias=False)

        def forward(self, x):
            return self.linear(x)
    """
)

# Written like the public examples: argparse defaults from SM_* variables, the host list from
# SM_HOSTS, one process per host joined with env:// rendezvous (MASTER_ADDR/MASTER_PORT).
TRAIN = textwrap.dedent(
    """
    import argparse, json, os
    import torch
    import torch.distributed as dist
    from net import Net

    def model_fn(model_dir):
        model = Net()
        with open(os.path.join(model_dir, "model.pth"), "rb") as f:
            model.load_state_dict(torch.load(f))
        return model.eval()

    def load(channel):
        rows = [list(map(float, line.split(","))) for line in open(os.path.join(channel, "rows.csv"))]
        data = torch.tensor(rows)
        return data[:, :3], data[:, 3:]

    if __name__ == "__main__":
        parser = argparse.ArgumentParser()
        parser.add_argument("--epochs", type=int, default=1)
        parser.add_argument("--lr", type=float, default=0.1)
        parser.add_argument("--hosts", type=list, default=json.loads(os.environ["SM_HOSTS"]))
        parser.add_argument("--current-host", type=str, default=os.environ["SM_CURRENT_HOST"])
        parser.add_argument("--model-dir", type=str, default=os.environ["SM_MODEL_DIR"])
        parser.add_argument("--data-dir", type=str, default=os.environ["SM_CHANNEL_TRAINING"])
        args = parser.parse_args()

        world_size = len(args.hosts)
        rank = args.hosts.index(args.current_host)
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        torch.manual_seed(0)
        x, y = load(args.data_dir)
        x, y = x[rank::world_size], y[rank::world_size]  # each host its shard
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        for epoch in range(args.epochs):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            for p in model.parameters():  # average gradients across hosts
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= world_size
            opt.step()
            print(f"epoch={epoch}; loss={loss.item():.6f};", flush=True)
        if rank == 0:
            torch.save(model.state_dict(), os.path.join(args.model_dir, "model.pth"))
        with open(os.path.join(args.model_dir, f"seen-{args.current_host}.json"), "w") as f:
            json.dump({"rank": rank, "world_size": dist.get_world_size(),
                       "master": [os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]],
                       "weights": model.linear.weight.detach().flatten().tolist()}, f)
        dist.barrier()
        dist.destroy_process_group()
    """
)

ENVIRONMENT_USER = textwrap.dedent(
    """
    import json, os
    import torch
    from sagemaker_training import environment

    env = environment.Environment()
    lines = open(os.path.join(env.channel_input_dirs["training"], "rows.csv"))
    rows = [list(map(float, l.split(","))) for l in lines]
    data = torch.tensor(rows)
    w = torch.linalg.lstsq(data[:, :3], data[:, 3:]).solution
    torch.save({"w": w}, os.path.join(env.model_dir, "model.pth"))
    with open(os.path.join(env.output_data_dir, "seen.json"), "w") as f:
        json.dump({"hosts": env.hosts, "current_host": env.current_host,
                   "epochs": env.hyperparameters["epochs"], "module_name": env.module_name,
                   "num_cpus": env.num_cpus, "job_name": env.job_name,
                   "w": w.flatten().tolist()}, f)
    """
)

TRUE_W = (1.5, -2.0, 0.5)


@pytest.fixture
def start_server(tmp_path: Path, aiops_home: Path):
    started = []

    def start(model, *args: str, env: dict | None = None):
        server = launch_server(model, *args, home=aiops_home, cwd=tmp_path, env=env)
        started.append(server)
        wait_ready(server)
        return server

    yield start
    stop_all(started)


@pytest.fixture
def training_channel(tmp_path: Path) -> Path:
    import torch

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=gen)
    y = x @ torch.tensor(TRUE_W).unsqueeze(1)
    folder = tmp_path / "data" / "training"
    folder.mkdir(parents=True)
    (folder / "rows.csv").write_text(
        "\n".join(",".join(f"{v:.6f}" for v in row) for row in torch.cat([x, y], 1).tolist())
    )
    return folder


@pytest.fixture
def example(tmp_path: Path) -> Path:
    src = tmp_path / "example"
    src.mkdir()
    (src / "net.py").write_text(NET)
    (src / "train.py").write_text(TRAIN)
    (src / "requirements.txt").write_text("")
    return src


def test_sm_hosts_rendezvous_script_trains_and_is_served_from_its_run(
    run_cli, example: Path, training_channel: Path, tmp_path: Path, start_server
) -> None:
    result = run_cli(
        "train",
        "train.py",
        "--source-dir",
        str(example),
        "--channel",
        f"training={training_channel}",
        "--hp",
        "epochs=60",
        "--job-name",
        "sm-hosts",
        "--json",
    )
    assert result.returncode == 0, result.output
    summary = json.loads(result.stdout)
    model_dir = Path(summary["run_dir"]) / "opt" / "ml" / "model"
    seen = json.loads((model_dir / "seen-algo-1.json").read_text())
    assert seen["rank"] == 0 and seen["world_size"] == 1
    assert seen["master"][0] == "127.0.0.1"  # algo-1 locally (see the contract oracle)
    assert summary["final_metrics"]["loss"] < 0.01
    assert seen["weights"] == pytest.approx(TRUE_W, abs=0.1)

    # served by its run: no inference.py, so the training script's model_fn (estimator.deploy())
    server = start_server("sm-hosts")
    resp = server.invoke(json.dumps([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).encode())
    assert resp.status == 200, server.log()
    assert [row[0] for row in json.loads(resp.body)] == pytest.approx(seen["weights"][:2], abs=1e-4)

    # packaged: the whole source dir in code/, and the same predictions from the tarball
    out = tmp_path / "model.tar.gz"
    packaged = run_cli("model", "package", "sm-hosts", "--out", str(out))
    assert packaged.returncode == 0, packaged.output
    assert "SAGEMAKER_PROGRAM=train.py" in packaged.stdout
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"model.pth", "code/train.py", "code/net.py", "code/requirements.txt"} <= names
    assert not any(n.startswith("seen") for n in names if n.startswith("code/"))
    tar_server = start_server(out, env={"SAGEMAKER_PROGRAM": "train.py"})
    again = tar_server.invoke(json.dumps([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).encode())
    assert again.status == 200 and json.loads(again.body) == json.loads(resp.body)


def test_two_hosts_rendezvous_through_the_host_launch_contract(
    example: Path, training_channel: Path, tmp_path: Path
) -> None:
    """host i of N as separate process trees, each started from `container.host_launch`: the same
    call the platform emulator makes, so SM_HOSTS, SM_CURRENT_HOST and MASTER_* agree for real."""
    from aiops.training import container, contract

    from aiops.run_folder import ContainerPaths

    hosts = contract.host_names(2)
    spec = contract.TrainingJobSpec(
        job_name="two-hosts",
        entry_point="train.py",
        hyperparameters={"epochs": 40},
        channels=("training",),
        submit_directory="s3://bucket/code/sourcedir.tar.gz",
        region="eu-west-1",
        instance_type="ml.c5.xlarge",
        hosts=hosts,
        network_interface_name="lo",
    )
    port = free_port()
    procs = []
    for host in hosts:
        paths = ContainerPaths(tmp_path / host / "opt" / "ml")
        for folder in paths.all_dirs():
            folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(example, paths.code, dirs_exist_ok=True)
        shutil.copytree(training_channel, paths.channel("training"))
        host_spec = spec.for_host(host)
        container.write_config_files(host_spec, paths)
        launch = container.host_launch(
            host_spec,
            paths,
            container.HostFacts(num_gpus=0, num_cpus=1),
            python=sys.executable,
            base_env=os.environ,
            master_addr="127.0.0.1",
            master_port=port,
        )
        assert launch.argv == [
            sys.executable,
            "--",
            "train.py",
            "--epochs",
            "40",
        ]  # no distribution: once per host
        assert launch.env["SM_CURRENT_HOST"] == host and launch.env["MASTER_PORT"] == str(port)
        procs.append(
            (
                paths,
                subprocess.Popen(
                    launch.argv,
                    cwd=launch.cwd,
                    env=launch.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
            )
        )
    for _, proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out
    seen = [
        json.loads((paths.model / f"seen-{host}.json").read_text())
        for (paths, _), host in zip(procs, hosts, strict=True)
    ]
    assert [s["rank"] for s in seen] == [0, 1] and {s["world_size"] for s in seen} == {2}
    assert seen[0]["weights"] == seen[1]["weights"]  # averaged gradients: one model
    assert seen[0]["weights"] == pytest.approx(TRUE_W, abs=0.15)
    assert (procs[0][0].model / "model.pth").is_file() and not (procs[1][0].model / "model.pth").exists()


def test_a_script_using_the_toolkits_environment_class(
    run_cli, tmp_path: Path, training_channel: Path
) -> None:
    script = tmp_path / "fit.py"
    script.write_text(ENVIRONMENT_USER)
    result = run_cli(
        "train",
        str(script),
        "--channel",
        f"training={training_channel}",
        "--hp",
        "epochs=2",
        "--job-name",
        "env-user",
        "--json",
    )
    assert result.returncode == 0, result.output
    summary = json.loads(result.stdout)
    seen = json.loads((Path(summary["run_dir"]) / "opt" / "ml" / "output" / "data" / "seen.json").read_text())
    assert seen["hosts"] == ["algo-1"] and seen["current_host"] == "algo-1" and seen["epochs"] == 2
    assert seen["module_name"] == "fit" and seen["job_name"] == "env-user" and seen["num_cpus"] >= 1
    assert seen["w"] == pytest.approx(TRUE_W, abs=1e-3)
    with tarfile.open(summary["artifacts"]["output"]) as tar:
        assert "seen.json" in tar.getnames()
