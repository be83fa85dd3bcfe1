"""Run every benchmark script in bench/ (`make bench`), one after the other, and say how each went.

    python bench/run_all.py            # full runs: refresh the recorded results in bench/results/
    python bench/run_all.py --quick    # short runs (a smoke check): bench/results/ is left as it is,
                                       # the quick results land in --quick-out
    python bench/run_all.py --only serve_bench,stop_grace

A benchmark script is a bench/*.py with a `__main__` block (torchserve_handler.py is a TorchServe
handler the serving benchmark loads, not a script). A script that is not listed in QUICK runs with its
defaults in --quick too, and a new script is picked up without editing this file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# per script: (extra argv, extra environment) for a short run
QUICK: dict[str, tuple[list[str], dict[str, str]]] = {
    "export_bench": (["--rounds", "1", "--seconds", "0.3", "--epochs", "3"], {}),
    "serve_bench": (["--duration", "2", "--runs", "1", "--conc", "1,16"], {}),
    "preview_offline": (["--runs", "2"], {}),
    "stop_grace": (["--runs", "2"], {}),
    "serve_ab": (["--duration", "2", "--rounds", "1", "--variants", "old,new", "--conc", "1"], {}),
    "forward_gap": (["--calls", "30", "--rounds", "1"], {}),
    "serve_cpu_split": (["--seconds", "2"], {}),
    "llm_engine": (
        ["--requests", "4", "--tokens", "8", "--sizes", "tiny", "--conc", "1,4", "--rounds", "1"],
        {},
    ),
    "llm_http": (
        ["--requests", "4", "--tokens", "8", "--sizes", "tiny", "--conc", "1,4", "--rounds", "1"],
        {},
    ),
    "finetune_bench": (["--steps", "6"], {}),
    "upload_bench": (["--files", "200", "--big-mib", "32", "--rounds", "1"], {}),
}


def scripts() -> list[Path]:
    return [
        p
        for p in sorted(HERE.glob("*.py"))
        if p.name != Path(__file__).name and 'if __name__ == "__main__"' in p.read_text()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs; bench/results/ stays unchanged")
    parser.add_argument(
        "--quick-out", default="", help="folder for the quick runs' results (default: a temp dir)"
    )
    parser.add_argument("--only", default="", help="comma-separated script names (without .py)")
    args = parser.parse_args()
    chosen = scripts()
    if args.only:
        wanted = {name.strip().removesuffix(".py") for name in args.only.split(",") if name.strip()}
        unknown = wanted - {p.stem for p in chosen}
        if unknown:
            print(
                f"error: no benchmark named {', '.join(sorted(unknown))} (have: "
                f"{', '.join(p.stem for p in chosen)})",
                file=sys.stderr,
            )
            return 2
        chosen = [p for p in chosen if p.stem in wanted]

    backup = None
    if args.quick:  # the scripts write bench/results/ themselves: keep the recorded results intact
        backup = Path(tempfile.mkdtemp(prefix="bench-results-backup-"))
        shutil.copytree(RESULTS, backup / "results")
    outcomes = []
    try:
        for script in chosen:
            extra, env = QUICK.get(script.stem, ([], {})) if args.quick else ([], {})
            print(f"== {script.name} {' '.join(extra)}".rstrip(), flush=True)
            start = time.perf_counter()
            code = subprocess.run([sys.executable, str(script), *extra], env={**os.environ, **env}).returncode
            outcomes.append((script.name, code, time.perf_counter() - start))
    finally:
        if backup is not None:
            quick_out = Path(args.quick_out or tempfile.mkdtemp(prefix="bench-quick-"))
            if quick_out.exists():
                shutil.rmtree(quick_out)
            shutil.move(str(RESULTS), str(quick_out))
            shutil.move(str(backup / "results"), str(RESULTS))
            shutil.rmtree(backup)
            print(f"quick results in {quick_out} (bench/results/ unchanged)")
    for name, code, seconds in outcomes:
        print(
            f"{'ok ' if code == 0 else 'FAILED'} {name}: {seconds:.0f} s"
            + ("" if code == 0 else f" (exit {code})")
        )
    return 0 if all(code == 0 for _, code, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
