# Quickstart targets. `make demo` and `make test` each set up .venv on first use, from the lock.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Every version the development and test environment uses, with hashes: `.[dev]` plus torch.
# `make lock` refreshes it; `make test-latest` runs the suite on the newest versions the ranges allow.
LOCK := requirements/dev.lock
# test oracles that cannot resolve beside the lock, installed without their dependencies
ORACLES := requirements/oracles.lock
# the SDK v2 oracle, in its own folder beside the venv's site-packages (the lock file says why)
ORACLES_SDK_V2 := requirements/oracles-sdk-v2.lock
# torch is not a dependency of the package (users pick their build); the environment pins the CPU build.
# On the project's build machines its wheel lies in the directory pip's find-links names; any other
# version would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
LATEST_VENV ?= .venv-latest
DATA := .aiops/data/digits
# pytest-xdist workers: two per core (4 on the project's 2-core build machines): a test spends part
# of its time waiting on its child processes, a server or another worker's shared build, and the
# extra workers keep both cores busy meanwhile (measured on one tree: 8 min 45 s with 3, 8 min 19 s
# with 4, the cores then idle 13 s of the run; earlier 9 min 40 s with 2, 8 min 56 s with 3).
# Tests that must share a process are grouped with @pytest.mark.xdist_group and `--dist loadgroup`
# keeps each group on one worker.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(2 * (os.cpu_count() or 1))')

.PHONY: demo check test install bench clean-venv lock test-latest

# Exactly the lock (hashes checked), then the project itself with no dependency resolution and
# no build isolation, so nothing unpinned is fetched.
$(BIN)/.installed: $(LOCK) $(ORACLES) $(ORACLES_SDK_V2) pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r $(ORACLES)
	$(BIN)/python -m pip install -q --no-deps --require-hashes --target $(VENV)/sdk-v2 -r $(ORACLES_SDK_V2)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/aiops example digits-data $(DATA)
	$(BIN)/aiops train training/examples/digits/train.py \
		--channel train=$(DATA)/train --channel test=$(DATA)/test

# Lint, format and types, in seconds (both tools cache): ruff over everything Python in the repository
# (pyproject.toml [tool.ruff]), mypy over the product packages (scripts/typecheck.py, [tool.mypy]).
# `make test` runs it first, so .ci/run does too. The import boundaries are tests/test_boundaries.py.
check: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typecheck.py

# PYTHONDONTWRITEBYTECODE is cleared for the run: with it set (as some shells do) every one of the
# suite's hundreds of processes compiles the project's modules again, and pytest rewrites every test
# module's asserts again in every worker (~5 s of CPU each).
test: check
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# every bench/*.py script (bench/run_all.py), full runs that refresh bench/results/;
# BENCH_ARGS=--quick: short runs that leave bench/results/ as it is
bench: $(BIN)/.installed
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# The lock, resolved again from pyproject.toml's ranges (uv, in a throwaway venv). Commit the result
# after `make test` passes on it.
lock:
	$(PYTHON) -m venv --clear .venv-lock
	.venv-lock/bin/python -m pip install -q 'uv>=0.9'
	echo '$(TORCH)' | .venv-lock/bin/uv pip compile pyproject.toml - --extra dev --python-version 3.11 \
		--generate-hashes $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) --no-emit-find-links \
		--custom-compile-command 'make lock' -q -o $(LOCK)
	rm -rf .venv-lock

# Early warning: a fresh venv with the newest versions pyproject.toml's ranges allow (torch stays at
# the pinned CPU build), the versions that differ from the lock, then the whole suite. A new upstream
# release that breaks something fails here while `make test` stays green on the lock.
test-latest:
	$(PYTHON) -m venv --clear $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade '$(TORCH)' -e '.[dev]'
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps --require-hashes -r $(ORACLES)
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps --require-hashes --target $(LATEST_VENV)/sdk-v2 \
		-r $(ORACLES_SDK_V2)
	$(LATEST_VENV)/bin/python scripts/lock_drift.py $(LOCK)
	PYTHONDONTWRITEBYTECODE= $(LATEST_VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV) $(LATEST_VENV)
