# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# The venv is a function of requirements.lock: the exact versions that passed `make test`.
# `make lock` re-resolves from pyproject.toml alone, runs the tests on that and rewrites the lock.
SHELL   := /bin/bash
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
LOCK    := requirements.lock
# torch pinned on the command line so pip takes the local CPU wheel (see docs/design.md)
TORCH   ?= torch==2.13.0
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE ?= 1
export RAY_AUTH_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false
# nothing from the user's site-packages or PYTHONPATH leaks into the venv's Python
export PYTHONNOUSERSITE := 1
unexport PYTHONPATH

.PHONY: run test lint format venv lock clean

# A changed lock or pyproject rebuilds the venv from nothing; the install must then equal the lock
$(BIN)/weightgen: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) -e ".[test]" "$(TORCH)"
	@$(BIN)/pip freeze --all --exclude-editable | diff -u <(grep -v '^#' $(LOCK)) - \
	  || { echo "make: the venv differs from $(LOCK) (a new dependency?): run 'make lock'" >&2; exit 1; }
	touch $@

venv: $(BIN)/weightgen

run: venv
	$(BIN)/weightgen demo --config demo --out runs/demo

test: venv
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -ra --durations=25 tests

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# Move to the newest releases pyproject.toml admits: a fresh venv without the lock, the whole test
# suite on it, then its exact versions become the lock (the next `make` rebuilds .venv from it).
lock:
	rm -rf .venv-lock
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q -e ".[test]" "$(TORCH)"
	TRITON_INTERPRET=1 .venv-lock/bin/python -m pytest -q -ra tests
	{ echo "# Exact versions that passed 'make test' on $$(date -u +%F) (Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())')). Written by 'make lock'."; \
	  .venv-lock/bin/pip freeze --all --exclude-editable; } > $(LOCK)
	rm -rf .venv-lock

clean:
	rm -rf runs .pytest_cache
