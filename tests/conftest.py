"""Fixtures shared by every test area (tests/<area>/conftest.py holds the area's own)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import CliResult, run_aiops, run_aiops_in_process

REPO_ROOT = Path(__file__).resolve().parents[1]

# Every process the suite starts (training scripts, torchrun workers, servers) inherits one OpenMP
# thread: `make test` already runs a worker per core, and more threads per process only spin-wait
# for a core, burning CPU the other worker needs (measured: a digits run costs ~12 % less CPU alone).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def aiops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated AIOPS_HOME for the test (local runs, state)."""
    home = tmp_path / "aiops-home"
    monkeypatch.setenv("AIOPS_HOME", str(home))
    monkeypatch.delenv("AIOPS_CONFIG", raising=False)
    return home


@pytest.fixture
def run_cli(fresh_cli):
    """Run the real `aiops` console entry in a fresh process, as a user would (an area may override
    it: tests/remote calls the entry in-process and keeps ``fresh_cli`` for what needs a process)."""
    return fresh_cli


@pytest.fixture
def fresh_cli(aiops_home: Path, tmp_path: Path):
    """The real `aiops` console entry in a fresh process, as a user runs it."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 300,
        input: str | None = None,
    ) -> CliResult:
        return run_aiops(aiops_home, cwd or tmp_path, *args, env=env, timeout=timeout, input=input)

    return run


@pytest.fixture
def cli_in_process(aiops_home: Path, tmp_path: Path):
    """`run_cli`'s twin that calls the same entry in this process (helpers.run_aiops_in_process):
    for the repeated calls of a command whose subject is what it prints."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
        return run_aiops_in_process(aiops_home, cwd or tmp_path, *args, env=env)

    return run


DIGITS_SCRIPT = REPO_ROOT / "training" / "examples" / "digits" / "train.py"


@pytest.fixture(scope="session")
def digits_channels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`aiops example digits-data`'s train/ and test/ channels, made once for every xdist worker;
    read-only for the tests (the journeys' channels, the default run's)."""
    from helpers import built_once

    def make(root: Path) -> dict:
        made = run_aiops(root / "home", root, "example", "digits-data", str(root / "data"))
        assert made.returncode == 0, made.output
        return {"data": str(root / "data")}

    return Path(built_once(tmp_path_factory, "digits-channels", make)["data"])


@pytest.fixture(scope="session")
def digits_default_run(digits_channels: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One `aiops train` of the digits example with its default hyperparameters, as a user runs it,
    made once for every xdist worker (helpers.built_once) and read by the tests of the example, the
    runner's stop/resume and the export: {"home", "data", "run" (its name), "run_dir", "summary",
    "stderr"}. Readers treat it as read-only: each test that trains or writes uses its own folders."""
    from helpers import built_once

    def train(root: Path) -> dict:
        home, data = root / "home", digits_channels
        result = run_aiops(
            home,
            root,
            "train",
            str(DIGITS_SCRIPT),
            "--channel",
            f"train={data / 'train'}",
            "--channel",
            f"test={data / 'test'}",
            "--job-name",
            "digits",
            "--json",
        )
        assert result.returncode == 0, result.output
        summary = json.loads(result.stdout)
        return {
            "home": str(home),
            "data": str(data),
            "run": "digits",
            "run_dir": summary["run_dir"],
            "summary": summary,
            "stderr": result.stderr,
        }

    built = built_once(tmp_path_factory, "digits-default-run", train)
    return {**built, **{k: Path(built[k]) for k in ("home", "data", "run_dir")}}


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`aiops example tiny-llm` (default sizes, seed 0), made once for every xdist worker: a Hugging
    Face model folder, read-only for the tests."""
    from helpers import tiny_llm_folder

    return tiny_llm_folder(tmp_path_factory)


@pytest.fixture(scope="session")
def finetune_channels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`aiops example finetune-data`'s train/ and test/ channels (seed 0), made once, read-only."""
    from helpers import built_once

    def make(root: Path) -> dict:
        made = run_aiops(root / "home", root, "example", "finetune-data", str(root / "data"))
        assert made.returncode == 0, made.output
        return {"data": str(root / "data")}

    return Path(built_once(tmp_path_factory, "finetune-channels", make)["data"])


@pytest.fixture(scope="session")
def finetuned(tiny_llm: Path, finetune_channels: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The fine-tuning example's reference run on the tiny model (helpers.finetuned_reference), one
    for the whole suite: {"home", "run_dir", "summary", "output"}."""
    from helpers import finetuned_reference

    return finetuned_reference(tmp_path_factory, tiny_llm, finetune_channels)


# Files whose tests share an expensive module- or session-scoped fixture (a trained digits run):
# `make test` runs pytest-xdist with `--dist loadgroup`, and one group stays on one worker, so the
# fixture is built once instead of once per worker. Everything else spreads test by test.
XDIST_GROUPS = {
    "export/": "digits-export-run",
    "training/test_example.py": "digits-example-runs",
    "training/test_finetune.py": "finetune-runs",
    "inference/test_huggingface.py": "hf-container-servers",
    "inference/llm/test_server.py": "llm-servers",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    # Files with slow tests (the journeys, training, export) go first, in their order, the quick ones
    # after: xdist hands out work in this order, so the long tests start early and the quick ones fill
    # the workers at the end, instead of one long test running alone on one worker while the others
    # are done. Whole files move, so module-scoped fixtures are still built once per file.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each part stays
    tests_root = Path(__file__).resolve().parent
    for item in items:
        rel = Path(item.fspath).resolve().relative_to(tests_root).as_posix()
        for prefix, group in XDIST_GROUPS.items():
            if rel.startswith(prefix):
                item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly when xdist's loadgroup stops grouping (pytest 9.2 made it a silent no-op): every
    group would then build its expensive fixture once per worker and the suite would run slower."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not session.config.getvalue("loadgroup"):
        return
    ungrouped = [
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist --dist loadgroup did not group {ungrouped[0]} (and "
            f"{len(ungrouped) - 1} more): use a pytest/pytest-xdist pair that works together"
        )


# AIOPS_TEST_CPU_LOG=FILE: one line per test with the CPU seconds it cost (its worker and every child
# process reaped meanwhile), its wall seconds, its worker and when it ended (to see idle tails); how the
# split in the README was measured.
_CPU_LOG = os.environ.get("AIOPS_TEST_CPU_LOG")


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if not _CPU_LOG:
        yield
        return
    import time

    before = _children()
    cpu, wall = _cpu_seconds(), time.monotonic()
    yield
    left = sorted(set(_children()) - set(before))  # started by this test and still running
    with open(_CPU_LOG, "a") as log:
        log.write(
            f"{_cpu_seconds() - cpu:.2f}\t{time.monotonic() - wall:.2f}\t{item.nodeid}\t"
            f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} ended at {time.time():.1f}"
            + (f"\tleft running: {left}" if left else "")
            + "\n"
        )


def _children() -> list[str]:
    """This worker's child processes (pid and command), read from /proc."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[1] == me and fields[0] != "Z":
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{stat.parent.name} {cmd[:120]}")
        except (OSError, IndexError):
            continue
    return found
