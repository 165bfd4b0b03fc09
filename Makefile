# Two commands matter: `make demo` and `make test`. Both create .venv if missing.
# TORCH is the torch requirement; GPU users override it, e.g. `make demo TORCH=torch`.
# TORCH_INDEX holds extra pip arguments for installing torch only. On a machine without a GPU, PyPI's torch is the
# multi-GB CUDA build; PyTorch's CPU wheel index gives the small CPU build:
#   make setup TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
# Empty by default, so pip's own configuration (a local wheel folder, a mirror) decides.
PYTHON ?= python3
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps 'pycocoevalcap>=1.2'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/vlalign demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
