# The two commands a user needs (README): `make reproduce` and `make test`.
# Both create the environment in .venv/ when missing, install ltcore and its data, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ltcore-installed
PROFILE ?= quick

# torch/torchvision builds that install on this kind of CPU machine (local wheels); override for others,
# e.g. `make test TORCH_SPEC="torch torchvision"` on a machine with a normal PyPI/CUDA index.
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: setup data reproduce notebooks test test-fast test-notebooks test-slow smoke bench lab clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[notebooks,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ltcore)" >/dev/null
	@touch $(STAMP)

data: $(STAMP)
	$(PY) -m ltcore data fetch fashion_mnist

reproduce: setup
	$(PY) -m ltcore reproduce --profile $(PROFILE)

# Regenerate the committed course notebooks (outputs included), figures/ and results/.
notebooks: setup
	$(PY) -m ltcore reproduce --profile quick --inplace
	$(PY) -m ltcore readme

# Two pytest workers; each notebook stays on one worker (--dist loadfile) with a single-threaded kernel.
PYTEST := $(PY) -m pytest -n 2 --dist loadfile

test: setup
	$(PYTEST) tests notebooks
	$(MAKE) --no-print-directory smoke

# Every notebook's full-profile path on fixture datasets of the real formats (README, "What the smoke run proves").
smoke: setup
	rm -rf runs/smoke
	TQDM_DISABLE=1 $(PY) -m ltcore reproduce --profile smoke

test-fast: setup
	$(PYTEST) tests

test-notebooks: setup
	$(PYTEST) notebooks

test-slow: setup
	$(PYTEST) tests -m slow

bench: setup
	$(PY) -m ltcore bench memory
	$(PY) -m ltcore bench index
	$(PY) -m ltcore bench rac
	$(PY) -m ltcore bench data

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf runs/ .cache/ltcore .pytest_cache
