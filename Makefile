# Development entry points: `make run` for the demo server, `make test` for the whole suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Reinstalls only when the dependencies change; the project itself is installed editable.
STAMP := $(VENV)/.installed

.PHONY: install run test test-postgres test-sqlite lint bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-input -e '.[dev]'
	touch $@

run: install
	mkdir -p var
	$(BIN)/python manage.py migrate
	$(BIN)/python manage.py seed_demo
	$(BIN)/python manage.py runserver 127.0.0.1:8000

# The suite runs on a throwaway PostgreSQL (everything runs), then on the embedded SQLite default (the tests
# marked `postgres` skip with a reason); `make -k test` runs the second even when the first fails.
# pytest exits 5 when it collects nothing, which fails the target like any other failure.
test: lint test-postgres test-sqlite

test-postgres: install
	tests/postgres.sh $(BIN)/python -m pytest

test-sqlite: install
	env -u DATABASE_URL $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/import_bench.py
