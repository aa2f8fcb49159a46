# Quick start: `make unit` runs the unit tests in seconds (no root, no servers); `make demo` runs the gateway
# with the example app; `make test` runs every check.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Node.js clients the tests drive (tests/node: the `ws` package, pinned by its package-lock.json).
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: demo unit test lint bench storm compression conformance dashboard dashboard-preview image system-deps clean fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json | system-deps
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

system-deps:
	./scripts/install-system-deps.sh

demo: $(STAMP)
	$(BIN)/python -m examples.demo

lint: $(STAMP)
	$(BIN)/ruff check gateway tests examples bench observability conformance fuzz clients
	$(BIN)/mypy --strict gateway

# The unit tests alone, on virtual time (tests/virtual_time.py): the first thing to run after a change.
unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test: $(STAMP) system-deps $(NODE_STAMP) lint
	$(BIN)/python -m pytest -q

dashboard: $(STAMP)
	$(BIN)/python -m observability.dashboard

dashboard-preview: $(STAMP) system-deps
	$(BIN)/python -m observability.preview

image: $(STAMP) system-deps
	./scripts/build-image.sh localhost/ws-gateway:dev

bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run

# Reconnect storm (bench/storm.py): 5,000 sessions drained from one relay to another, ws-gateway next
# to NGINX. Options, e.g.: make storm STORM_ARGS="--sessions 10000 --jitter reconnecting-websocket"
storm: $(STAMP) system-deps
	$(BIN)/python -m bench.storm $(STORM_ARGS)

# permessage-deflate measurements (bench/compression.py): client-leg wire bytes direct, through NGINX and
# through the gateway, and what zlib costs a side that compresses (issue 14's design choice).
compression: $(STAMP) system-deps
	$(BIN)/python -m bench.compression

# Autobahn|Testsuite on both legs next to a control (docs/conformance.md). Needs root: the first run
# builds a Debian bullseye chroot for wstest (Python 2) under ~/.cache/ws-gateway. permessage-deflate is
# negotiated on the client-facing leg; by default 60 of the 216 compression cases (12.x, 13.x) run, about
# 2 minutes in all; --compression-cases runs all 216 (about 16 more minutes). Options, e.g.:
# make conformance CONFORMANCE_ARGS="--cases '1.*,7.*'"
# make conformance CONFORMANCE_ARGS="--cases '12.*,13.*' --legs client --compression-cases"
conformance: $(STAMP)
	HOST_PYTHON=$(BIN)/python ./conformance/setup_autobahn.sh
	$(BIN)/python -m conformance.run $(CONFORMANCE_ARGS)

# Coverage-guided fuzzing with atheris (libFuzzer): each target in fuzz/ for FUZZ_SECONDS, from the seeds in
# fuzz/corpus/<target>/. atheris is the optional `fuzz` extra, installed here only, so `make test` never needs it.
# New corpus entries and crashes (with the input that crashed) go to .fuzz-out/ (gitignored). Replay a crash:
# $(BIN)/python fuzz/fuzz_scanner.py .fuzz-out/crashes/scanner-crash-...
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= scanner handshake
fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install -q -e '.[fuzz]'
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p .fuzz-out/corpus/$$target .fuzz-out/crashes && \
		echo "fuzz_$$target: $(FUZZ_SECONDS)s" && \
		$(BIN)/python fuzz/fuzz_$$target.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=.fuzz-out/crashes/$$target- .fuzz-out/corpus/$$target fuzz/corpus/$$target \
			|| exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
