"""One file-selection policy for the local snapshot, the remote bundle and the model package; run
folders that are private; runs whose aiops process dies; stop that never signals a reused pid."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from aiops.training import bundle, local

from aiops import files
from aiops.errors import UsageError
from aiops.run_processes import process_alive, process_start_time
from aiops.runs import RunRecord, RunStore


def _project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_text(
        "import os, pkg.util\nopen(os.path.join(os.environ['SM_MODEL_DIR'], 'm'), 'w')\n"
    )
    (root / "pkg" / "util.py").write_text("X = 1\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "notes.log").write_text("ignored by .gitignore\n")
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    (root / "build").mkdir()
    (root / "build" / "big.bin").write_bytes(b"x")
    (root / ".env").write_text("API_KEY=hunter2\n")
    (root / ".aws").mkdir()
    (root / ".aws" / "credentials").write_text("[default]\n")
    (root / "server.pem").write_text("-----BEGIN-----\n")
    (root / "id_ed25519").write_text("key\n")
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)  # ignored: never inspected
    return root


EXPECTED = [".gitignore", "pkg/__init__.py", "pkg/util.py", "train.py"]


def test_policy_ignores_and_warns_about_secrets(tmp_path: Path) -> None:
    selection = files.select(_project(tmp_path / "p"))
    assert selection.files == EXPECTED
    assert sorted(selection.secrets_excluded) == [".aws/", ".env", "id_ed25519", "server.pem"]
    (warning,) = selection.warnings
    assert "likely secrets" in warning and "Secrets Manager" in warning


def test_aiopsignore_can_take_a_secret_back_on_purpose(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / ".aiopsignore").write_text("!server.pem\n")
    assert "server.pem" in files.select(root).files


def test_local_snapshot_bundle_and_package_hold_the_same_files(
    run_cli, aiops_home: Path, tmp_path: Path
) -> None:
    root = _project(tmp_path / "p")
    (root / "inference.py").write_text("from pkg.util import X\n")
    result = run_cli("train", "train.py", "--source-dir", str(root), "--job-name", "same-files", "--json")
    assert result.returncode == 0, result.output
    assert "likely secrets: .aws/, .env, id_ed25519, server.pem" in result.stderr
    code = Path(json.loads(result.stdout)["run_dir"]) / "opt" / "ml" / "code"
    # (the run's own imports may compile into code/**/__pycache__, as in the container: not shipped files)
    snapshot = sorted(
        p.relative_to(code).as_posix()
        for p in code.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    expected = sorted(EXPECTED + ["inference.py"])
    assert snapshot == expected
    assert bundle.build(root, "train.py").files == expected
    out = tmp_path / "model.tar.gz"
    assert run_cli("model", "package", "same-files", "--out", str(out)).returncode == 0
    with tarfile.open(out) as tar:
        packaged = sorted(
            n[len("code/") :] for n in tar.getnames() if n.startswith("code/") and tar.getmember(n).isfile()
        )
    assert packaged == expected


def test_symlinks_inside_are_followed_outside_refused(tmp_path: Path, run_cli, aiops_home: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "train.py").write_text("print('ok')\n")
    (root / "shared").mkdir()
    (root / "shared" / "a.py").write_text("A = 1\n")
    (root / "alias.py").symlink_to(root / "shared" / "a.py")
    (root / "loop").symlink_to(root, target_is_directory=True)  # a cycle is not walked twice
    assert files.select(root).files == ["alias.py", "shared/a.py", "train.py"]
    secret = tmp_path / "outside.txt"
    secret.write_text("private\n")
    (root / "leak.txt").symlink_to(secret)
    with pytest.raises(UsageError, match="leak.txt is a symlink to .*outside the source dir"):
        files.select(root)
    assert "leak.txt" in files.select(root, follow_symlinks=True).files

    refused = run_cli("train", "train.py", "--source-dir", str(root), "--job-name", "leaky")
    assert refused.returncode == 2 and "--follow-symlinks" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.output
    assert not (aiops_home / "runs" / "leaky").exists()
    followed = run_cli(
        "train", "train.py", "--source-dir", str(root), "--job-name", "followed", "--follow-symlinks"
    )
    assert followed.returncode == 0, followed.output
    copied = aiops_home / "runs" / "followed" / "opt" / "ml" / "code" / "leak.txt"
    assert copied.read_text() == "private\n" and not copied.is_symlink()


def test_a_channel_link_leaving_the_channel_is_refused(tmp_path: Path, run_cli) -> None:
    script = tmp_path / "t.py"
    script.write_text("print(1)\n")
    channel = tmp_path / "data"
    channel.mkdir()
    (channel / "rows.csv").write_text("1\n")
    (channel / "passwd").symlink_to("/etc/passwd")
    result = run_cli("train", str(script), "--channel", f"train={channel}")
    assert (
        result.returncode == 2
        and "channel 'train'" in result.stderr
        and "outside the channel" in result.stderr
    )


def test_run_folders_are_private(run_cli, aiops_home: Path, tmp_path: Path) -> None:
    script = tmp_path / "t.py"
    script.write_text("print(1)\n")
    assert run_cli("train", str(script), "--job-name", "private").returncode == 0
    assert stat.S_IMODE((aiops_home / "runs" / "private").stat().st_mode) == 0o700


def test_secret_looking_hyperparameter_is_refused_naming_secret(
    run_cli, tmp_path: Path, aiops_home: Path
) -> None:
    script = tmp_path / "t.py"
    script.write_text("print(1)\n")
    result = run_cli("train", str(script), "--hp", "max_tokens=5", "--hp", "api_key=abc")
    assert result.returncode == 2, result.output
    assert result.stderr.startswith("error: --hp api_key looks like a secret")
    assert "--secret api_key=arn:" in result.stderr
    assert "Traceback" not in result.output and not (aiops_home / "runs").exists()
    assert run_cli("train", str(script), "--hp", "max_tokens=5").returncode == 0  # a word, not a substring


BAD = [
    (["--channel", "train={data}", "--channel", "train={data}"], "--channel train is given twice"),
    (["--distribution", "torch_distributed"], "with one instance and one process"),
    (["--distribution", "torch_distributed", "--nproc", "1"], "with one instance and one process"),
    (["--distribution", "mpi", "--nproc", "2"], "run it with --remote"),
    (["--distribution", "horovod", "--nproc", "2"], "choose one of none, torch_distributed, mpi"),
    (["--distribution", "none", "--nproc", "2"], "several processes need a launcher"),
]


@pytest.mark.parametrize("args, expected", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_distribution_and_channels_exit_2(
    cli_in_process, aiops_home: Path, tmp_path: Path, args, expected
) -> None:
    script = tmp_path / "t.py"
    script.write_text("print(1)\n")
    (tmp_path / "data").mkdir()
    result = cli_in_process(
        "train", str(script), *[a.replace("{data}", str(tmp_path / "data")) for a in args]
    )
    assert result.returncode == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (aiops_home / "runs").exists() or not any((aiops_home / "runs").iterdir())


SLEEPER = textwrap.dedent(
    """
    import os, time
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "pid"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.2)
    """
)


def _wait(condition, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def test_a_killed_runner_takes_its_script_and_leaves_a_stale_record(
    run_cli, aiops_home: Path, tmp_path: Path
) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    runner = subprocess.Popen(
        [sys.executable, "-m", "aiops.cli.app", "train", str(script), "--job-name", "orphan"],
        env={**os.environ, "AIOPS_HOME": str(aiops_home)},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid_file = aiops_home / "runs" / "orphan" / "opt" / "ml" / "model" / "pid"
    _wait(lambda: pid_file.is_file() and pid_file.read_text(), "the script starting")
    script_pid = int(pid_file.read_text())
    record = json.loads((aiops_home / "runs" / "orphan" / "run.json").read_text())
    assert record["script_pid"] == script_pid and record["script_start_time"] == process_start_time(
        script_pid
    )
    runner.kill()  # SIGKILL: aiops cannot clean up, the kernel must
    runner.wait(timeout=30)
    _wait(
        lambda: not process_alive(script_pid, record["script_start_time"]), "the script dying with its runner"
    )

    listed = json.loads(run_cli("jobs", "list", "--json").stdout)
    assert [(r["job_name"], r["status"]) for r in listed] == [("orphan", "Stale")]
    assert "runner died" in listed[0]["failure_reason"]
    stop = run_cli("jobs", "stop", "orphan")
    assert stop.returncode == 2 and "stale" in stop.stderr
    # the file itself is left as the runner wrote it
    assert json.loads((aiops_home / "runs" / "orphan" / "run.json").read_text())["status"] == "InProgress"


def test_jobs_stop_checks_the_runner_then_stops_the_run(run_cli, aiops_home: Path, tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    runner = subprocess.Popen(
        [sys.executable, "-m", "aiops.cli.app", "train", str(script), "--job-name", "stoppable"],
        env={**os.environ, "AIOPS_HOME": str(aiops_home)},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid_file = aiops_home / "runs" / "stoppable" / "opt" / "ml" / "model" / "pid"
    _wait(lambda: pid_file.is_file() and pid_file.read_text(), "the script starting")
    stop = run_cli("jobs", "stop", "stoppable")
    assert stop.returncode == 0 and f"aiops process {runner.pid}" in stop.stdout, stop.output
    assert runner.wait(timeout=120) == 143
    assert json.loads(run_cli("jobs", "describe", "stoppable", "--json").stdout)["status"] == "Stopped"


def test_stop_never_signals_a_reused_pid(tmp_path: Path) -> None:
    """A record naming a live pid whose start time differs (the pid was reused): nothing is signalled."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        start = process_start_time(bystander.pid)
        assert start is not None and process_alive(bystander.pid, start)
        record = RunRecord.from_json(
            {
                "job_name": "old-run",
                "status": "InProgress",
                "runner_pid": bystander.pid,
                "runner_start_time": start - 1,
                "script_pid": bystander.pid,
                "script_start_time": start + 1,
            }
        )
        with pytest.raises(UsageError, match="nothing was signalled"):
            local.request_stop(record, RunStore(tmp_path / "runs").folder("old-run"))
        assert bystander.poll() is None  # still running: it was never signalled
        store = RunStore(tmp_path / "runs")
        store.create("old-run")
        store.save(record)
        assert store.load("old-run").status == "Stale"
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()


def _one_line_refusal(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.stderr
    return lines[0]


def _plant(aiops_home: Path, folder: str, record: dict) -> Path:
    """A run folder holding a run.json written by hand (as anyone with the folder could)."""
    path = aiops_home / "runs" / folder
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps(record))
    return path


@pytest.mark.parametrize("crafted", ["{tmp}/x/escaped", "other-run", "../other-run"])
def test_a_record_whose_job_name_is_not_its_folder_is_refused(
    run_cli, aiops_home: Path, tmp_path: Path, crafted: str
) -> None:
    """A remote record is written back when described: with job_name `/tmp/x/escaped` it would be
    written there. The name must be its folder's: one line, nothing written anywhere."""
    name = crafted.format(tmp=tmp_path)
    _plant(
        aiops_home,
        "victim",
        {"job_name": name, "remote": True, "region": "us-east-1", "status": "InProgress", "created_at": 1.0},
    )
    for command in (("jobs", "describe", "victim"), ("jobs", "stop", "victim")):
        line = _one_line_refusal(run_cli(*command))
        assert "is not the name of its folder ('victim')" in line, line
    assert not (tmp_path / "x").exists() and not (aiops_home / "runs" / "other-run").exists()
    listed = run_cli("jobs", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # left out, not acted on


@pytest.mark.parametrize("named", ["runner", "script"])
def test_stop_signals_only_a_process_that_is_the_runs(run_cli, aiops_home: Path, named: str) -> None:
    """run.json names a live process with its exact start time (as a crafted record can): its command
    line is not `aiops train` (the runner) and its environment has not this run's SAGEMAKER_BASE_DIR
    (the script), so nothing is signalled (a record whose runner is not alive reads as Stale)."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        start = process_start_time(bystander.pid)
        pids = (
            {"runner_pid": bystander.pid, "runner_start_time": start}
            if named == "runner"
            else {"runner_pid": bystander.pid, "script_pid": bystander.pid, "script_start_time": start}
        )
        _plant(
            aiops_home, "crafted", {"job_name": "crafted", "status": "InProgress", "created_at": 1.0, **pids}
        )
        line = _one_line_refusal(run_cli("jobs", "stop", "crafted"))
        assert ("is stale" if named == "runner" else "nothing was signalled") in line, line
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize(
    "command",
    [("jobs", "describe", "{name}"), ("serve", "{name}"), ("model", "package", "{name}")],
    ids=["jobs-describe", "serve", "model-package"],
)
def test_names_over_255_characters_are_one_line(run_cli, command) -> None:
    name = "a" * 300
    line = _one_line_refusal(run_cli(*(part.format(name=name) for part in command)))
    assert "300 characters" in line and len(line) < 300


def test_a_crafted_region_in_a_record_is_one_line(run_cli, aiops_home: Path) -> None:
    _plant(
        aiops_home,
        "far-away",
        {
            "job_name": "far-away",
            "remote": True,
            "region": "us-east-1/../evil",
            "status": "InProgress",
            "created_at": 1.0,
        },
    )
    line = _one_line_refusal(
        run_cli("jobs", "describe", "far-away", env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    )
    assert "unknown region 'us-east-1/../evil'" in line
