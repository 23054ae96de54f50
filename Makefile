# Two commands on a fresh machine with Python 3.11+:
#   make serve   the dashboard with the demo workflows, on ./dq.db (SQLite)
#   make test    lint, type-check and the whole test suite (starts PostgreSQL,
#                Redis and installs Chromium when they are missing); it also builds
#                the wheel and serves it from a throw-away virtualenv (tests/package)
# What make installs is pinned by constraints.txt (pyproject keeps ranges for users);
# `make lock` refreshes it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PIP_CONSTRAINT, not -c: it also pins the isolated build environment (setuptools).
PIP := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/pip

.PHONY: serve test lint bench lock wheel clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
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
	# Two processes, a file each at a time (most tests wait on servers and subprocesses);
	# the browser tests apart and in one process (sync Playwright leaves its loop running
	# in its worker, which pytest-asyncio's next test would find; and the demo they drive
	# races its own timings with a second browser and server beside it), and the `serial`
	# ones alone after them.
	$(BIN)/pytest -n 2 --dist loadfile -m "not serial" tests
	$(BIN)/pytest e2e
	$(BIN)/pytest -m serial tests

# One short round of dq against its peers (pgqueuer, DBOS: the `bench` extra, not
# pinned by constraints.txt), same run, printing the dq/peer ratios; PostgreSQL and
# Redis must be up. About 2-3 minutes; the full run is tests/bench/run_peers.py.
bench: $(STAMP)
	$(BIN)/python -c "import pgqueuer, dbos" 2>/dev/null || PIP_CONSTRAINT= $(BIN)/pip install -q pgqueuer dbos
	$(BIN)/python tests/bench/run_peers.py --runs 1 --dq-gc tuned --jobs 3000 --step-jobs 500 \
		--pgq-jobs 3000 --start-jobs 200 --dbos-workflows 30

lock:
	./scripts/lock.sh

wheel: $(STAMP)
	$(PIP) wheel -q --no-deps -w dist .

clean:
	rm -rf $(VENV) *.egg-info build dist .mypy_cache .ruff_cache .pytest_cache artifacts
