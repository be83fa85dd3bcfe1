"""`make bench` (bench/run_all.py) finds every benchmark script and knows only real ones."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_script_runs_and_quick_options_name_real_scripts():
    run_all = _run_all()
    found = {p.name for p in run_all.scripts()}
    mains = {p.name for p in BENCH.glob("*.py") if 'if __name__ == "__main__"' in p.read_text()} - {
        "run_all.py"
    }
    assert found == mains and "serve_bench.py" in found and "stop_grace.py" in found
    assert "torchserve_handler.py" not in found  # a handler the serving benchmark loads, not a script
    assert set(run_all.QUICK) <= {p.stem for p in run_all.scripts()}
    # every quick option is one the script declares
    for name, (argv, _) in run_all.QUICK.items():
        text = (BENCH / f"{name}.py").read_text()
        for flag in (a for a in argv if a.startswith("--")):
            assert f'"{flag}"' in text, (name, flag)


def test_make_bench_runs_run_all():
    import re

    makefile = (BENCH.parent / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n?)+)", makefile, re.M).group(1)
    assert "bench/run_all.py" in recipe and (BENCH / "run_all.py").is_file()
