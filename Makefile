# Every target sets up what it needs: a virtualenv in .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/ezthrottle serve $(ARGS)

# Lint first (ruff, then the type checker; [tool.mypy] in pyproject.toml says what it checks), then every test.
test: lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	@command -v h2load >/dev/null && command -v wrk >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq nghttp2-client wrk)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .ezthrottle .pytest_cache .mypy_cache
