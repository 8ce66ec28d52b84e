# chat-service: `make run` serves on the embedded defaults; `make test` runs
# the whole suite. Both install what they need first (into .venv and
# node_modules), so a fresh clone needs nothing else.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed
# What the Envoy edge transcodes with (deploy/envoy/): built, never committed.
DESCRIPTOR := build/chat_service.pb

.PHONY: all install run run-edge test test-embedded test-mongo check lint typecheck buf-lint buf-breaking generate check-generated bench fmt clean

all: check test

install: $(STAMP_PY) $(STAMP_NODE)

$(STAMP_PY): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(STAMP_PY)
	$(PY) -m chat_service

# The service as `make run` has it, behind the Envoy edge (HTTP/JSON,
# webhooks, SSE) on EDGE_PORT (8080); see tools/run-edge.
run-edge: $(STAMP_PY)
	tools/run-edge

$(DESCRIPTOR): $(STAMP_PY) tools/render_envoy.py $(shell find proto third_party -name '*.proto')
	$(PY) tools/render_envoy.py descriptor $@

# Two passes, run side by side (each prints when it ends): the whole suite
# on the embedded store, and the end-to-end tests whose outcome depends on
# the store again on MongoDB. Each starts its own servers on free ports.
test: $(STAMP_PY)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-embedded test-mongo

# The tests start `python -m chat_service` dozens of times: its bytecode is
# compiled once and kept under build/ (whatever PYTHONDONTWRITEBYTECODE says)
# rather than at every start.
TEST_ENV := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/build/pycache
# The first pass spends much of its time waiting (on timeouts, outages,
# starting processes): two workers (pytest-xdist, a module per worker at a
# time) fill each other's waits, beside the MongoDB pass.
TEST_WORKERS ?= 2

test-embedded: $(STAMP_PY)
	$(TEST_ENV) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-mongo: $(STAMP_PY)
	$(TEST_ENV) CHAT_TEST_STORE=mongo $(PY) -m pytest tests/e2e -m "not heavy_load and not store_independent" $(PYTEST_ARGS)

check: lint typecheck buf-lint buf-breaking check-generated

lint: $(STAMP_PY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP_PY)
	$(VENV)/bin/mypy

buf-lint: $(STAMP_NODE)
	$(BUF) lint
	$(BUF) format --diff --exit-code proto

buf-breaking: $(STAMP_NODE)
	tools/buf-breaking

# Regenerate generated/ from proto/ (and refresh the vendored googleapis
# protos from the installed wheel).
generate: $(STAMP_PY) $(STAMP_NODE)
	$(PY) tools/vendor_googleapis.py --write
	$(BUF) generate

# Fails when generated/ or third_party/ differ from what the protos and
# wheels produce now.
check-generated: $(STAMP_PY) $(STAMP_NODE)
	$(PY) tools/vendor_googleapis.py --check
	tools/check-generated

bench: $(STAMP_PY)
	$(PY) -m bench $(BENCH_ARGS)

fmt: $(STAMP_PY) $(STAMP_NODE)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	$(BUF) format -w proto

clean:
	rm -rf $(VENV) node_modules build .mypy_cache .ruff_cache .pytest_cache
