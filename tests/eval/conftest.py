"""Fixtures of the evaluation tests: a second tiny policy sharing tiny_llama's tokenizer, and
reward functions importable as ``eval_rewards:<name>``."""

from __future__ import annotations

from pathlib import Path

import pytest

REWARDS_MODULE = '''
def count_a(prompts, completions):
    return [float(c.count("a")) for c in completions]

def length(prompts, completions):
    return [float(len(c)) for c in completions]
'''


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory, tiny_llama) -> Path:
    """Same architecture and tokenizer as tiny_llama, other random weights (seed 1)."""
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_tokenizer, save_model
    from rlhf.models.tiny import build_tiny_model

    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama)))
    model = build_tiny_model("llama", len(tok), hidden_size=64, num_layers=2, num_heads=4,
                             max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, seed=1)
    return save_model(model, tok, tmp_path_factory.mktemp("tiny-ref") / "llama")


@pytest.fixture
def eval_rewards(tmp_path, monkeypatch) -> str:
    (tmp_path / "eval_rewards.py").write_text(REWARDS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "eval_rewards"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run much faster on one thread than on two contended ones (a 2-core machine
    shared with other jobs: ~2 ms instead of ~200 ms per forward pass measured); restored after."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
