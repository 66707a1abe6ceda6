"""KL estimators (Schulman 2020) and the fixed / adaptive KL controllers (Ziegler et al. 2019)."""

import math

import pytest
import torch

from rlhf.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
)

# Two categorical distributions over 4 outcomes: π (policy, the sampler) and π_ref.
P = [0.5, 0.25, 0.15, 0.10]
Q = [0.1, 0.3, 0.4, 0.2]
KL_PQ = sum(p * math.log(p / q) for p, q in zip(P, Q))  # KL(π‖π_ref), closed form
K2_MEAN = sum(p * 0.5 * math.log(p / q) ** 2 for p, q in zip(P, Q))  # E_π[k2], closed form


def test_estimators_match_formulas_by_hand():
    """π(x) = 0.5, π_ref(x) = 0.25: log-ratio log 2, π_ref/π = 1/2.

    k1 = log 2; k2 = ½ (log 2)²; k3 = ½ - log ½ - 1 = log 2 - ½.
    """
    logps = torch.tensor([math.log(0.5)], dtype=torch.float64)
    ref = torch.tensor([math.log(0.25)], dtype=torch.float64)
    assert kl_k1(logps, ref).item() == pytest.approx(math.log(2), abs=1e-12)
    assert kl_k2(logps, ref).item() == pytest.approx(0.5 * math.log(2) ** 2, abs=1e-12)
    assert kl_k3(logps, ref).item() == pytest.approx(math.log(2) - 0.5, abs=1e-12)
    # Registry lookups reach the same functions.
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    assert kl_estimate(logps, ref, "k3").item() == pytest.approx(math.log(2) - 0.5, abs=1e-12)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(logps, ref, "k4")


def _mc_samples(n: int = 200_000):
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor(P, dtype=torch.float64)
    q = torch.tensor(Q, dtype=torch.float64)
    x = torch.multinomial(p, n, replacement=True, generator=gen)  # tokens sampled from π
    return p.log()[x], q.log()[x]


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_k1_k3_unbiased_monte_carlo(name):
    """E_{x~π}[k1] = E_{x~π}[k3] = KL(π‖π_ref): the Monte Carlo mean lies within 4 standard errors.

    The tolerance is meaningful: 4 SE is well below 10% of the KL, so a wrong sign or a missing
    term (e.g. k3 without the -1) fails.
    """
    logps, ref = _mc_samples()
    k = KL_ESTIMATORS[name](logps, ref)
    mean, se = k.mean().item(), (k.std() / math.sqrt(k.numel())).item()
    assert 4 * se < 0.1 * KL_PQ
    assert abs(mean - KL_PQ) < 4 * se


def test_k2_expectation_is_its_closed_form_not_kl():
    """E_π[k2] = ½ Σ π (log π/π_ref)², which differs from KL(π‖π_ref) for these distributions."""
    logps, ref = _mc_samples()
    k = kl_k2(logps, ref)
    mean, se = k.mean().item(), (k.std() / math.sqrt(k.numel())).item()
    assert abs(mean - K2_MEAN) < 4 * se
    assert abs(K2_MEAN - KL_PQ) > 20 * se  # k2 is biased here, and the test can tell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k3_never_negative(dtype):
    """k3 = eᵈ - d - 1 ≥ 0 for every d, including tiny |d| where exp(d) - 1 would cancel."""
    d = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([1e-12, -1e-12, 1e-7, -1e-7, 0.0])]).to(dtype)
    logps = torch.zeros_like(d)
    k3 = kl_k3(logps, d)  # ref_logps = d so that log π_ref - log π = d
    assert (k3 >= 0).all()
    # Small d: k3 ≈ d²/2 to relative precision (expm1 keeps it; exp(d) - 1 would not in float32).
    small = torch.tensor([1e-3, -1e-3], dtype=dtype)
    assert torch.allclose(kl_k3(torch.zeros_like(small), small), small**2 / 2 + small**3 / 6, rtol=1e-3)


def test_mask_zeroes_padding_without_overflow():
    """Padded positions hold garbage; with the mask every estimator is exactly 0 there (no inf/nan)."""
    logps = torch.tensor([[-1.0, -2.0, 1e4]])
    ref = torch.tensor([[-1.5, -2.0, -1e4]])
    mask = torch.tensor([[1, 1, 0]])
    for name, fn in KL_ESTIMATORS.items():
        out = fn(logps, ref, mask)
        assert torch.isfinite(out).all(), name
        assert out[0, 2].item() == 0.0, name
    assert kl_k1(logps, ref, mask)[0, 0].item() == pytest.approx(0.5)


def test_fixed_controller_keeps_beta():
    ctl = FixedKLController(0.05)
    for kl in (0.0, 1.0, 100.0):
        assert ctl.update(kl, 64) == 0.05
    assert ctl.value == 0.05
    other = FixedKLController(0.3)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_step_by_step():
    """β ← β (1 + clip(KL/target - 1, -0.2, 0.2) · n/horizon), with target 6, horizon 10000, n = 256.

    KL = 12  → error  1.0 clipped to  0.2
    KL = 3   → error -0.5 clipped to -0.2
    KL = 6.6 → error  0.1 (inside the clip range)
    KL = 0   → error -1.0 clipped to -0.2
    """
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    beta = 0.1
    history = []
    for kl, error in [(12.0, 0.2), (3.0, -0.2), (6.6, 6.6 / 6.0 - 1.0), (0.0, -0.2)]:
        beta = beta * (1.0 + error * 256 / 10000)
        assert ctl.update(torch.tensor(kl, dtype=torch.float64), 256) == pytest.approx(beta, rel=1e-12)
        assert ctl.value == pytest.approx(beta, rel=1e-12)
        history.append(ctl.value)
    # Direction: KL above target raises β, below lowers it.
    assert history[0] > 0.1 and history[1] < history[0] and history[2] > history[1] and history[3] < history[2]


def test_adaptive_controller_state_round_trip():
    """A restored controller continues exactly where the saved one was."""
    a = AdaptiveKLController(0.2, target=1.0, horizon=100)
    a.update(3.0, 10)
    b = AdaptiveKLController(0.2, target=1.0, horizon=100)
    b.load_state_dict(a.state_dict())
    assert b.value == a.value
    assert b.update(0.5, 7) == a.update(0.5, 7)
    assert set(KL_CONTROLLERS) == {"fixed", "adaptive"}


@pytest.mark.parametrize("kwargs", [dict(init_beta=0.0, target=1, horizon=1), dict(init_beta=1, target=0, horizon=1),
                                    dict(init_beta=1, target=1, horizon=0)])
def test_adaptive_controller_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="must be > 0"):
        AdaptiveKLController(**kwargs)
