# Quickstart targets. `make demo` and `make test` each set up .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DATA := .aiops/data/digits
# pytest-xdist workers: two per core (4 on the project's 2-core build machines): a test spends part
# of its time waiting on its child processes, a server or another worker's shared build, and the
# extra workers keep both cores busy meanwhile (measured on one tree: 8 min 45 s with 3, 8 min 19 s
# with 4, the cores then idle 13 s of the run; earlier 9 min 40 s with 2, 8 min 56 s with 3).
# Tests that must share a process are grouped with @pytest.mark.xdist_group and `--dist loadgroup`
# keeps each group on one worker.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(2 * (os.cpu_count() or 1))')

.PHONY: demo test install bench clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# torch 2.13.0: on the project's build machines a CPU wheel of it lies on local disk;
	# an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/aiops example digits-data $(DATA)
	$(BIN)/aiops train training/examples/digits/train.py \
		--channel train=$(DATA)/train --channel test=$(DATA)/test

# PYTHONDONTWRITEBYTECODE is cleared for the run: with it set (as some shells do) every one of the
# suite's hundreds of processes compiles the project's modules again, and pytest rewrites every test
# module's asserts again in every worker (~5 s of CPU each).
test: $(BIN)/.installed
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# every bench/*.py script (bench/run_all.py), full runs that refresh bench/results/;
# BENCH_ARGS=--quick: short runs that leave bench/results/ as it is
bench: $(BIN)/.installed
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
