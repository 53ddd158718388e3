# Development entry points: `make run` for the demo server, `make test` for the whole suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Reinstalls only when the dependencies change; the project itself is installed editable.
STAMP := $(VENV)/.installed
# The port `make run` serves on.
PORT ?= 8000

.PHONY: install run test test-postgres test-sqlite lint bench

install: $(STAMP)

# torch goes first, pinned: here and in CI that is the CPU build, and once it is installed the `train` extra's
# torch>=2.6 adds nothing (unpinned, pip would fetch the newest CUDA build, several GB). GPU machines install the
# CUDA build of torch 2.13.0 before this, which the pin then keeps (README, Deploying).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-input torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-input -e '.[dev,train]'
	touch $@

# The server and, beside it, one Celery worker for both queues with beat inside (exports, training rounds, lease
# expiry); the worker stops with the server. `PORT=8001 make run` serves on another port.
# PYTHONUNBUFFERED: seed_demo's progress lines show as they come, not all at once when it ends.
run: install
	mkdir -p var
	@echo "== Applying migrations to the database (var/arbiter.sqlite3 unless DATABASE_URL is set)"
	$(BIN)/python manage.py migrate
	@echo "== Seeding the demo project (the first run also builds the demo model: about a minute on a CPU)"
	PYTHONUNBUFFERED=1 $(BIN)/python manage.py seed_demo --port $(PORT)
	@echo "== Starting a Celery worker and the server on http://127.0.0.1:$(PORT)/ (Ctrl-C stops both)"
	$(BIN)/celery -A arbiter worker -Q default,gpu --pool solo --beat --loglevel INFO \
		--schedule var/celerybeat-schedule > var/worker.log 2>&1 & \
	trap 'kill $$!' EXIT INT TERM; \
	echo "Celery worker started (log: var/worker.log)"; \
	$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

# The suite runs on a throwaway PostgreSQL (everything runs), then the tests that use the database run again on the
# embedded SQLite default (those marked `postgres` skip with a reason; the training engine, settings and docker-file
# tests touch no database and ran once already); `make -k test` runs the second even when the first fails.
# pytest exits 5 when it collects nothing, which fails the target like any other failure.
test: lint test-postgres test-sqlite

test-postgres: install
	tests/postgres.sh $(BIN)/python -m pytest

test-sqlite: install
	env -u DATABASE_URL $(BIN)/python -m pytest --database-tests-only

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/import_bench.py
