# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch pinned on the command line so pip takes the local CPU wheel (see ECOSYSTEM.md)
TORCH   ?= torch==2.13.0
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE ?= 1
export RAY_AUTH_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run test lint format venv clean

$(BIN)/weightgen: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]" "$(TORCH)"
	touch $@

venv: $(BIN)/weightgen

run: venv
	$(BIN)/weightgen demo --out runs/demo

test: venv
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -ra tests

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf runs .pytest_cache
