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

.PHONY: setup demo test bench bench-setup clean

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

# The benchmarks compare against torchattacks, a bench-only extra installed without its declared dependencies
# (its torchvision pin would replace this torch); it imports scipy. Without it those rows are skipped.
bench-setup: setup
	$(BIN)/python -m pip install --quiet --no-deps 'torchattacks>=3.5' 'scipy>=1.10'

BENCH_ARGS ?=
bench: bench-setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
