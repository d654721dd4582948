# The README's two commands: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
WORKERS ?= 1
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install assets run test bench lint schema secantus-rs

# The pages' browser files (GraphiQL, its explorer, React): `npm ci` of assets/package-lock.json
# (pinned versions, integrity hashes) into a folder outside the tracked files; the service
# reads BRANCHPAY_ASSETS_DIR. Without npm, /graphql says how to install them.
BRANCHPAY_ASSETS_DIR ?= .data/assets
export BRANCHPAY_ASSETS_DIR
ASSETS_STAMP := $(BRANCHPAY_ASSETS_DIR)/.installed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,otel,test,dev]"
	touch $(STAMP)

$(ASSETS_STAMP): assets/package.json assets/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		mkdir -p $(BRANCHPAY_ASSETS_DIR) && \
		cp assets/package.json assets/package-lock.json $(BRANCHPAY_ASSETS_DIR)/ && \
		{ npm ci --prefix $(BRANCHPAY_ASSETS_DIR) --ignore-scripts --no-audit --no-fund --loglevel=error && \
		touch $@ || echo "npm ci failed: GraphiQL's files are not installed; /graphql says how to get them"; }; \
	else \
		echo "npm not found: GraphiQL's files are not installed (install Node.js and npm, then make assets)"; \
	fi

assets: $(ASSETS_STAMP)

install: $(STAMP) $(ASSETS_STAMP)

# WORKERS=3 make run: three API processes on one store and one set of simulators.
# The demo's simulators publish today's bill so far (not only D+1), so today's payments reconcile.
run: install
	BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY=$${BRANCHPAY_SIMULATOR_BILLS_CURRENT_DAY:-1} \
		$(BIN)/branchpay serve --demo --port $(PORT) --workers $(WORKERS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Load the synthetic order sets (reused once loaded), drive the API over loopback,
# print the table and write bench/results/<timestamp>.json. Options: BENCH_ARGS,
# e.g. BENCH_ARGS="--orders 1000000 --duration 30 --concurrency 64" (see docs/performance.md).
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# SecantusDB's Rust server, for BENCH_ARGS="--store-server $(SECANTUS_RS)". Built once
# (about 10 minutes) with the toolchain it is tested with; kept while the binary exists.
SECANTUS_RS_VERSION := 0.5.3-beta.196
SECANTUS_RS_TOOLCHAIN := 1.99.1
TOOLS := .data/tools
SECANTUS_RS := $(TOOLS)/bin/secantusd-rs

secantus-rs: $(SECANTUS_RS)

$(SECANTUS_RS):
	rustup toolchain install $(SECANTUS_RS_TOOLCHAIN) --profile minimal
	cargo +$(SECANTUS_RS_TOOLCHAIN) install secantus-mdb --version $(SECANTUS_RS_VERSION) --root $(TOOLS)

# ruff, mypy (strict) and the layers contract of pyproject.toml (import-linter).
lint: install
	$(BIN)/ruff check api providers tests bench
	$(BIN)/mypy api providers bench
	$(BIN)/lint-imports

schema: install
	$(BIN)/branchpay schema export --output schema.graphql
