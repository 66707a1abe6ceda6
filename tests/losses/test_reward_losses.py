"""Reward-model losses: Bradley–Terry (margin, ranked-pair weights), centring, ECE — by hand."""

import math

import pytest
import torch

from rlhf.losses.reward import (
    bradley_terry_loss,
    expected_calibration_error,
    ranked_pair_weights,
    reward_centering_loss,
)

CHOSEN = [1.0, 0.5, -0.2, 0.3]
REJECTED = [0.0, 1.0, -0.5, 0.3]
DIFF = [1.0, -0.5, 0.3, 0.0]  # r_c - r_r


def _t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def _nll(x):
    """-log σ(x) = log(1 + e^{-x})."""
    return math.log1p(math.exp(-x))


def test_bradley_terry_by_hand():
    """Plain BT: mean over pairs of log(1 + exp(-(r_c - r_r))); accuracy counts r_c > r_r strictly
    (the tie in pair 4 counts as wrong): 2/4; mean margin (1 - 0.5 + 0.3 + 0)/4 = 0.2."""
    loss, metrics = bradley_terry_loss(_t(CHOSEN), _t(REJECTED))
    assert loss.item() == pytest.approx(sum(_nll(d) for d in DIFF) / 4, abs=1e-12)
    assert metrics["accuracy"].item() == pytest.approx(0.5)
    assert metrics["margin"].item() == pytest.approx(0.2, abs=1e-12)
    assert metrics["chosen_scores"].item() == pytest.approx(sum(CHOSEN) / 4, abs=1e-12)


def test_bradley_terry_gradient():
    """d/dr_c of log(1 + e^{-d}) = -σ(-d), /4 for the mean; d/dr_r is its negative."""
    c, r = _t(CHOSEN, True), _t(REJECTED, True)
    bradley_terry_loss(c, r)[0].backward()
    expected = [-1 / (1 + math.exp(d)) / 4 for d in DIFF]
    assert c.grad.tolist() == pytest.approx(expected, abs=1e-12)
    assert r.grad.tolist() == pytest.approx([-g for g in expected], abs=1e-12)


def test_margin_loss():
    """Llama 2: -log σ(r_c - r_r - m) with m = (0.5, 0, 1, 0.25); metrics ignore the margin."""
    m = [0.5, 0.0, 1.0, 0.25]
    loss, metrics = bradley_terry_loss(_t(CHOSEN), _t(REJECTED), margin=_t(m))
    assert loss.item() == pytest.approx(sum(_nll(d - mm) for d, mm in zip(DIFF, m)) / 4, abs=1e-12)
    assert metrics["margin"].item() == pytest.approx(0.2, abs=1e-12)


def test_large_score_gaps_are_stable():
    """d = -200 gives loss 200 (log σ would give log 0 = -inf); d = +200 gives log(1 + e^-200) ≈ e^-200."""
    loss, _ = bradley_terry_loss(_t([0.0]), _t([200.0]))
    assert loss.item() == pytest.approx(200.0, rel=1e-12)
    loss, _ = bradley_terry_loss(_t([200.0]), _t([0.0]))
    assert loss.item() == pytest.approx(math.exp(-200.0), rel=1e-9)
    loss, _ = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0]))  # float32 too
    assert loss.item() == pytest.approx(200.0, rel=1e-6)


def test_ranked_pair_weights_each_prompt_counts_once():
    """Prompt A ranks K = 3 responses → 3 pairs, prompt B has K = 2 → 1 pair (ids arbitrary ints).
    weights = (1/3, 1/3, 1/3, 1); loss = ½(mean of A's three pair losses + B's pair loss)."""
    ids = torch.tensor([7, 7, 7, 2])
    w = ranked_pair_weights(ids)
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    loss, metrics = bradley_terry_loss(_t(CHOSEN), _t(REJECTED), weights=w)
    per = [_nll(d) for d in DIFF]
    assert loss.item() == pytest.approx(0.5 * (sum(per[:3]) / 3 + per[3]), abs=1e-7)
    # accuracy with the same weighting: A has 2 of 3 right, B's tie is wrong → ½(2/3 + 0)
    assert metrics["accuracy"].item() == pytest.approx(1 / 3, abs=1e-7)
    # Interleaved ids work too.
    assert ranked_pair_weights(torch.tensor([0, 1, 0, 1, 0])).tolist() == pytest.approx([1 / 3, 0.5, 1 / 3, 0.5, 1 / 3])


def test_accumulation_with_global_denominator():
    """Two micro-batches, each divided by the global Σw, sum to the full-batch weighted mean."""
    ids = torch.tensor([0, 0, 0, 1])
    w = ranked_pair_weights(ids)
    full, _ = bradley_terry_loss(_t(CHOSEN), _t(REJECTED), weights=w)
    denom = w.sum()
    parts = [bradley_terry_loss(_t(CHOSEN[s]), _t(REJECTED[s]), weights=w[s], denominator=denom)[0]
             for s in (slice(0, 1), slice(1, 4))]
    assert sum(parts).item() == pytest.approx(full.item(), abs=1e-7)


def test_reward_centering():
    """coef · mean((r_c + r_r)²) = 0.01 · (1 + 2.25 + 0.49 + 0.36)/4."""
    out = reward_centering_loss(_t(CHOSEN), _t(REJECTED), coef=0.01)
    assert out.item() == pytest.approx(0.01 * (1.0 + 2.25 + 0.49 + 0.36) / 4, abs=1e-12)


def test_expected_calibration_error_by_hand():
    """10 equal-width bins.
    p = 0.05 (label 0) → bin 0: n=1, acc 0,   conf 0.05   → 1·0.05
    p = 0.15, 0.12 (1, 0) → bin 1: n=2, acc 0.5, conf 0.135 → 2·0.365
    p = 0.55 (0) → bin 5: n=1, acc 0, conf 0.55 → 0.55
    p = 0.95, 1.0 (1, 1) → bin 9 (1.0 goes in the last bin): n=2, acc 1, conf 0.975 → 2·0.025
    ECE = (0.05 + 0.73 + 0.55 + 0.05) / 6 = 0.23
    """
    probs = torch.tensor([0.05, 0.15, 0.12, 0.55, 0.95, 1.0])
    labels = torch.tensor([0, 1, 0, 0, 1, 1])
    assert expected_calibration_error(probs, labels).item() == pytest.approx(0.23, abs=1e-7)
    # One bin: ECE = |mean label - mean prob| = |3/6 - 2.82/6| = 0.03.
    assert expected_calibration_error(probs, labels, n_bins=1).item() == pytest.approx(0.03, abs=1e-7)


def test_ece_perfectly_calibrated_is_zero():
    probs = torch.tensor([0.25] * 4 + [0.75] * 4)
    labels = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(probs, labels).item() == pytest.approx(0.0, abs=1e-12)
