"""Truncated / masked importance sampling for rollout-engine mismatch
(rlhf.losses.policy.truncated_importance_weights), against values derived by hand."""

import math

import pytest
import torch

from rlhf.losses.policy import ppo_clip_loss, truncated_importance_weights


def _rows():
    """Row 0: three tokens with π_old = (0.5, 0.2, 0.9) and π_sampler = (0.25, 0.4, 0.3), so
    ρ = (2, 0.5, 3) and the sequence ratio is 2 · 0.5 · 3 = 3. Row 1: one token with ρ = 1
    (equal probabilities 0.7) then padding holding garbage that must not leak in."""
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.7, 1e-30, 1e-30]]))
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.3], [0.7, 1.0, 1.0]]))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    return old, sampler, mask


def test_token_truncate_and_mask_by_hand():
    old, sampler, mask = _rows()
    w, m = truncated_importance_weights(old, sampler, mask, cap=2.5, level="token", mode="truncate")
    # min(ρ, 2.5) per token; 0 on padding.
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 2.5], [1.0, 0.0, 0.0]]), rtol=1e-6, atol=1e-6)
    assert m["capped_fraction"].item() == pytest.approx(1 / 4)  # one of four real tokens has ρ > 2.5
    w, m = truncated_importance_weights(old, sampler, mask, cap=2.5, level="token", mode="mask")
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 0.0], [1.0, 0.0, 0.0]]), rtol=1e-6, atol=1e-6)
    # k3 of KL(π_sampler‖π_old) per token is ρ - log ρ - 1 (d = log ρ): mean over the 4 real tokens.
    k3 = [r - math.log(r) - 1 for r in (2.0, 0.5, 3.0, 1.0)]
    assert m["mismatch_kl"].item() == pytest.approx(sum(k3) / 4, rel=1e-5)
    # k1: mean of log π_sampler - log π_old = -log ρ.
    assert m["mismatch_k1"].item() == pytest.approx(-(math.log(2) + math.log(0.5) + math.log(3)) / 4, rel=1e-5)


def test_sequence_level_by_hand():
    old, sampler, mask = _rows()
    w, m = truncated_importance_weights(old, sampler, mask, cap=2.5, level="sequence", mode="truncate")
    # Row 0's sequence ratio 3 is cut to 2.5 on each of its tokens; row 1's is 1.
    torch.testing.assert_close(w, torch.tensor([[2.5, 2.5, 2.5], [1.0, 0.0, 0.0]]), rtol=1e-6, atol=1e-6)
    assert m["capped_fraction"].item() == pytest.approx(1 / 2)  # one of two completions
    w, _ = truncated_importance_weights(old, sampler, mask, cap=4.0, level="sequence", mode="mask")
    torch.testing.assert_close(w, torch.tensor([[3.0, 3.0, 3.0], [1.0, 0.0, 0.0]]), rtol=1e-6, atol=1e-6)
    w, _ = truncated_importance_weights(old, sampler, mask, cap=2.5, level="sequence", mode="mask")
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), rtol=1e-6, atol=1e-6)


def test_equal_engines_give_unit_weights_and_zero_mismatch():
    """A property: when the sampler's probabilities are the trainer's, every weight is 1 and the
    mismatch KL is exactly 0, whatever the cap."""
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 6, generator=g) * 5
    mask = (torch.rand(4, 6, generator=g) > 0.3).long()
    for level in ("token", "sequence"):
        w, m = truncated_importance_weights(lp, lp.clone(), mask, cap=1.0, level=level, mode="mask")
        torch.testing.assert_close(w, mask.float())
        assert m["mismatch_kl"].item() == 0.0 and m["capped_fraction"].item() == 0.0


def test_long_sequence_ratio_does_not_overflow():
    """Σ log ρ = 200 · 1 = 200: exp(200) is inf in float32, the log-space cap is not."""
    old, sampler = torch.zeros(1, 200), -torch.ones(1, 200)
    w, m = truncated_importance_weights(old, sampler, torch.ones(1, 200), cap=2.0, level="sequence")
    assert torch.isfinite(w).all() and torch.allclose(w, torch.full_like(w, 2.0))
    assert m["capped_fraction"].item() == 1.0


def test_weights_scale_the_clipped_surrogate():
    """At ratio 1 (logps = old_logps) the per-token loss is -A_t; with weights it is -w_t A_t, so
    token_mean over the two tokens is -(2·1 + 0.5·(-3)) / 2 = -0.25."""
    logps = torch.log(torch.tensor([[0.5, 0.2]])).requires_grad_()
    loss, _ = ppo_clip_loss(logps, logps.detach(), torch.tensor([[1.0, -3.0]]), torch.ones(1, 2),
                            is_weights=torch.tensor([[2.0, 0.5]]))
    assert loss.item() == pytest.approx(-0.25)


def test_rejects_bad_arguments():
    old, sampler, mask = _rows()
    with pytest.raises(ValueError, match="cap"):
        truncated_importance_weights(old, sampler, mask, cap=0.0)
    with pytest.raises(ValueError, match="level"):
        truncated_importance_weights(old, sampler, mask, level="tokens")
