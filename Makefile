# `make demo` and `make test` set everything up on a fresh machine (a .venv with the project
# installed), then run. Both are idempotent: the install is redone only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint docs clean help

help:
	@echo "make demo       run the built-in demo end to end (rlhf quickstart)"
	@echo "make test       run the whole test suite (as CI does)"
	@echo "make test-fast  skip the slow end-to-end tests"
	@echo "make lint       ruff (lint, import order) on rlhf/ tests/ bench/, mypy on rlhf/ (as CI does)"
	@echo "make docs       regenerate docs/configuration.md from the config classes"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: any other torch requirement pulls gigabytes of CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The versions are pinned in pyproject.toml's dev extra; .pre-commit-config.yaml runs the same
# commands from the same environment, so there is one source of versions.
lint: $(STAMP)
	$(BIN)/ruff check rlhf tests bench
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/python -m rlhf.docs

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
