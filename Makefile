# convzoo: make setup | run | test | bench | lint
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
MODEL  ?= resnet18
BUDGET ?= 5m
OUT    ?= runs/$(MODEL)

.PHONY: setup run test test-fast bench lint data

setup: $(VENV)/.installed

# On a machine without an NVIDIA GPU, PyTorch's CPU build is asked for explicitly:
# from a local wheel where one is on pip's find-links, else from PyTorch's CPU index.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install '$(TORCH)'; \
	else \
	  $(PIP) install --no-deps --no-index '$(TORCH)' 2>/dev/null \
	  || $(PIP) install --no-deps '$(TORCH)' --index-url https://download.pytorch.org/whl/cpu; \
	  $(PIP) install '$(TORCH)'; \
	fi
	$(PIP) install -e '.[dev]'
	touch $@

# Fashion-MNIST: already here, or Debian's package, or the official download.
data: setup
	$(VENV)/bin/convzoo data where fashion-mnist >/dev/null 2>&1 \
	|| (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	    && apt-get install -y dataset-fashion-mnist >/dev/null 2>&1) \
	|| $(VENV)/bin/convzoo data fetch fashion-mnist

run: data
	$(VENV)/bin/convzoo train $(MODEL) --dataset fashion-mnist --time-budget $(BUDGET) --out $(OUT)

test: setup
	$(PY) -m pytest

# the everyday lane: every test that trains is marked slow
test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: data
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/time_to_accuracy.py --all

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
