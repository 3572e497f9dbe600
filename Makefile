# `make test` and `make demo` set up .venv themselves on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-all test-slow demo lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The default suite leaves out the tests marked slow (torchrun launches, INT8 export of every family, multi-epoch
# runs); the slowest that remain are listed so that the budget (6 minutes on 2 cores) stays visible.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=15

test-all: $(STAMP)
	$(PY) -m pytest -q --durations=25

# A short real run: CIFAR-10 from ../shared/data (or ./data), a small AsymmNet, 2 epochs on the CPU.
DEMO_DATA ?= $(if $(wildcard ../shared/data/cifar-10-jpeg-python.tar.gz),cifar10:../shared/data/cifar-10-jpeg-python.tar.gz,cifar10)
DEMO_RUN ?= runs/demo

demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/lightnets train --model asymmnet_small_x0_35_cifar --data $(DEMO_DATA) --epochs 2 --out $(DEMO_RUN)
	$(VENV)/bin/lightnets eval --checkpoint $(DEMO_RUN)/best.pt --data $(DEMO_DATA)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
