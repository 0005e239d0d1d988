# Everything a fresh machine needs is created here from nothing: a virtualenv in .venv with the
# package and its dev tools. Only Python >= 3.11 and git are required up front.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo test lint typecheck unit docs docs-check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	@command -v git >/dev/null || { echo "git is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,e2e,docs]'
	@touch $(STAMP)

venv: $(STAMP)

## demo: the main job on an embedded default (temporary repo, real daemon, deploy, bad tag, rollback)
demo: venv
	$(BIN)/coordinator demo

## test: lint, type-check, the docs site (strict) and the whole test suite
test: lint typecheck docs-check unit

lint: venv
	$(BIN)/ruff check coordinator tests benchmarks
	$(BIN)/ruff format --check coordinator tests benchmarks

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest $(PYTEST_ARGS)

## docs: build the documentation site (mkdocs.yml, docs/) into site/
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# the site must build with no warning: no broken link or anchor, no page missing from the nav
docs-check: venv
	@d=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir "$$d"; rc=$$?; rm -rf "$$d"; exit $$rc

## bench: the benchmarks; results land in benchmarks/results/
bench: venv
	$(BIN)/python -m pip install -q -e '.[dev,e2e,bench]'
	$(BIN)/python -m benchmarks run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis site
