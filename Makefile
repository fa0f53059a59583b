# Two entry points: `make dev` and `make test`. Both work on a fresh clone
# with only Python >= 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DB     ?= .connect-dev.db

.PHONY: dev test lint typecheck unit floor install install-test proto bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## make dev: start `connect dev` (API :8288, gateway :8289) and the example worker.
dev: install
	@echo "connect dev on http://127.0.0.1:8288 (gateway ws://127.0.0.1:8289); Ctrl-C stops both"
	@# Ctrl-C reaches both from the terminal; a TERM to make is passed on once. Then wait
	@# for both to drain and stop (a second signal would make the worker quit at once).
	@trap 'wait' INT; trap 'kill $$(jobs -p) 2>/dev/null; wait' TERM; \
	$(BIN)/connect dev --db $(DB) & \
	$(BIN)/connect worker examples.hello:client & \
	wait

## make test: lint, type-check and run the whole suite.
test: install-test lint typecheck unit

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-test
	$(BIN)/mypy

## Test processes at once (`make test TEST_WORKERS=1` runs the suite in one); each module's
## tests stay in one process, in order, sharing its module fixtures. Tests marked `serial`
## (latency figures) run afterwards, alone.
TEST_WORKERS ?= 2
unit: install-test
	$(BIN)/pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile -m 'not serial'
	$(BIN)/pytest -q --durations=5 -m serial

## make floor: the declared minimum websockets, pydantic and uvicorn, on a focused part of the suite
## (`make test` runs it too, as tests/test_dependency_floor.py).
floor: install-test
	$(BIN)/pytest -q tests/test_dependency_floor.py

## make fuzz: long property runs of random and mutated frames and HTTP bodies.
fuzz: install-test
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-20000} $(BIN)/pytest -q -p no:cacheprovider tests/protocol tests/api

proto: install-test
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. protocol/connect.proto

## make bench: baselines (Celery, DBOS Transact) and our scenarios side by side (BENCH_ARGS=--quick for a short run).
bench: install-test
	$(BIN)/python -m pip install -q -e '.[bench,test]'
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } \
		|| echo "note: redis-server could not be installed; the Celery baseline will report an error"
	@# The PostgreSQL scenario (ours beside DBOS Transact) starts a throwaway cluster from Debian's package.
	@{ ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1; } \
		|| { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } \
		|| echo "note: postgresql could not be installed; the durable_pg scenario will report an error"
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(DB) $(DB)-wal $(DB)-shm
