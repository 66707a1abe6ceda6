"""Shared fixtures: tiny checkpoints written once per test session (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

from rlhf.models.tiny import make_tiny_checkpoint, tiny_corpus

# Keep test output readable: no progress bars or load reports from transformers.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return tiny_corpus(200, seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, corpus):
    """``tiny_checkpoint(arch, **model_kwargs) -> Path``, cached per argument set."""
    cache: dict[tuple, Path] = {}

    def make(arch: str, **model_kwargs) -> Path:
        key = (arch, tuple(sorted(model_kwargs.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ckpt-{arch}") / "model"
            cache[key] = make_tiny_checkpoint(out, arch, corpus, **model_kwargs)
        return cache[key]

    return make
