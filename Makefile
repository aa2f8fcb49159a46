# Quick start: `make demo` runs the gateway with the example app; `make test` runs every check.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench conformance dashboard dashboard-preview image system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

system-deps:
	./scripts/install-system-deps.sh

demo: $(STAMP)
	$(BIN)/python -m examples.demo

lint: $(STAMP)
	$(BIN)/ruff check gateway tests examples bench observability conformance
	$(BIN)/mypy --strict gateway

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest -q

dashboard: $(STAMP)
	$(BIN)/python -m observability.dashboard

dashboard-preview: $(STAMP) system-deps
	$(BIN)/python -m observability.preview

image: $(STAMP) system-deps
	./scripts/build-image.sh localhost/ws-gateway:dev

bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run

# Autobahn|Testsuite on both legs next to a control (docs/conformance.md). Needs root: the first run
# builds a Debian bullseye chroot for wstest (Python 2) under ~/.cache/ws-gateway. Options, e.g.:
# make conformance CONFORMANCE_ARGS="--cases '1.*,7.*'"
conformance: $(STAMP)
	HOST_PYTHON=$(BIN)/python ./conformance/setup_autobahn.sh
	$(BIN)/python -m conformance.run $(CONFORMANCE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
