# twat-cache developer tasks. Only `python3` is needed: the first target run builds .venv.
#   make demo    a short tour of the decorators (twat_cache/_demo.py, also `twat-cache demo`)
#   make test    the whole test suite (extra pytest options: make test PYTEST_ARGS="-x -k ttl")
#   make lint    ruff format --check, ruff check, mypy --strict
#   make bench   benchmarks against functools and peer libraries (BENCH_ARGS="--quick");
#                writes docs/assets/bench.json, the chart docs/assets/bench.svg and the
#                tables of docs/performance.md; the Redis workloads start their own
#                redis-server when one is on PATH (apt-get install redis-server) and are
#                skipped, with a note, when not
#   make docs    the documentation site (mkdocs --strict) into site/
#   make stress  the reliability harness: every scenario at full size, a table of figures
#                against targets, and docs/assets/stress.json (STRESS_ARGS="--only crash")
#   make clean   remove .venv, caches and build artefacts

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# What type checkers see of the public API (tests/typing); files named bad_*.py hold calls
# that must fail type checking (tests/test_typing.py checks them), so lint leaves them out.
TYPING_CHECKS := $(filter-out tests/typing/bad_%,$(wildcard tests/typing/*.py))
# Stamps: installing is skipped until pyproject.toml changes (or the venv is removed).
STAMP       := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP  := $(VENV)/.installed-docs

.DEFAULT_GOAL := test
.PHONY: demo test lint bench docs stress clean

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy --strict src
	$(if $(TYPING_CHECKS),$(BIN)/mypy $(TYPING_CHECKS))

bench: $(BENCH_STAMP)
	$(BIN)/python scripts/bench.py --json docs/assets/bench.json --chart docs/assets/bench.svg \
	  --markdown docs/performance.md $(BENCH_ARGS)

stress: $(STAMP)
	$(BIN)/python scripts/stress/run.py --json docs/assets/stress.json --markdown docs/reliability.md $(STRESS_ARGS)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Built only when .venv has no interpreter; an existing venv is reused as it is.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "twat-cache needs Python >= 3.10, $(PYTHON) is " + sys.version.split()[0]'
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "error: $(PYTHON) cannot create a venv (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	@touch $@

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[all,dev,docs]'
	@touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[all,dev,bench]'
	$(BIN)/python -m pip install --quiet --no-deps 'asyncache>=0.3'
	@touch $@

clean:
	rm -rf $(VENV) build dist site .eggs *.egg-info src/*.egg-info \
	  .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage .coverage.* htmlcov
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
