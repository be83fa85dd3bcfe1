"""`aiops preview --offline` against its import floor, side by side in one run, and its profile.

    python bench/preview_offline.py [--runs 7] [--stack NAME] [--baseline-python OTHER_TREE/.venv/bin/python]
    # writes bench/results/preview-offline.{md,json} and bench/results/preview-offline-profile.md

Every run is a fresh process, as a user or CI starts it (interpreter start and exit included), with
the bytecode caches written beforehand. The processes of a round run one after the other and each
round rotates their order, so a burst of load on the shared machine falls on all of them alike. Wall
and CPU (user + sys of the child) are both recorded: on a busy 2-core machine CPU time is the
steadier reading of the work done.

The floor is a process importing exactly the pulumi / pulumi_aws modules that one preview of the
stack leaves loaded in ``sys.modules``. pulumi_aws registers each of its service packages as a lazy
module, so ``import pulumi_aws.ec2`` alone runs none of it: the floor reads an attribute of every
module, which executes it. Two more rows: the floor's imports alone (the process ends with
``os._exit``, skipping the interpreter's teardown), and the bare import statements, shown because
they look like a floor and are not one.

The profile file holds one run each of: the CPU split (collector, command, interpreter exit),
``-X importtime`` (self time by package) and cProfile (top entries).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PACKAGES = ("pulumi", "pulumi_aws", "pulumi_aws_native")

# Runs the CLI's entry in this process and, at exit, writes the modules of PACKAGES that were executed
# (a lazily registered module nothing read is still a ``_LazyModule``: importlib's, or pulumi's own,
# which answers ``__name__``, ``__path__`` and ``__dict__`` without loading).
_LOADED_MODULES = """
import atexit, json, sys
def _dump():
    names = sorted(n for n, m in list(sys.modules.items()) if n.partition(".")[0] in {packages!r}
                   and m is not None and type(m).__name__ != "_LazyModule")
    with open({out!r}, "w") as f:
        json.dump(names, f)
atexit.register(_dump)
from aiops.cli.app import main
sys.exit(main({argv!r}))
"""
_FLOOR = """
import importlib, json, os, sys
for name in json.load(open(sys.argv[1])):
    getattr(importlib.import_module(name), "_load_now", None)  # any other attribute loads a lazy module
if sys.argv[2:] == ["--no-teardown"]:
    os._exit(0)
"""
_ACCOUNT = """
import gc, json, sys, time
spent, started = [0.0], [0.0]
def _clock(phase, info):
    if phase == "start":
        started[0] = time.process_time()
    else:
        spent[0] += time.process_time() - started[0]
gc.callbacks.append(_clock)
from aiops.cli.app import main
try:
    code = main({argv!r})
finally:
    with open({out!r}, "w") as f:
        json.dump({{"gc_cpu_s": spent[0], "cpu_at_return_s": time.process_time(),
                   "collections": [s["collections"] for s in gc.get_stats()]}}, f)
sys.exit(code)
"""


def child_env(home: Path) -> dict[str, str]:
    """Every measured process's environment: bytecode cache on, a fresh aiops home, no user config."""
    dropped = ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME", "AIOPS_CONFIG", "AIOPS_STACK")
    return {**{k: v for k, v in os.environ.items() if k not in dropped}, "AIOPS_HOME": str(home)}


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one child process, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = proc.stderr.strip()[-2000:]
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): {tail}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def aiops_entry(python: str) -> str:
    """The console script next to that interpreter, as a user runs it (its sys.path[0] is the bin
    folder, so no checkout in the working folder can shadow the installed package)."""
    entry = Path(python).parent / "aiops"
    if not entry.is_file():
        raise SystemExit(f"no aiops console script next to {python}")
    return str(entry)


def tree_commit(python: str) -> str:
    """The commit of the tree that interpreter's aiops is installed from (an editable install)."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()

    folder = run(python, "-P", "-c", "import aiops, os; print(os.path.dirname(aiops.__file__))")
    dirty = run("git", "-C", folder, "status", "--porcelain", "--untracked-files=no")
    return (run("git", "-C", folder, "rev-parse", "--short", "HEAD") or "unknown") + (
        " + uncommitted changes" if dirty else ""
    )


def loaded_modules(preview_args: list[str], env: dict[str, str], work: Path) -> list[str]:
    out = work / "modules.json"
    program = _LOADED_MODULES.format(packages=set(PACKAGES), out=str(out), argv=preview_args)
    subprocess.run([sys.executable, "-c", program], env=env, cwd=work, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def import_statements(modules: list[str]) -> str:
    """``import pulumi, pulumi.runtime.mocks, pulumi_aws, pulumi_aws.ec2, ...``: the packages the
    preview loads, as import statements."""
    services = sorted(
        m
        for m in modules
        if m.count(".") == 1
        and m.split(".")[0] in PACKAGES[1:]
        and any(other.startswith(m + ".") for other in modules)
    )
    tops = sorted({m.split(".")[0] for m in modules} - {"pulumi"})
    return "import " + ", ".join(["pulumi", "pulumi.runtime.mocks", *tops, *services])


# --------------------------------------------------------------------------- profile


def cprofile_tables(preview_args: list[str], env: dict[str, str], work: Path, top: int) -> list[str]:
    """The top entries by cumulative and by own time, paths shortened."""
    out = work / "preview.prof"
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "aiops.cli.app", *preview_args],
        env=env,
        cwd=work,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tables = []
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(str(out), stream=buf).sort_stats(key).print_stats(top)
        body = buf.getvalue()
        body = body[body.index("ncalls") :] if "ncalls" in body else body
        body = re.sub(r"\S*/(site-packages|lib/python3\.\d+)/", "", body.replace(str(REPO) + "/", ""))
        tables.append(body.rstrip())
    return tables


def importtime_by_package(
    preview_args: list[str], env: dict[str, str], work: Path
) -> list[tuple[str, float]]:
    """Self import time per package (pulumi_aws per service), in seconds, from ``-X importtime``."""
    program = f"import sys; from aiops.cli.app import main; sys.exit(main({preview_args!r}))"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", program],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    totals: Counter[str] = Counter()
    for line in proc.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if found:
            parts = found.group(2).split(".")
            per_service = parts[0] in ("pulumi_aws", "pulumi_aws_native") and len(parts) > 1
            totals[".".join(parts[:2]) if per_service else parts[0]] += int(found.group(1))
    return [(name, us / 1e6) for name, us in totals.most_common()]


def cpu_split(python: str, preview_args: list[str], env: dict[str, str], work: Path) -> dict:
    """The collector's CPU (gc.callbacks), the CPU when the command returned and the whole process's:
    the difference is the interpreter's exit (module teardown, its last collection)."""
    out = work / "account.json"
    _, cpu = timed([python, "-c", _ACCOUNT.format(argv=preview_args, out=str(out))], env, work)
    return {**json.loads(out.read_text()), "process_cpu_s": cpu}


# --------------------------------------------------------------------------- main


def measure(commands: dict[str, list[str]], runs: int, env: dict[str, str], work: Path) -> list[dict]:
    """``runs`` rounds, each running every command once, the order rotated from round to round."""
    rounds = []
    order = list(commands)
    for index in range(runs):
        shift = index % len(order)
        measured = {key: timed(commands[key], env, work) for key in order[shift:] + order[:shift]}
        rounds.append(measured)
        print(
            f"round {index + 1}/{runs}: "
            + ", ".join(f"{k} {w:.2f} s ({c:.2f} s CPU)" for k, (w, c) in measured.items()),
            flush=True,
        )
    return rounds


def summarize(rounds: list[dict], labels: dict[str, str]) -> dict[str, dict]:
    def median(key: str, what: int) -> float:
        return round(statistics.median(r[key][what] for r in rounds), 3)

    def paired(key: str, what: int, floor: str = "floor") -> float:  # the median of each round's ratio
        return round(statistics.median(r[key][what] / r[floor][what] for r in rounds), 2)

    return {
        key: {
            "label": label,
            "wall_median_s": median(key, 0),
            "cpu_median_s": median(key, 1),
            "wall_per_floor": paired(key, 0),
            "cpu_per_floor": paired(key, 1),
            "cpu_per_imports_alone": paired(key, 1, "imports_alone"),
            "wall_s": [round(r[key][0], 3) for r in rounds],
            "cpu_s": [round(r[key][1], 3) for r in rounds],
        }
        for key, label in labels.items()
    }


def profile_page(
    typed: str, command: str, splits: dict[str, dict], by_package: list, tables: list[str], top: int
) -> str:
    def row(name: str, value) -> str:
        return f"| {name} | " + " | ".join(value(split) for split in splits.values()) + " |"

    lines = [
        f"# Profile of `{typed}` (bench/preview_offline.py)",
        "",
        (
            f"One run each, from `{command}`: shapes, not timings (those are in "
            "[preview-offline.md](preview-offline.md))."
        ),
        "",
        "## Where the CPU goes (s)",
        "",
        "| | " + " | ".join(splits) + " |",
        "|---" * (len(splits) + 1) + "|",
        row("the whole process", lambda s: f"{s['process_cpu_s']:.3f}"),
        row("until the command returned", lambda s: f"{s['cpu_at_return_s']:.3f}"),
        row("of which the cyclic garbage collector", lambda s: f"{s['gc_cpu_s']:.3f}"),
        row("collections per generation", lambda s: "/".join(map(str, s["collections"]))),
        row(
            "the interpreter's exit (module teardown, its last collection)",
            lambda s: f"{s['process_cpu_s'] - s['cpu_at_return_s']:.3f}",
        ),
        "",
        "## Import self time by package (`-X importtime`, this tree; pulumi_aws per service)",
        "",
        "| package | self s |",
        "|---|---|",
        *[f"| {name} | {seconds:.3f} |" for name, seconds in by_package[:20]],
        f"| (all {len(by_package)} packages) | {sum(s for _, s in by_package):.3f} |",
    ]
    for title, table in zip(("cumulative", "own"), tables, strict=True):
        lines += ["", f"## cProfile, top {top} by {title} time (this tree)", "", "```", table, "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds (each runs every process once)")
    parser.add_argument(
        "--stack",
        default="",
        help="a stack of this repo (Pulumi.<stack>.yaml); default: "
        "none given, as `aiops preview --offline` is typed (dev)",
    )
    parser.add_argument(
        "--baseline-python",
        default="",
        help="the python of another tree's venv: its "
        "`aiops preview` is measured too (the code before a change)",
    )
    parser.add_argument("--top", type=int, default=30, help="cProfile entries shown")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="preview-offline-"))
    env = child_env(work / "home")
    preview_args = ["preview", "--offline", "-C", str(REPO)] + (["--stack", args.stack] if args.stack else [])
    typed = "aiops preview --offline" + (f" --stack {args.stack}" if args.stack else "")
    for python in filter(None, (sys.executable, args.baseline_python)):  # the first runs write the caches
        timed([aiops_entry(python), *preview_args], env, work)
    modules = loaded_modules(preview_args, env, work)
    floor_file = work / "floor.json"
    floor_file.write_text(json.dumps(modules))
    statements = import_statements(modules)
    commands = {
        "floor": [sys.executable, "-c", _FLOOR, str(floor_file)],
        "imports_alone": [sys.executable, "-c", _FLOOR, str(floor_file), "--no-teardown"],
        "statements": [sys.executable, "-c", statements],
        "preview": [aiops_entry(sys.executable), *preview_args],
    }
    labels = {
        "floor": f"**floor**: a process importing the {len(modules)} pulumi/pulumi_aws modules the preview "
        "loads",
        "imports_alone": "the floor's imports alone (ends with os._exit: no interpreter teardown)",
        "statements": "the import statements only (pulumi_aws's lazy stubs run no service package: not a "
        "floor)",
        "preview": f"**`{typed}`**, this tree ({tree_commit(sys.executable)})",
    }
    if args.baseline_python:
        commands["baseline"] = [aiops_entry(args.baseline_python), *preview_args]
        labels["baseline"] = f"`{typed}`, baseline ({tree_commit(args.baseline_python)})"
    timed(commands["floor"], env, work)
    rows = summarize(measure(commands, args.runs, env, work), labels)

    command = " ".join(
        ["python bench/preview_offline.py", f"--runs {args.runs}"]
        + ([f"--stack {args.stack}"] if args.stack else [])
        + ([f"--baseline-python {args.baseline_python}"] if args.baseline_python else [])
    )
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_1min_at_start": round(load, 2),
        "runs": args.runs,
        "command": command,
        "floor_modules": len(modules),
        "statements": statements,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preview-offline.json").write_text(
        json.dumps({"meta": meta, "results": rows}, indent=2) + "\n"
    )
    lines = [
        "# `aiops preview --offline` against its import floor (bench/preview_offline.py)",
        "",
        (
            f"`{command}`: {args.runs} rounds, Python {meta['python']}, {meta['machine']}, "
            f"{meta['cpus']} CPUs (shared; 1-minute load {meta['load_1min_at_start']} at the "
            "start). A fresh process per run, the processes interleaved round by round; "
            "medians. A ratio is the median of each round's ratio (to the floor, or to the "
            "floor's imports alone, of the same round). CPU is user + sys of the process."
        ),
        "",
        "| process | wall s | CPU s | wall / floor | CPU / floor | CPU / imports alone |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['label']} | {r['wall_median_s']} | {r['cpu_median_s']} | {r['wall_per_floor']} | "
            f"{r['cpu_per_floor']} | {r['cpu_per_imports_alone']} |"
            for r in rows.values()
        ],
        "",
        f"The import statements: `{statements}`.",
        "",
        "The profile of one run: [preview-offline-profile.md](preview-offline-profile.md).",
    ]
    (RESULTS / "preview-offline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    splits = {"this tree": cpu_split(sys.executable, preview_args, env, work)}
    if args.baseline_python:
        splits["baseline"] = cpu_split(args.baseline_python, preview_args, env, work)
    by_package = importtime_by_package(preview_args, env, work)
    tables = cprofile_tables(preview_args, env, work, args.top)
    (RESULTS / "preview-offline-profile.md").write_text(
        profile_page(typed, command, splits, by_package, tables, args.top)
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
