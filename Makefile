# `make repro`: set up and run the whole pipeline on the embedded benchmark.
# `make test`:  set up and run every test (offline, CPU).
# `make ablation`: the successors' strategies, 3 seeds (ablation/dvc.yaml; about an hour on 2 cores).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# Quiet and offline: no telemetry, no update checks.
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test lint clean ablation

setup: $(STAMP)

# torch comes from pip (it finds the pinned build on this machine's disk; uv would download it),
# everything else from uv, which is much faster than pip's resolver.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[cpu,dev,flows]"
	@rm -f $(VENV)/.installed-*
	@touch $@

repro: setup
	$(BIN)/dvc repro

ablation: setup
	$(BIN)/dvc repro ablation/dvc.yaml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests flows bench
	$(BIN)/ruff format --check src tests flows bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
