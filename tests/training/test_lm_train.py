"""The FSDP language-model example for real: torchrun on gloo, DCP checkpoints, resume, bad input.

Two reference runs of the same tiny job (12 steps, checkpoints every 4) are shared by the tests and
made once per session, across xdist workers too (a file lock): A with 2 processes through
`aiops train --nproc 2`, B with 1 process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import built_once, free_port, run_aiops

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "training" / "examples" / "lm"
SCRIPT = EXAMPLE / "train.py"
STEPS = 12
TINY = {
    "steps": STEPS,
    "d-model": 32,
    "n-layers": 2,
    "n-heads": 2,
    "seq-len": 32,
    "batch-size": 8,
    "log-every": 1,
    "eval-every": 4,
    "checkpoint-every": 4,
    "eval-batches": 1,
    "warmup-steps": 2,
    "threads": 1,
    "seed": 5,
}


def _args(**override) -> list[str]:
    hps = {**TINY, **override}
    return [a for k, v in hps.items() for a in (f"--{k}", str(v))]


def _env(root: Path, data: Path, checkpoints: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "AIOPS_"))}
    for sub in ("model", "output/data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        SM_MODEL_DIR=str(root / "model"),
        SM_OUTPUT_DIR=str(root / "output"),
        SM_OUTPUT_DATA_DIR=str(root / "output" / "data"),
        AIOPS_CHECKPOINT_DIR=str(checkpoints),
        SM_CHANNEL_TRAIN=str(data / "train"),
        SM_CHANNEL_TEST=str(data / "test"),
        SM_NUM_GPUS="0",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _command(nproc: int, *args: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(SCRIPT), *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(SCRIPT),
        *args,
    ]


def run_lm(
    nproc: int,
    root: Path,
    data: Path,
    checkpoints: Path,
    *args: str,
    env: dict | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(nproc, *args),
        env=_env(root, data, checkpoints, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root,
    )


def run_lm_in_process(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    root: Path,
    data: Path,
    checkpoints: Path,
    *args: str,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """The script's main() in this process, with the environment `run_lm` gives it: for refusals,
    which stop before training (torch is imported here already, not once more per case). main()'s
    return value is the process's exit code."""
    import importlib.util
    import warnings

    full = _env(root, data, checkpoints, **(env or {}))
    for name in [k for k in os.environ if k not in full]:
        monkeypatch.delenv(name)
    for name, value in {**full, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}.items():  # the script sets the last
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts its folder first
    monkeypatch.chdir(root)
    capsys.readouterr()
    spec = importlib.util.spec_from_file_location("lm_train_under_test", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    try:
        with warnings.catch_warnings():
            spec.loader.exec_module(script)
            code = script.main()
    finally:
        for name in ("lm_checkpoint", "lm_data", "lm_model", "lm_output"):  # a fresh process imports its own
            sys.modules.pop(name, None)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(sys.argv, code, out.out, out.err)


def train_losses(log: str) -> dict[int, float]:
    return {
        int(m.group(1)): float(m.group(2)) for m in re.finditer(r"step=(\d+); train_loss=([0-9.]+);", log)
    }


def final_loss(log: str) -> float:
    return float(re.search(r"final_test_loss=([0-9.]+);", log).group(1))


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="session")
def lm_reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return built_once(tmp_path_factory, "lm-reference", _lm_reference)


def _lm_reference(shared: Path) -> dict:
    from aiops.training.examples.lm.prepare import write_channels

    data = shared / "data"
    write_channels(data, train_bytes=300_000, test_bytes=30_000, shard_tokens=1 << 16, seed=0)
    home = shared / "home"
    cli = run_aiops(
        home,
        shared,
        "train",
        str(SCRIPT),
        "--source-dir",
        str(EXAMPLE),
        "--nproc",
        "2",
        "--channel",
        f"train={data / 'train'}",
        "--channel",
        f"test={data / 'test'}",
        *[a for k, v in TINY.items() for a in ("--hp", f"{k}={v}")],
        "--job-name",
        "lm-fsdp",
        "--json",
        timeout=300,
    )
    assert cli.returncode == 0, cli.output
    record = json.loads(cli.stdout)
    single = run_lm(1, shared / "single", data, shared / "single" / "checkpoints", *_args())
    assert single.returncode == 0, single.stdout + single.stderr
    return {
        "data": str(data),
        "home": str(home),
        "record": record,
        "fsdp_log": (Path(record["run_dir"]) / "train.log").read_text(),
        "fsdp_model": record["artifacts"]["model_dir"],
        "fsdp_checkpoints": record["checkpoint_dir"],
        "single_log": single.stdout,
        "single_model": str(shared / "single" / "model"),
        "single_checkpoints": str(shared / "single" / "checkpoints"),
    }


def test_fsdp_two_processes_match_one_and_learn(lm_reference: dict, tmp_path: Path) -> None:
    fsdp, single = train_losses(lm_reference["fsdp_log"]), train_losses(lm_reference["single_log"])
    assert sorted(fsdp) == sorted(single) == list(range(1, STEPS + 1))
    for step in range(1, 5):  # the same global batch: the same optimisation, up to float rounding
        assert fsdp[step] == pytest.approx(single[step], rel=1e-5, abs=1e-5)
    assert fsdp[STEPS] < fsdp[1] - 0.3  # it learns
    assert "FSDP: True" in lm_reference["fsdp_log"] and "2 process(es)" in lm_reference["fsdp_log"]
    assert (
        max_diff(weights(Path(lm_reference["fsdp_model"])), weights(Path(lm_reference["single_model"])))
        < 1e-4
    )

    # metrics as the runner captured them, for `aiops jobs metrics --plot`
    record = lm_reference["record"]
    assert record["status"] == "Completed"
    assert {"test_loss", "test_perplexity", "train_loss", "tokens_per_second"} <= set(record["final_metrics"])
    samples = [
        json.loads(line) for line in (Path(record["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    assert [s["value"] for s in samples if s["name"] == "test_loss"] == sorted(
        (s["value"] for s in samples if s["name"] == "test_loss"), reverse=True
    )
    assert len([s for s in samples if s["name"] == "test_perplexity"]) == STEPS // 4  # every 4 steps

    # `aiops jobs metrics --plot` draws the curves; train_loss (one per `step` line) against `step`.
    # test_loss comes every 4th line here, so the plot draws it against its sample number.
    png = tmp_path / "curves.png"
    plot = run_aiops(Path(lm_reference["home"]), tmp_path, "jobs", "metrics", "lm-fsdp", "--plot", str(png))
    assert plot.returncode == 0, plot.output
    from PIL import Image

    with Image.open(png) as image:
        drawn = json.loads(image.text["aiops:series"])
    assert [round(y, 4) for _, y in drawn["test_loss"]] == [
        round(s["value"], 4) for s in samples if s["name"] == "test_loss"
    ]
    assert [x for x, _ in drawn["train_loss"]] == [float(s) for s in range(1, STEPS + 1)]

    # the consolidated, servable model: safetensors + config + code/, and the handler generates
    with tarfile.open(record["artifacts"]["model"]) as tar:
        assert {"model.safetensors", "config.json", "code/inference.py", "code/lm_model.py"} <= set(
            tar.getnames()
        )
        tar.extractall(tmp_path / "model", filter="data")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["d_model"] == 32 and config["trained_steps"] == STEPS


def test_handler_loads_the_consolidated_model_and_generates_token_by_token(lm_reference: dict) -> None:
    import importlib.util
    import inspect

    model_dir = Path(lm_reference["fsdp_model"])
    spec = importlib.util.spec_from_file_location(
        "lm_inference_under_test", model_dir / "code" / "inference.py"
    )
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    model = handler.model_fn(str(model_dir))
    data = handler.input_fn(json.dumps({"prompt": "import ", "max_new_tokens": 12}), "application/json")
    answer = json.loads(handler.output_fn(handler.predict_fn(data, model), "application/json"))
    assert answer["prompt"] == "import " and 0 <= answer["new_tokens"] <= 12
    stream = handler.generate(model, handler.encode("import "), 12)
    assert inspect.isgenerator(stream)
    tokens = list(stream)
    assert handler.decode(tokens) == answer["generated_text"]  # greedy: the same text both ways
    for body, ctype, status in (
        ("{", "application/json", 400),
        ('{"prompt": 3}', "application/json", 400),
        ('{"max_new_tokens": 99999}', "application/json", 400),
        ("x", "text/csv", 415),
    ):
        with pytest.raises(ValueError) as err:  # answered 4xx by the server, which stays up
            handler.input_fn(body, ctype)
        assert err.value.status_code == status


def test_resume_two_to_one_past_a_torn_checkpoint(lm_reference: dict, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(lm_reference["fsdp_checkpoints"], checkpoints)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-12", "step-8"]  # keeps 2
    (checkpoints / "step-12" / "__1_0.distcp").unlink()  # damaged after it was complete (a partial sync)
    (checkpoints / "step-16.tmp").mkdir()  # a crash mid-write leaves only a .tmp folder: never resumed
    (checkpoints / "step-16.tmp" / "__0_0.distcp").write_bytes(b"half")
    result = run_lm(1, tmp_path, Path(lm_reference["data"]), checkpoints, *_args())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checkpoint step-12 is incomplete (shard __1_0.distcp is missing); falling back" in result.stdout
    assert "written by 2 process(es), resuming on 1" in result.stdout
    assert set(train_losses(result.stdout)) == {9, 10, 11, 12}
    assert final_loss(result.stdout) == pytest.approx(final_loss(lm_reference["fsdp_log"]), rel=1e-4)
    assert max_diff(weights(tmp_path / "model"), weights(Path(lm_reference["fsdp_model"]))) < 1e-4
    # the torn folder is kept aside (never resumed again), the new step-12 is complete
    assert (checkpoints / "step-12" / ".metadata").is_file() and list(
        checkpoints.glob("step-12.incomplete-*")
    )


def test_resume_one_to_two(lm_reference: dict, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    shutil.copytree(Path(lm_reference["single_checkpoints"]) / "step-8", checkpoints / "step-8")
    result = run_lm(2, tmp_path, Path(lm_reference["data"]), checkpoints, *_args())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "written by 1 process(es), resuming on 2" in result.stdout
    assert set(train_losses(result.stdout)) == {9, 10, 11, 12}
    assert final_loss(result.stdout) == pytest.approx(final_loss(lm_reference["single_log"]), rel=1e-4)


def _assert_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), result.stderr
    assert "Traceback" not in result.stderr and "step=" not in result.stdout  # before any training


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_bad_inputs_stop_before_training_with_one_line(
    lm_reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = Path(lm_reference["data"])
    # a world size that does not divide the batch (the check comes before the process group forms)
    odd = tmp_path / "odd"
    with monkeypatch.context() as patch:
        odd_run = run_lm_in_process(
            patch, capsys, odd, data, odd / "ck", *_args(), env={"WORLD_SIZE": "3", "RANK": "0"}
        )
    _assert_usage_error(odd_run, "--batch-size 8 does not split over 3 process(es)", "multiple of 3")

    # a checkpoint of another model shape
    shape = tmp_path / "shape"
    shutil.copytree(lm_reference["fsdp_checkpoints"], shape / "ck")
    before = _tree(shape / "ck")
    with monkeypatch.context() as patch:
        wide = run_lm_in_process(patch, capsys, shape, data, shape / "ck", *_args(**{"d-model": 48}))
    _assert_usage_error(wide, "another model shape", "d_model 32 (now 48)")
    assert _tree(shape / "ck") == before  # nothing of the user's is touched

    # every checkpoint torn: nothing to fall back to (in a process of its own, as a user runs it)
    torn = tmp_path / "torn"
    shutil.copytree(lm_reference["fsdp_checkpoints"], torn / "ck")
    for step in torn.glob("ck/step-*"):
        (step / ".metadata").unlink()
    broken = run_lm(1, torn, data, torn / "ck", *_args())
    _assert_usage_error(broken, "no complete checkpoint", "step-12, step-8 incomplete")
    assert "failure" in os.listdir(torn / "output")  # the FailureReason SageMaker shows


def test_a_crashed_rank_takes_the_job_down_naming_its_traceback(lm_reference: dict, run_cli) -> None:
    data = Path(lm_reference["data"])
    result = run_cli(
        "train",
        str(SCRIPT),
        "--source-dir",
        str(EXAMPLE),
        "--nproc",
        "2",
        "--channel",
        f"train={data / 'train'}",
        "--channel",
        f"test={data / 'test'}",
        *[a for k, v in TINY.items() for a in ("--hp", f"{k}={v}")],
        "--json",
        env={"AIOPS_LM_FAIL_AT": "1:1"},
        timeout=120,
    )  # far below gloo's 30-minute timeout
    assert result.returncode == 1, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "Failed"
    # the FailureReason is the crashed rank's error, not the peer's "connection closed"
    assert record["failure_reason"].startswith("RuntimeError: injected failure on rank 1 at step 1")
    log = (Path(record["run_dir"]) / "train.log").read_text()
    summary = log.split("Root Cause (first observed failure):", 1)[1]
    assert "rank      : 1" in summary and "injected failure on rank 1 at step 1" in summary


def test_sigterm_then_resume_on_two_hosts_is_bit_exact_and_the_synced_union_resumes(
    lm_reference: dict, tmp_path: Path
) -> None:
    """SIGTERM stops a 2-process job after a checkpoint (as SageMaker stops a job); it restarts at the
    same world size as 2 instances x 1 process, as SageMaker runs them: each host has its own
    checkpoint folder (synced to one S3 prefix, downloaded whole by every host on a restart). The
    restart ends bit-exact where the uninterrupted one-host run does, each host writes its own shards,
    and the union of the hosts' folders is the whole checkpoint and resumes."""
    data, stopped_root = Path(lm_reference["data"]), tmp_path / "stopped"
    checkpoints = stopped_root / "checkpoints"
    proc = subprocess.Popen(
        _command(2, *_args()),
        env=_env(stopped_root, data, checkpoints),
        cwd=stopped_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step=2;"):
            # torchrun starts each worker in its own session: freeze the workers where they are, give
            # every process SIGTERM (as SageMaker stops a job), then let them run on to the stop
            workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            for pid in (proc.pid, *workers):
                os.kill(pid, signal.SIGTERM)
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=120) != 0
    log = "".join(lines)
    stopped = int(re.search(r"stopped after step (\d+)", log).group(1))
    assert 2 <= stopped < STEPS
    assert (checkpoints / f"step-{stopped}" / ".metadata").is_file()
    assert not list(checkpoints.glob("*.tmp"))

    port, hosts = str(free_port()), []
    for node in (0, 1):
        root = tmp_path / f"algo-{node + 1}"
        shutil.copytree(checkpoints, root / "checkpoints")  # the synced prefix, downloaded on the restart
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(node),
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            str(SCRIPT),
            *_args(),
        ]
        hosts.append(
            subprocess.Popen(
                command,
                env=_env(root, data, root / "checkpoints"),
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [h.communicate(timeout=240)[0] for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0], logs
    resumed_from = tmp_path / "algo-1" / "checkpoints" / f"step-{stopped}"
    assert f"resuming from {resumed_from}: step {stopped}" in logs[0]  # rank 0's log: host 1's
    first, second = (tmp_path / f"algo-{n}" / "checkpoints" / "step-12" for n in (1, 2))
    assert {p.name for p in first.iterdir()} == {".metadata", "aiops-lm.json", "__0_0.distcp"}
    assert {p.name for p in second.iterdir()} == {"__1_0.distcp"}  # renamed on its own host too
    # resumed at the same world size, on two hosts: exactly the uninterrupted run on one host
    got, reference = weights(tmp_path / "algo-1" / "model"), weights(Path(lm_reference["fsdp_model"]))
    assert all(got[k].equal(reference[k]) for k in reference), "resumed weights differ from the straight run"
    assert train_losses(logs[0])[STEPS] == train_losses(lm_reference["fsdp_log"])[STEPS]

    synced = tmp_path / "synced" / "checkpoints"  # what every host downloads from S3 on a restart
    for host in ("algo-1", "algo-2"):
        shutil.copytree(tmp_path / host / "checkpoints", synced, dirs_exist_ok=True)
    resumed = run_lm(1, tmp_path / "synced", data, synced, *_args())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {synced / 'step-12'}: step 12" in resumed.stdout
    assert max_diff(weights(tmp_path / "synced" / "model"), reference) < 1e-4
