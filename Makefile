# `make demo` and `make test` set everything up on a fresh machine (a .venv with the project
# installed), then run. Both are idempotent: the install is redone only when pyproject.toml or
# constraints.txt changes. constraints.txt holds the exact versions the suite and the demo were
# tested with (pyproject.toml keeps ranges for library users); `make lock` rewrites it from .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-fast docs clean help lock

help:
	@echo "make demo       run the built-in demo end to end (rlhf quickstart)"
	@echo "make test       run the whole test suite (as CI does)"
	@echo "make test-fast  skip the slow end-to-end tests"
	@echo "make docs       regenerate docs/configuration.md from the config classes"
	@echo "make lock       rewrite constraints.txt (tested versions) from .venv"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "pip==26.3"
	# torch first, pinned: any other torch requirement pulls gigabytes of CUDA wheels.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

lock: $(STAMP)
	# Every installed distribution at its exact version, the project itself left out.
	{ echo "# Tested versions: make demo, make test and CI install with -c constraints.txt."; \
	  echo "# Regenerate with 'make lock' after changing dependencies; pyproject.toml keeps ranges."; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > constraints.txt

demo: $(STAMP)
	$(BIN)/rlhf quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

docs: $(STAMP)
	$(BIN)/python -m rlhf.docs

clean:
	rm -rf runs .pytest_cache
