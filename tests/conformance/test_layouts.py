"""Padded and cached layouts (rlhf/models/layouts.py), reward models and critics, on every
conformance architecture plus the mixture-of-experts, hybrid state-space and sliding-window types
of issue 22 (tests/conformance/conftest.py: EXTRA_ARCHS).

* The cached-decoding probe's verdict matches what the sampler really does: π_old from the
  sampler's logits vs a full forward over the same rollout (rlhf.rollout.sample /
  rollout_logps), with no code shared with the probe.
* The padding probe flags a model that leaks through left padding (a synthetic one: none of the
  transformers types here does, measured) and PPO refuses it with one line.
* A reward model and a critic load for every type (several have no ...ForSequenceClassification)
  and score a left-padded batch as each sequence alone.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rlhf.models import layouts

from .conftest import ARCHS, AT_PINNED_TRANSFORMERS, CACHE_MISMATCH, EXTRA_ARCHS

# The sampler's log-probs vs the forward's, fp32, 4 prompts x 6 tokens: measured <= 2e-6 nats where
# the layouts agree, 0.3-9 nats for mamba / falcon_mamba (cache mismatch): 1e-3 splits them.
SAMPLER_GAP = 1e-3


def _prompts(tokenizer, n: int = 4) -> tuple[list[str], list[list[int]]]:
    from rlhf.testbed.instructions import make_examples

    rows = make_examples(n, seed=7)
    texts = [r["prompt"] * (1 + i % 3) for i, r in enumerate(rows)]  # different lengths: left padding
    return texts, [tokenizer(t, add_special_tokens=False)["input_ids"][:40] for t in texts]


@pytest.mark.parametrize("arch", ARCHS + EXTRA_ARCHS)
def test_decoding_probe_agrees_with_the_sampler(arch, conformance_model, conformance_tokenizer):
    from rlhf.rollout import SamplingConfig, rollout_logps, sample

    model = conformance_model(arch)
    texts, ids = _prompts(conformance_tokenizer)
    cfg = SamplingConfig(max_new_tokens=6, num_samples=1, batch_size=4, engine="transformers")
    ro = sample(model, conformance_tokenizer, texts, ids, cfg, generator=torch.Generator().manual_seed(0),
                with_logps=True)
    assert ro.logps is not None
    forward = rollout_logps(model, ro, cfg.temperature, engine="transformers")
    gap = float(((ro.logps - forward).abs() * ro.completion_mask).max())
    verdict = layouts.decoding_unsupported(model)
    assert (verdict is not None) == (gap > SAMPLER_GAP), (gap, verdict)
    if AT_PINNED_TRANSFORMERS:
        assert (verdict is not None) == (arch in CACHE_MISMATCH), (gap, verdict)
    assert layouts.padding_unsupported(model, "left") is None  # measured: 0.0 in float64 for all of them


class _LeakyTrunk(nn.Module):
    """A toy 'state-space' trunk that ignores the attention mask: h_t = sum of embeddings up to t,
    so left padding adds the pad embeddings to every real token, right padding changes nothing."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="leaky", vocab_size=50, pad_token_id=0, _attn_implementation="none")
        self.emb = nn.Embedding(50, 8)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(last_hidden_state=self.emb(input_ids).cumsum(1))


def test_a_model_leaking_through_left_padding_is_caught_and_ppo_refuses_it():
    from rlhf.config import ConfigError

    torch.manual_seed(0)
    leaky = _LeakyTrunk()
    diff = layouts.padding_difference(leaky)
    assert diff["right"] == 0.0 and diff["left"] > 0.01, diff
    assert "left-padded batch and each sequence alone differ" in layouts.padding_unsupported(leaky, "left")
    assert layouts.padding_unsupported(leaky, "right") is None
    with pytest.raises(ConfigError, match=r"model.name_or_path: model_type 'leaky' .* padding leaks .*"
                                          r"cannot be trained with PPO/GRPO here"):
        layouts.check_rollout_layouts(leaky, True)


def test_check_rollout_layouts_keeps_the_sampler_only_where_decoding_agrees(conformance_model, caplog):
    """PPO's hook: llama keeps π_old from the sampler; mamba gets it from a full forward, said once."""
    layouts.clear_cache()
    assert layouts.check_rollout_layouts(conformance_model("llama"), True) is True
    assert layouts.check_rollout_layouts(conformance_model("mamba"), False) is False  # asked for forward
    with caplog.at_level("WARNING", logger="rlhf.models.layouts"):
        assert layouts.check_rollout_layouts(conformance_model("mamba"), True) is False
        assert layouts.check_rollout_layouts(conformance_model("mamba"), True) is False
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("π_old from a full forward, not the sampler"), said
    assert "model_type 'mamba'" in said[0] and "cached decoding and the full forward differ" in said[0]


@pytest.mark.parametrize("arch", EXTRA_ARCHS)
def test_reward_model_and_critic_load_and_score_padded_as_alone(arch, conformance_checkpoint, conformance_model,
                                                                 conformance_tokenizer):
    """rlhf rm's scalar model and PPO's critic (the same loader) for each type: its trunk computes
    the causal LM's hidden states (issue 22 item 7: Falcon-H1's trunk had torch.empty buffers,
    buffer values ~3e26, NaN scores on a padded batch), and the left-padded batch's last-token scores and
    per-token values equal each sequence's alone (fp32: measured <= 2e-6; 1e-5)."""
    from rlhf.data.collate import PromptCollator
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_scalar_model, score_last_token, score_tokens
    from rlhf.models.packing import trunk_of

    tok = conformance_tokenizer
    rm = load_scalar_model(ModelConfig(name_or_path=str(conformance_checkpoint(arch))), tokenizer=tok,
                           for_training=False)
    _, ids = _prompts(tok)
    with torch.no_grad():
        one = torch.tensor([ids[2]])
        want = trunk_of(conformance_model(arch))(input_ids=one, use_cache=False).last_hidden_state
        got = trunk_of(rm)(input_ids=one, use_cache=False).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # the same weights and buffers: equal
    batch = PromptCollator(tok.pad_token_id, "left")([{"prompt_input_ids": x} for x in ids])
    with torch.no_grad():
        scores = score_last_token(rm, batch["input_ids"], batch["attention_mask"])
        values = score_tokens(rm, batch["input_ids"], batch["attention_mask"])
        for i, x in enumerate(ids):
            one = torch.tensor([x])
            alone = score_tokens(rm, one, torch.ones_like(one))[0]  # (n,)
            assert math.isfinite(float(scores[i]))
            torch.testing.assert_close(scores[i], alone[-1], atol=1e-5, rtol=0)
            torch.testing.assert_close(values[i, -len(x):], alone, atol=1e-5, rtol=0)
