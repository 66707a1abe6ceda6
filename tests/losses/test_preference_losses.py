"""DPO-family and KTO losses against their paper formulas, computed by hand with math.log/exp.

Fixed numbers used throughout (two pairs, β = 0.1):

    chosen_logps   = (-5, -7)      ref_chosen_logps   = (-5.5, -6)
    rejected_logps = (-6, -4)      ref_rejected_logps = (-5.5, -5)
    chosen log-ratio   = (0.5, -1)     rejected log-ratio = (-0.5, 1)
    h = (1, -2)        βh = (0.1, -0.2)
    chosen_lengths = (4, 10)        rejected_lengths = (5, 2)
"""

import math

import pytest
import torch

from rlhf.losses.preference import (
    PREFERENCE_LOSSES,
    add_nll_term,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    is_paired,
    kto_loss,
    kto_reference_point,
    needs_reference,
    nll_term,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
)

BETA = 0.1
CHOSEN, REJECTED = [-5.0, -7.0], [-6.0, -4.0]
REF_CHOSEN, REF_REJECTED = [-5.5, -6.0], [-5.5, -5.0]
LEN_CHOSEN, LEN_REJECTED = [4, 10], [5, 2]
H = [1.0, -2.0]


def _t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def _inputs(grad=False):
    return dict(
        chosen_logps=_t(CHOSEN, grad),
        rejected_logps=_t(REJECTED, grad),
        ref_chosen_logps=_t(REF_CHOSEN),
        ref_rejected_logps=_t(REF_REJECTED),
        chosen_lengths=torch.tensor(LEN_CHOSEN),
        rejected_lengths=torch.tensor(LEN_REJECTED),
    )


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_dpo_by_hand():
    """loss = -log σ(βh) = log(1 + exp(-βh)), βh = (0.1, -0.2)."""
    losses, metrics = dpo_loss(**_inputs(), beta=BETA)
    assert losses.shape == (2,)
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-0.1)), math.log(1 + math.exp(0.2))], abs=1e-12)
    # Implicit rewards β(logπ - logπ_ref): chosen (0.05, -0.1), rejected (-0.05, 0.1).
    assert metrics["chosen_rewards"].tolist() == pytest.approx([0.05, -0.1], abs=1e-12)
    assert metrics["rejected_rewards"].tolist() == pytest.approx([-0.05, 0.1], abs=1e-12)
    assert metrics["reward_accuracy"].tolist() == [1.0, 0.0]
    assert metrics["reward_margin"].tolist() == pytest.approx([0.1, -0.2], abs=1e-12)
    assert not any(m.requires_grad for m in metrics.values())


def test_dpo_at_reference_is_log2_and_gradient_direction():
    """π = π_ref ⇒ h = 0 ⇒ loss = -log σ(0) = log 2 for every pair.

    d loss / d logπ(y_w) = -β σ(-βh) = -β/2 (descent raises the chosen log-prob);
    d loss / d logπ(y_l) = +β/2 (descent lowers the rejected one).
    """
    chosen, rejected = _t([-3.0, -8.0], True), _t([-4.0, -2.0], True)
    losses, _ = dpo_loss(chosen, rejected, chosen.detach().clone(), rejected.detach().clone(), beta=BETA)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-12)
    losses.sum().backward()
    assert chosen.grad.tolist() == pytest.approx([-BETA / 2] * 2, abs=1e-12)
    assert rejected.grad.tolist() == pytest.approx([BETA / 2] * 2, abs=1e-12)


def test_cdpo_label_smoothing():
    """ε = 0.1: loss = -(0.9) log σ(βh) - 0.1 log σ(-βh); ε = 0 is plain DPO."""
    eps = 0.1
    losses, _ = dpo_loss(**_inputs(), beta=BETA, label_smoothing=eps)
    expected = [-(1 - eps) * _log_sigmoid(BETA * h) - eps * _log_sigmoid(-BETA * h) for h in H]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    plain = [-_log_sigmoid(BETA * h) for h in H]
    assert dpo_loss(**_inputs(), beta=BETA, label_smoothing=0.0)[0].tolist() == pytest.approx(plain, abs=1e-12)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        dpo_loss(**_inputs(), beta=BETA, label_smoothing=0.5)


def test_robust_dpo():
    """ε = 0.2: loss = (0.8·(-log σ(βh)) - 0.2·(-log σ(-βh))) / 0.6; ε = 0 is plain DPO."""
    eps = 0.2
    losses, _ = robust_dpo_loss(**_inputs(), beta=BETA, label_smoothing=eps)
    expected = [((1 - eps) * -_log_sigmoid(BETA * h) - eps * -_log_sigmoid(-BETA * h)) / (1 - 2 * eps) for h in H]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    plain = [-_log_sigmoid(BETA * h) for h in H]
    assert robust_dpo_loss(**_inputs(), beta=BETA)[0].tolist() == pytest.approx(plain, abs=1e-12)


def test_ipo_uses_length_averaged_log_ratios():
    """h̄ = 0.5/4 - (-0.5)/5 = 0.225 and -1/10 - 1/2 = -0.6; loss = (h̄ - 1/(2β))² = (h̄ - 5)²."""
    losses, _ = ipo_loss(**_inputs(), beta=BETA)
    assert losses.tolist() == pytest.approx([(0.225 - 5) ** 2, (-0.6 - 5) ** 2], abs=1e-12)
    with pytest.raises(ValueError, match="chosen_lengths is required"):
        ipo_loss(_t(CHOSEN), _t(REJECTED), _t(REF_CHOSEN), _t(REF_REJECTED), beta=BETA)


def test_hinge():
    """β = 2: βh = (2, -4); loss = max(0, 1 - βh) = (0, 5). The first pair is past the margin and
    gets no gradient; the second gets d/d logπ(y_w) = -β = -2."""
    inputs = _inputs(grad=True)
    losses, _ = hinge_loss(**inputs, beta=2.0)
    assert losses.tolist() == pytest.approx([0.0, 5.0], abs=1e-12)
    losses.sum().backward()
    assert inputs["chosen_logps"].grad.tolist() == pytest.approx([0.0, -2.0], abs=1e-12)
    assert inputs["rejected_logps"].grad.tolist() == pytest.approx([0.0, 2.0], abs=1e-12)


def test_simpo_reference_free():
    """β = 2, γ = 0.5: rewards β·logπ/|y| = chosen (-2.5, -1.4), rejected (-2.4, -4);
    loss = -log σ(r_w - r_l - γ) = -log σ(-0.6), -log σ(2.1). The reference is ignored."""
    inputs = _inputs()
    losses, metrics = simpo_loss(**inputs, beta=2.0, gamma=0.5)
    expected = [-_log_sigmoid(-2.5 + 2.4 - 0.5), -_log_sigmoid(-1.4 + 4.0 - 0.5)]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert metrics["chosen_rewards"].tolist() == pytest.approx([-2.5, -1.4], abs=1e-12)
    inputs.update(ref_chosen_logps=None, ref_rejected_logps=None)
    assert simpo_loss(**inputs, beta=2.0, gamma=0.5)[0].tolist() == pytest.approx(expected, abs=1e-12)


def _log_odds(avg_logp):
    return avg_logp - math.log(1 - math.exp(avg_logp))


def test_orpo_by_hand():
    """ℓ = logπ/|y|: chosen (-1.25, -0.7), rejected (-1.2, -2).
    loss = -ℓ_w + λ·(-log σ(log odds(ℓ_w) - log odds(ℓ_l))), log odds(ℓ) = ℓ - log(1 - e^ℓ)."""
    lam = 0.25
    losses, metrics = orpo_loss(**_inputs(), beta=lam)
    expected = []
    for lw, ll in [(-1.25, -1.2), (-0.7, -2.0)]:
        expected.append(-lw + lam * -_log_sigmoid(_log_odds(lw) - _log_odds(ll)))
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert metrics["nll"].tolist() == pytest.approx([1.25, 0.7], abs=1e-12)
    assert metrics["log_odds_ratio"][0].item() == pytest.approx(_log_odds(-1.25) - _log_odds(-1.2), abs=1e-12)


@pytest.mark.parametrize("avg", [-1e-5, -0.3, -5.0, -60.0])
def test_orpo_log_odds_is_accurate_in_float32(avg):
    """Near 0 (p → 1) and very negative (p → 0) average log-probs: the float32 log-odds ratio
    against a fixed partner (ℓ = -1) matches float64 math to float32 precision, gradients finite."""
    chosen = torch.tensor([avg * 10], requires_grad=True)
    rejected = torch.tensor([-10.0])
    lengths = torch.tensor([10])
    _, metrics = orpo_loss(chosen, rejected, chosen_lengths=lengths, rejected_lengths=lengths, beta=1.0)
    expected = _log_odds(avg) - _log_odds(-1.0)
    assert metrics["log_odds_ratio"].item() == pytest.approx(expected, rel=1e-4)
    loss, _ = orpo_loss(chosen, rejected, chosen_lengths=lengths, rejected_lengths=lengths, beta=1.0)
    loss.sum().backward()
    assert torch.isfinite(chosen.grad).all()


def test_nll_term_and_rpo_alpha():
    """nll = -logπ(y_w)/|y_w| = (1.25, 0.7); add_nll_term adds α·nll to any per-pair loss."""
    assert nll_term(_t(CHOSEN), torch.tensor(LEN_CHOSEN)).tolist() == pytest.approx([1.25, 0.7], abs=1e-12)
    base, _ = dpo_loss(**_inputs(), beta=BETA)
    out = add_nll_term(base, _t(CHOSEN), torch.tensor(LEN_CHOSEN), alpha=0.5)
    assert (out - base).tolist() == pytest.approx([0.625, 0.35], abs=1e-12)


def test_kto_by_hand():
    """β = 0.5, z0 = 0.2, λ_D = 1, λ_U = 1.5; r = logπ - logπ_ref = (1, -1, 0.2).
    desirable r=1:    1.0·(1 - σ(0.5·(1 - 0.2)))  = 1 - σ(0.4)
    undesirable r=-1: 1.5·(1 - σ(0.5·(0.2 + 1))) = 1.5·(1 - σ(0.6))
    desirable r=0.2:  1 - σ(0) = 0.5
    """
    logps, ref = _t([-3.0, -5.0, -2.0], True), _t([-4.0, -4.0, -2.2])
    desirable = torch.tensor([True, False, True])
    z0 = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    losses, metrics = kto_loss(logps, ref, desirable, z0, beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)

    def sig(x):
        return 1 / (1 + math.exp(-x))

    assert losses.tolist() == pytest.approx([1 - sig(0.4), 1.5 * (1 - sig(0.6)), 0.5], abs=1e-12)
    assert metrics["rewards"].tolist() == pytest.approx([0.5, -0.5, 0.1], abs=1e-12)
    losses.sum().backward()
    assert z0.grad is None  # no gradient flows into the reference point
    # Desirable: descent raises logπ (negative grad); undesirable: lowers it.
    assert logps.grad[0] < 0 and logps.grad[1] > 0


def test_kto_reference_point():
    """z0 = max(0, mean(logπ - logπ_ref)), detached: mean(0.5, 1.5) = 1; mean(-1, 0.4) < 0 → 0."""
    a = _t([-1.0, -2.0], True)
    z0 = kto_reference_point(a, _t([-1.5, -3.5]))
    assert z0.item() == pytest.approx(1.0) and not z0.requires_grad
    assert kto_reference_point(_t([-2.0, -1.0]), _t([-1.0, -1.4])).item() == 0.0


def test_registry_and_uniform_signature():
    """Every paired loss takes the same keyword inputs; reference-free ones ignore the reference."""
    assert set(PREFERENCE_LOSSES) == {"dpo", "robust", "ipo", "hinge", "simpo", "orpo", "kto"}
    assert [n for n in PREFERENCE_LOSSES if not needs_reference(n)] == ["simpo", "orpo"]
    assert [n for n in PREFERENCE_LOSSES if not is_paired(n)] == ["kto"]
    with pytest.raises(ValueError, match="unknown preference loss 'xpo'"):
        needs_reference("xpo")
    for name, fn in PREFERENCE_LOSSES.items():
        if not is_paired(name):
            continue
        losses, metrics = fn(**_inputs(), beta=BETA)
        assert losses.shape == (2,), name
        assert set(metrics) >= {"chosen_rewards", "rejected_rewards", "reward_accuracy", "reward_margin"}, name
        assert torch.equal(metrics["reward_margin"], metrics["chosen_rewards"] - metrics["rejected_rewards"]), name
    with pytest.raises(ValueError, match="ref_chosen_logps is required"):
        dpo_loss(_t(CHOSEN), _t(REJECTED), beta=BETA)
