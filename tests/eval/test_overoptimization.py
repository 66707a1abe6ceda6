"""Gao et al. (2022) fits and the Student-t interval: checked against data made from known
coefficients, closed-form peaks, and published t-table values."""

from __future__ import annotations

import math
import random

import pytest

from rlhf.eval.overoptimization import gao_fit, gao_predict, peak_of_fit
from rlhf.stats import mean_interval, student_t_cdf, student_t_quantile


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_recovers_known_coefficients_exactly(form):
    """Noise-free points from R(d) = d(α − β·f(d)): the fit returns α, β to rounding and R² = 1."""
    alpha, beta = 0.7, 0.25
    kl = [0.1, 0.5, 1.0, 2.0, 4.0, 7.5, 12.0]
    gain = [gao_predict(form, alpha, beta, k) for k in kl]
    fit = gao_fit(form, kl, gain)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-12)
    assert fit["beta"] == pytest.approx(beta, abs=1e-12)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)


def test_predict_by_hand():
    # bon at KL 4: d = 2, R = 2(0.5 − 0.1·2) = 0.6; rl at KL e²: d = e, R = e(0.5 − 0.1·1) = 0.4e.
    assert gao_predict("bon", 0.5, 0.1, 4.0) == pytest.approx(0.6, abs=1e-15)
    assert gao_predict("rl", 0.5, 0.1, math.e ** 2) == pytest.approx(0.4 * math.e, abs=1e-14)
    assert gao_predict("rl", 0.5, 0.1, 0.0) == 0.0


def test_noisy_fit_matches_the_normal_equations_and_r2_by_hand():
    """With noise, (α, β) minimise the squared error: perturbing either coefficient raises it;
    R² equals 1 − SS_res/SS_tot computed here independently."""
    rng = random.Random(0)
    kl = [0.2 * i for i in range(1, 30)]
    gain = [gao_predict("rl", 0.4, 0.3, k) + rng.gauss(0, 0.01) for k in kl]
    fit = gao_fit("rl", kl, gain)

    def sse(a, b):
        return sum((g - gao_predict("rl", a, b, k)) ** 2 for k, g in zip(kl, gain))

    best = sse(fit["alpha"], fit["beta"])
    for da, db in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)]:
        assert sse(fit["alpha"] + da, fit["beta"] + db) > best
    mean = sum(gain) / len(gain)
    assert fit["r2"] == pytest.approx(1 - best / sum((g - mean) ** 2 for g in gain), abs=1e-12)
    assert 0.5 < fit["r2"] < 1


def test_peaks_in_closed_form():
    """bon: d* = α/(2β); rl: d* = exp(α/β − 1); the curve is lower on both sides of d*."""
    for form, a, b in [("bon", 0.6, 0.2), ("rl", 0.5, 0.4)]:
        p = peak_of_fit(form, a, b)
        assert gao_predict(form, a, b, p["kl"]) == pytest.approx(p["gain"], rel=1e-12)
        for k in (p["kl"] * 0.8, p["kl"] * 1.25):
            assert gao_predict(form, a, b, k) < p["gain"]
    assert peak_of_fit("bon", 0.6, 1.5)["d"] == pytest.approx(0.2)
    assert peak_of_fit("rl", 0.5, -0.1) is None


def test_fit_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        gao_fit("bon", [1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        gao_fit("bon", [1, 2, float("nan")], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="do not determine"):
        gao_fit("bon", [1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="form"):
        gao_fit("ppo", [1, 2, 3], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("df,table", [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572),
                                      (30, 2.0422725)])
def test_t_quantile_matches_the_published_table(df, table):
    """97.5% quantiles from the standard t table (7 significant figures)."""
    assert student_t_quantile(0.975, df) == pytest.approx(table, abs=5e-7)


def test_t_cdf_closed_forms():
    # df = 1 is the Cauchy distribution: F(t) = 1/2 + atan(t)/π; df = 2: F(t) = 1/2 + t / (2√(2 + t²)).
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_mean_interval_by_hand():
    """Values 1..5: mean 3, s = √2.5, half-width t_{0.975,4}·s/√5 = 2.7764451·0.7071068 = 1.9632432."""
    r = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert r["mean"] == 3.0 and r["n"] == 5
    assert r["hi"] - 3.0 == pytest.approx(1.9632432, abs=1e-6)
    assert 3.0 - r["lo"] == pytest.approx(1.9632432, abs=1e-6)
    one = mean_interval([2.0])
    assert one["mean"] == 2.0 and math.isnan(one["lo"])
