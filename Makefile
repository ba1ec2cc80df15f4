# One-command entry points. Everything lives inside the project directory: the venv, DVC's caches,
# the MLflow database and Prefect's home (see src/advreid/settings.py for the same defaults in Python).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export PREFECT_HOME ?= $(CURDIR)/.prefect
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export DVC_SITE_CACHE_DIR ?= $(CURDIR)/.dvc/tmp/site-cache
export PREFECT_LOGGING_LEVEL ?= WARNING
# Prefect's 20 s default times out on a loaded machine (see advreid.settings.PREFECT_STARTUP_TIMEOUT_SECONDS).
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := False
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg

.PHONY: setup run test lint format bench thesis

setup: $(STAMP)

# pip bundled with Python 3.11 takes forever to resolve this stack: upgrade it first.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

# `advreid check` first: a bad param stops here, before `dvc repro` removes any stage's previous outputs.
run: setup
	$(BIN)/advreid check
	$(BIN)/python flows/pipeline.py
	@$(BIN)/advreid where

test: setup lint
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests flows benchmarks
	$(BIN)/ruff format --check src tests flows benchmarks

format: setup
	$(BIN)/ruff format src tests flows benchmarks
	$(BIN)/ruff check --fix src tests flows benchmarks

bench: setup
	$(BIN)/python -m benchmarks

# Thesis-scale settings (real datasets, GPUs): params.thesis.yaml applied as a DVC experiment.
thesis: setup
	eval "$(BIN)/dvc exp run $$($(BIN)/advreid profile params.thesis.yaml)"
