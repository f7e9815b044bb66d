# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install CPU torch 2.13.0 first (a plain `torch` would pull CUDA wheels).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: install demo test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/reranker demo $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

# Lint and types (run by .ci/run before the tests): ruff's rules and format, mypy on the packages.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
