# The two commands: `make demo` and `make test`. Everything else is set up on the way.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint format bench serve system-deps clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.8
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

## PostgreSQL server binaries and Chromium for the test suite (Debian, as root; a no-op
## when present). Playwright drives Debian's chromium: `playwright install` needs a CDN.
system-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && test -x /usr/bin/chromium || { \
	  echo "installing PostgreSQL server binaries and Chromium (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    postgresql chromium >/dev/null; }

## Generate the demo business into keepers.duckdb, print a summary, serve on :8000.
demo: $(STAMP)
	$(BIN)/keepers demo

## The whole suite against real services (PostgreSQL, HTTP clients), plus lint.
test: $(STAMP) system-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP) system-deps
	$(BIN)/python bench/ingest.py --database both --json

serve: $(STAMP)
	$(BIN)/keepers serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
