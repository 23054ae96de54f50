# Two commands on a fresh machine with Python 3.11+:
#   make serve   the dashboard with the demo workflows, on ./dq.db (SQLite)
#   make test    lint, type-check and the whole test suite (starts PostgreSQL,
#                Redis and installs Chromium when they are missing)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/dq-ui serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP)
	./scripts/ensure-services.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/dq-ui bench --storage memory:// --jobs 10000 --steps 1
	$(BIN)/dq-ui bench --storage memory:// --jobs 3000 --steps 10
	$(BIN)/dq-ui bench --storage sqlite:/// --jobs 5000 --steps 1
	$(BIN)/dq-ui bench --storage sqlite:/// --jobs 1000 --steps 10

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache artifacts
