# Every target that runs code first makes sure .venv exists and holds the package (see `install`).
# .venv is installed from requirements/dev.lock (exact versions, `make lock` writes it), so a fresh machine gets
# what CI tested; `make test-latest` checks the package's own, wide ranges on the newest releases instead.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements/dev.lock
LATEST_VENV ?= .venv-latest
# extra pytest arguments for test-latest (CI passes -m "not slow")
LATEST_SUITE ?=
LOCK_VENV := .venv-lock

TASK ?= esc50
PRESET ?=
INIT ?=
ESC50_ROOT ?=
OUT ?= outputs
NPROC ?= 1
DATA ?=
CONFIG ?= $(if $(DATA),recipes/configs/pretrain_own_data.yaml,recipes/configs/pretrain_as2m.yaml)
ARGS ?=

.PHONY: help install lock test test-latest demo lint pretrain finetune bench clean realbench

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) pip setuptools
	$(PY) -m pip install --quiet --no-build-isolation -c $(LOCK) -e '.[dev,demo,onnx,parity,sed,xares]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv: eat + dev, demo, onnx, parity extras at the versions in requirements/dev.lock

lock:  ## re-resolve requirements/dev.in in a throwaway venv and write the exact versions to requirements/dev.lock
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip setuptools
	$(LOCK_VENV)/bin/pip install --quiet -r requirements/dev.in
	{ echo "# Exact versions of the development environment (.venv). Written by \`make lock\` from requirements/dev.in"; \
	  echo "# with $$($(LOCK_VENV)/bin/python --version) on $$(uname -sm); used as pip constraints by \`make install\`."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf $(LOCK_VENV)
	@echo "wrote $(LOCK); run make test on a fresh clone before committing it"

test: $(STAMP)  ## run the test suite (CPU, a few minutes)
	$(PY) -m pytest -q

test-latest:  ## the suite in a fresh .venv-latest on the newest releases the ranges allow (no lock, no torchaudio)
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet --upgrade pip setuptools
	$(LATEST_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev,demo,onnx,sed]'
	@$(LATEST_VENV)/bin/python -c 'import numpy, scipy, torch; print(f"test-latest: torch {torch.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}")'
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(LATEST_SUITE)

demo: $(STAMP)  ## synthetic data -> pretrain -> export -> probe -> fine-tune, with a summary
	$(PY) tools/demo.py --out $(OUT)/demo $(ARGS)

lint: $(STAMP)  ## ruff, and the import contracts of pyproject.toml (the layers of docs/design.md) with their tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q tests/test_layers.py

PRETRAIN_ARGS = --config $(CONFIG) $(if $(DATA),--data-dir $(DATA)) $(if $(INIT),model.init=$(INIT)) $(ARGS)

# With DATA the folder is prepared once in one process (manifest, normalisation statistics, clip length),
# then every rank of the run reads the prepared files. --check refuses a bad key or value in one line before
# torchrun starts ranks (whose failure torchrun would report with a traceback of its own).
pretrain: $(STAMP)  ## pretrain: make pretrain [DATA=/my/audio] [INIT=checkpoint] [NPROC=4] [CONFIG=...] [ARGS="key=value ..."]
	$(if $(DATA),$(PY) recipes/pretrain_as2m.py $(PRETRAIN_ARGS) --prepare-only)
	@$(PY) recipes/pretrain_as2m.py $(PRETRAIN_ARGS) --check >/dev/null
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) recipes/pretrain_as2m.py $(PRETRAIN_ARGS)

finetune: $(STAMP)  ## fine-tune: make finetune TASK=esc50 ESC50_ROOT=... INIT=<encoder dir> [PRESET=tiny] [ARGS=...]
	$(PY) recipes/finetune.py --task $(TASK) $(if $(ESC50_ROOT),--esc50-root $(ESC50_ROOT)) $(if $(INIT),--init $(INIT)) $(if $(PRESET),--preset $(PRESET)) --out $(OUT)/finetune_$(TASK) $(ARGS)

realbench: $(STAMP)  ## real-audio benchmark into $(OUT)/realbench (Debian packages: tools/make_real_benchmark.py --packages)
	$(PY) tools/make_real_benchmark.py $(OUT)/realbench $(ARGS)

bench: $(STAMP)  ## CPU/GPU benchmarks (front-end, pretraining step)
	$(PY) tools/bench_frontend.py
	$(PY) tools/bench_pretrain.py --preset $(if $(PRESET),$(PRESET),tiny)

clean:  ## remove generated outputs (keeps .venv)
	rm -rf $(OUT) .pytest_cache .ruff_cache $(LATEST_VENV) $(LOCK_VENV)
