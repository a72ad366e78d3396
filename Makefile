# Every target creates the environment it needs; nothing is installed by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv test lint types pytest docs demo bench clean wrk

help:
	@echo "make demo   run the FastAPI example gateway with local keys and in-memory limits"
	@echo "make test   lint, type-check, run the tests and build the docs"
	@echo "make bench  run the benchmark harness"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy --strict over src, tests, examples and benchmarks; tests/typing/ is the public API as
# Litestar and Quart users type it.
types: $(STAMP)
	$(BIN)/mypy

# The benchmark smoke tests drive wrk (Debian's package wrk): installed when missing and we are
# root, otherwise the tests that need it say how to get it.
wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq wrk); } \
	  || echo "note: wrk is not installed (apt-get install wrk, as root)"

pytest: $(STAMP) wrk
	$(BIN)/pytest

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir .site

test: lint types pytest docs

demo: $(STAMP)
	$(BIN)/python -m examples.fastapi

# wrk is the HTTP load generator; without it the harness falls back to its Python one and says so.
bench: $(STAMP) wrk
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .site .mypy_cache .pytest_cache .ruff_cache
