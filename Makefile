# Two entry points: `make demo` and `make test`; each sets up the virtual environment it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export GX_ANALYTICS_ENABLED = false

.PHONY: setup demo dashboard bench test lint test-slow clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/alliance demo --home demo-home

dashboard: setup
	$(BIN)/alliance dashboard --home demo-home

bench: setup
	$(BIN)/alliance bench --scenario night --scale 0.05

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) demo-home .pytest_cache .mypy_cache .ruff_cache
