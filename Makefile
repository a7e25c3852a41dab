# Two commands on a fresh machine:
#   make quickstart   set up .venv (if absent) and run the main job on offline defaults
#   make test         set up .venv (if absent) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rkd-installed
# Without an NVIDIA driver, pin the torch/torchvision pair known to import and run on CPU here
# (torch 2.13.0+cpu breaks the registry's torchvision). With one, pip keeps/gets a CUDA build.
# --no-compile: Python compiles the modules a job imports on first use instead of pip compiling
# every file of torch, ray and mlflow up front (the install of a fresh clone took about 70 s
# instead of about 100 s here, 2026-12-07).
TORCH_CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)

.PHONY: setup quickstart test test-fast smoke lint bench clean

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile $(TORCH_CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	MLFLOW_DISABLE_TELEMETRY=$${MLFLOW_DISABLE_TELEMETRY:-true} $(BIN)/rkd quickstart

test: setup
	$(BIN)/python -m pytest -q --durations=10

smoke: setup  # --smoke of every config in jobs/ on tiny real-format datasets (tests/test_smoke.py)
	$(BIN)/python -m pytest -q -m smoke_all tests/test_smoke.py

lint: setup
	$(BIN)/ruff check .

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e"

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs mlruns mlflow.db .pytest_cache
