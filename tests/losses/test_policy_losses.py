"""PPO clip, clipped value loss, entropy bonus and KL-in-loss: values and gradients by hand."""

import math

import pytest
import torch

from rlhf.advantages import grpo_advantages
from rlhf.kl import kl_estimate
from rlhf.logprobs import token_logps
from rlhf.losses.policy import POLICY_LOSSES, entropy_bonus, kl_loss, ppo_clip_loss, value_loss
from rlhf.masking import count_units


def test_ratio_one_clips_nothing_and_is_vanilla_policy_gradient():
    """logps == old_logps ⇒ r = 1 everywhere: loss = -Σ A·m / Σ m (token mean), no clipping,
    d loss / d logp_t = -A_t m_t / Σ m (dr/dlogp = r = 1). Padding holds garbage advantages."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    adv = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    adv[mask == 0] = float("inf")
    old = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    logps = old.clone().requires_grad_(True)
    loss, metrics = ppo_clip_loss(logps, old, adv, mask, clip_low=0.2)
    a = torch.where(mask.bool(), adv, torch.zeros_like(adv))
    n = mask.sum().item()
    assert loss.item() == pytest.approx(-a.sum().item() / n, abs=1e-12)
    assert metrics["clip_fraction"].item() == 0.0
    assert metrics["approx_kl"].item() == 0.0
    assert metrics["ratio"].item() == pytest.approx(1.0)
    loss.backward()
    assert torch.allclose(logps.grad, -a / n, atol=1e-12)


# Ratios straddling the bounds of an asymmetric clip ε_low = 0.2, ε_high = 0.28.
RATIOS = [0.7, 0.79, 0.81, 1.0, 1.27, 1.29, 1.5]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clipping_engages_exactly_outside_the_range(sign):
    """Per token loss_t = max(-A r, -A clip(r, 0.8, 1.28)), here with A = ±1.

    A = +1: clipped (constant -1.28, zero gradient) exactly where r > 1.28; elsewhere -r, with
            d/dlogp = -r (r < 0.8 is NOT clipped: the ratio moved against the advantage).
    A = -1: clipped (constant 0.8, zero gradient) exactly where r < 0.8; elsewhere r, grad r.
    Token mean over the 7 tokens.
    """
    r = torch.tensor([RATIOS], dtype=torch.float64)
    old = torch.full_like(r, -2.0)
    logps = (old + r.log()).requires_grad_(True)
    adv = torch.full_like(r, sign)
    mask = torch.ones_like(r)
    loss, metrics = ppo_clip_loss(logps, old, adv, mask, clip_low=0.2, clip_high=0.28)
    if sign > 0:
        clipped = [x > 1.28 for x in RATIOS]
        per_token = [-1.28 if c else -x for x, c in zip(RATIOS, clipped)]
        grads = [0.0 if c else -x for x, c in zip(RATIOS, clipped)]
    else:
        clipped = [x < 0.8 for x in RATIOS]
        per_token = [0.8 if c else x for x, c in zip(RATIOS, clipped)]
        grads = [0.0 if c else x for x, c in zip(RATIOS, clipped)]
    assert loss.item() == pytest.approx(sum(per_token) / 7, abs=1e-12)
    assert metrics["clip_fraction"].item() == pytest.approx(sum(clipped) / 7)
    # approx KL k3 between old and new: mean((r - 1) - log r)
    assert metrics["approx_kl"].item() == pytest.approx(sum(x - 1 - math.log(x) for x in RATIOS) / 7, abs=1e-12)
    loss.backward()
    assert logps.grad[0].tolist() == pytest.approx([g / 7 for g in grads], abs=1e-12)


def test_symmetric_clip_default():
    """clip_high=None ⇒ ε_high = ε_low: with A = 1 and r = 1.25 > 1.2 the token is clipped."""
    old = torch.zeros(1, 2, dtype=torch.float64)
    logps = torch.tensor([[math.log(1.25), math.log(1.15)]], dtype=torch.float64)
    loss, metrics = ppo_clip_loss(logps, old, torch.ones(1, 2), torch.ones(1, 2), clip_low=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.15) / 2, abs=1e-12)
    assert metrics["clip_fraction"].item() == 0.5


def test_aggregation_modes_and_global_denominator():
    """sequence_mean by hand, and two micro-batches with the global token count sum to the
    full-batch token_mean (and give the same gradient). Sequence advantages (B,) broadcast."""
    logps = torch.tensor([[0.0, -1.0, -2.0, -3.0], [0.0, -0.5, -0.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]])
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    # r = 1: per-token -A. sequence_mean: mean over rows of row means = (-2 + 1) / 2.
    loss, _ = ppo_clip_loss(logps, logps, adv, mask, aggregation="sequence_mean")
    assert loss.item() == pytest.approx(-0.5)
    loss, _ = ppo_clip_loss(logps, logps, adv, mask, aggregation="constant", max_len=4)
    assert loss.item() == pytest.approx((-2 * 3 + 1 * 2) / 4 / 2)

    gen = torch.Generator().manual_seed(1)
    old = logps + 0.1 * torch.randn(logps.shape, generator=gen, dtype=torch.float64)
    full_lp = logps.clone().requires_grad_(True)
    full, _ = ppo_clip_loss(full_lp, old, adv, mask)
    full.backward()
    denom = count_units(mask, "token_mean")
    mb_lp = logps.clone().requires_grad_(True)
    total = sum(ppo_clip_loss(mb_lp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], denominator=denom)[0]
                for i in range(2))
    total.backward()
    assert total.item() == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(mb_lp.grad, full_lp.grad, atol=1e-12)
    assert POLICY_LOSSES["ppo_clip"] is ppo_clip_loss


def test_grpo_first_update_zero_loss_nonzero_gradient():
    """GRPO, β = 0, one update on fresh samples (logps == old_logps), equal response lengths L:
    loss = -(1/(N L)) Σ_i L·A_i = -mean(A) = 0 because group-normalised advantages sum to 0 in
    each group; yet d loss / d logp_{i,t} = -A_i / (N L) ≠ 0 — the gradient is the policy gradient."""
    gen = torch.Generator().manual_seed(0)
    B, T, V = 8, 5, 11
    logits = torch.randn(B, T, V, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.ones(B, T)
    mask[:, 0] = 0  # first position is never a target (house mask convention); 4 tokens per row
    logps = token_logps(logits, tokens)  # (B, T), float32
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.9, 0.2, 0.1], dtype=torch.float64)
    adv = grpo_advantages(scores, group_size=4)
    pg, _ = ppo_clip_loss(logps, logps.detach(), adv, mask)
    kl, _ = kl_loss(logps, logps.detach() - 0.3, mask, beta=0.0)
    loss = pg + kl
    assert abs(loss.item()) < 1e-12
    (grad_logps,) = torch.autograd.grad(loss, logps, retain_graph=True)
    expected = -adv[:, None] * mask.double() / mask.sum().item()
    assert torch.allclose(grad_logps.double(), expected, atol=1e-7)
    assert expected.abs().max().item() > 0.02
    loss.backward()
    assert logits.grad.norm().item() > 1e-3


def test_value_loss_clipping():
    """old_v = 0, c = 0.2, R = 1 for every token; loss_t = ½ max((v-R)², (v_clip-R)²).

    v = 0.5  : v_clip = 0.2, errors 0.25 vs 0.64 → clipped term active, loss 0.32, grad 0
    v = -0.5 : v_clip = -0.2, errors 2.25 vs 1.44 → unclipped, loss 1.125, grad v-R = -1.5
    v = 0.1  : inside the range, both 0.81 → loss 0.405, grad v-R = -0.9
    v = 1.5  : v_clip = 0.2, errors 0.25 vs 0.64 → clipped, loss 0.32, grad 0
    Token mean over 4 tokens; the padded 5th token holds garbage.
    """
    values = torch.tensor([[0.5, -0.5, 0.1, 1.5, 1e30]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0, float("nan")]], dtype=torch.float64)
    returns = torch.tensor([[1.0, 1.0, 1.0, 1.0, float("inf")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, metrics = value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx((0.32 + 1.125 + 0.405 + 0.32) / 4, abs=1e-12)
    assert metrics["clip_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    assert values.grad[0].tolist() == pytest.approx([0.0, -1.5 / 4, -0.9 / 4, 0.0, 0.0], abs=1e-12)
    # clip=None: plain ½(v - R)²
    loss, _ = value_loss(values.detach(), old, returns, mask, clip=None)
    assert loss.item() == pytest.approx((0.25 + 2.25 + 0.81 + 0.25) / 2 / 4, abs=1e-12)


def test_entropy_bonus():
    """term = -coef · token_mean(H) = -0.01 · (1 + 2 + 3)/3; minimising it raises H."""
    H = torch.tensor([[1.0, 2.0, 3.0, 50.0]], requires_grad=True)
    term, metrics = entropy_bonus(H, torch.tensor([[1, 1, 1, 0]]), coef=0.01)
    assert term.item() == pytest.approx(-0.02)
    assert metrics["entropy"].item() == pytest.approx(2.0)
    term.backward()
    assert H.grad[0].tolist() == pytest.approx([-0.01 / 3] * 3 + [0.0])


def test_kl_loss_by_hand():
    """β = 0.5, k3 per token with d = ref - logp = (0.5, -1): k3 = e^0.5 - 1.5, e^-1 + 0; token mean.
    Padding (d = -1e4, which would overflow exp) contributes exactly 0."""
    logps = torch.tensor([[-1.0, -1.0, 1e4]])
    ref = torch.tensor([[-0.5, -2.0, 0.0]])
    loss, metrics = kl_loss(logps, ref, torch.tensor([[1, 1, 0]]), beta=0.5)
    k3 = [math.exp(0.5) - 0.5 - 1, math.exp(-1.0) + 1.0 - 1]
    assert loss.item() == pytest.approx(0.5 * sum(k3) / 2, rel=1e-6)
    assert metrics["kl"].item() == pytest.approx(sum(k3) / 2, rel=1e-6)
    loss_k1, _ = kl_loss(logps, ref, torch.tensor([[1, 1, 0]]), beta=0.5, estimator="k1")
    assert loss_k1.item() == pytest.approx(0.5 * (-0.5 + 1.0) / 2, rel=1e-6)


def test_kl_estimators_as_losses_expected_gradients():
    """What ∇θ E_{x~π}[k(x)] (sample fixed, gradient through log π(x) only) equals, exactly, on a
    categorical π = softmax(θ) over 5 outcomes (expectation as a π-weighted sum, no sampling):
    k1 → 0;  k2 → ∇ KL(π‖π_ref);  k3 → ∇ KL(π_ref‖π) (the forward KL). Documented in kl_loss."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    ref_logps = torch.log_softmax(torch.randn(5, generator=gen, dtype=torch.float64), -1)

    def expected_grad(name):
        logps = torch.log_softmax(theta, -1)
        per = kl_estimate(logps, ref_logps, name)
        (g,) = torch.autograd.grad((logps.exp().detach() * per).sum(), theta)
        return g

    logps = torch.log_softmax(theta, -1)
    (g_reverse,) = torch.autograd.grad((logps.exp() * (logps - ref_logps)).sum(), theta)
    logps = torch.log_softmax(theta, -1)
    (g_forward,) = torch.autograd.grad((ref_logps.exp() * (ref_logps - logps)).sum(), theta)
    assert torch.allclose(expected_grad("k1"), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(expected_grad("k2"), g_reverse, atol=1e-12)
    assert torch.allclose(expected_grad("k3"), g_forward, atol=1e-12)
    assert not torch.allclose(g_reverse, g_forward, atol=1e-3)  # the distinction is real here
