# fitserve: `make run` serves the API with a worker on 127.0.0.1:8000 (`make run API_PROCESSES=2
# WORKERS=0`: two API processes, no worker); `make test` passes the tests.
# Both install into .venv first (only when pyproject.toml changed since the last install).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
# API processes on one port (one per core for CPU-bound prediction traffic; see README).
API_PROCESSES ?= 1

.PHONY: install run test test-gpu lint bench clean

install: $(STAMP)

# The client package (clients/python) first on the same command line: the server depends on it,
# and pip takes it from the checkout instead of looking for it on an index.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e clients/python -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/fitserve serve --host $(HOST) --port $(PORT) --workers $(WORKERS) --api-processes $(API_PROCESSES)

test: install
	$(BIN)/python -m pytest

# On a machine with a CUDA GPU (and a CUDA build of torch in .venv, see README): the CUDA tests,
# then bench/gpu.py (its figures, and real iris jobs through `fitserve worker --device cuda`).
# Fails, never skips, when no CUDA device is usable.
test-gpu: install
	$(BIN)/python bench/gpu.py --check-cuda
	FITSERVE_REQUIRE_CUDA=1 $(BIN)/python -m pytest -m cuda -p no:cacheprovider
	$(BIN)/python bench/gpu.py --skip-tests --strict

lint: install
	$(BIN)/ruff format --check app models migrations tests bench clients
	$(BIN)/ruff check app models migrations tests bench clients
	$(BIN)/mypy app models clients/python/fitserve_client

bench: install
	$(BIN)/python bench/train_overhead.py

clean:
	rm -rf $(VENV) fitserve.db fitserve.db-wal fitserve.db-shm .pytest_cache
