# Quick start: `make demo` runs the gateway with the example app; `make test` runs every check.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench dashboard dashboard-preview image system-deps clean

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
	$(BIN)/ruff check gateway tests examples bench observability
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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
