# pgward — make build | run | test | bench | lint
# `make run` and `make test` work on a fresh machine: they install what they need.

VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
STATE_DIR   ?= .state/demo
PYTEST_ARGS ?=

.PHONY: build run test test-python test-oidc-deps test-rust bench lint system-deps clean

system-deps:
	@bash scripts/system-deps.sh

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The Python package with the Rust extension built by maturin (release profile), editable.
build: system-deps $(PY)
	$(PIP) install -q -e '.[test]'

run: build
	$(VENV)/bin/pgward demo --state-dir $(STATE_DIR)

test: build test-rust test-python

test-rust:
	cargo test -p pgward-dataplane --quiet

# The real OIDC provider the identity tests run (panva/oidc-provider, pinned by its package-lock.json).
test-oidc-deps:
	cd tests/oidc/provider && npm ci --no-audit --no-fund --loglevel=error

test-python: test-oidc-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: build
	@bash scripts/system-deps.sh --bench
	$(PY) bench/pgbench_compare.py --demo-json $(STATE_DIR)/demo.json

lint: build
	$(VENV)/bin/ruff check control_plane tests bench
	$(VENV)/bin/mypy control_plane
	cargo fmt --check
	cargo clippy -p pgward-dataplane --tests -- -D warnings

clean:
	rm -rf $(VENV) target .state
