# Every target that runs code first makes sure .venv exists and holds the package (see `install`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

TASK ?= esc50
PRESET ?=
INIT ?=
ESC50_ROOT ?=
OUT ?= outputs
NPROC ?= 1
CONFIG ?= recipes/configs/pretrain_as2m.yaml
ARGS ?=

.PHONY: help install test demo lint pretrain finetune bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo,onnx]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install eat with its dev, demo and onnx extras

test: $(STAMP)  ## run the test suite (CPU, a few minutes)
	$(PY) -m pytest -q

demo: $(STAMP)  ## synthetic data -> pretrain -> export -> probe -> fine-tune, with a summary
	$(PY) tools/demo.py --out $(OUT)/demo $(ARGS)

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .

pretrain: $(STAMP)  ## pretrain: make pretrain NPROC=4 CONFIG=... ARGS="key=value ..."
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) recipes/pretrain_as2m.py --config $(CONFIG) $(ARGS)

finetune: $(STAMP)  ## fine-tune: make finetune TASK=esc50 ESC50_ROOT=... INIT=<encoder dir> [PRESET=tiny] [ARGS=...]
	$(PY) recipes/finetune.py --task $(TASK) $(if $(ESC50_ROOT),--esc50-root $(ESC50_ROOT)) $(if $(INIT),--init $(INIT)) $(if $(PRESET),--preset $(PRESET)) --out $(OUT)/finetune_$(TASK) $(ARGS)

bench: $(STAMP)  ## CPU/GPU benchmarks (front-end, pretraining step)
	$(PY) tools/bench_frontend.py
	$(PY) tools/bench_pretrain.py --preset $(if $(PRESET),$(PRESET),tiny)

clean:  ## remove generated outputs (keeps .venv)
	rm -rf $(OUT) .pytest_cache .ruff_cache
