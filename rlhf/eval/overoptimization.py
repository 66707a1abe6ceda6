"""Reward over-optimisation as Gao, Schulman & Hilton (2022) measure it: gold-reward gain as a
function of the distance d = √KL(π || π_init) travelled from the initial policy, with their two
functional forms (their eq. 1 and 2):

    best-of-n:  R_bon(d) = d · (α − β·d)
    RL:         R_rl(d)  = d · (α − β·log d)

R is the *gain* in gold reward over the initial policy (R(0) = 0). α is the initial slope (how
much gold each unit of distance buys at first), β how fast over-optimisation eats it. Both forms
are linear in (α, β) once d is fixed, so the least-squares fit is a 2×2 linear solve: no
optimiser, no starting point, one answer. Pure functions of numbers; checked in
tests/eval/test_overoptimization.py against data generated from known coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["gao_fit", "gao_predict", "peak_of_fit"]


def _features(form: str, d: float) -> tuple[float, float]:
    # R = α·f1(d) − β·f2(d)
    if form == "bon":
        return d, d * d
    if form == "rl":
        return d, (d * math.log(d) if d > 0 else 0.0)  # d·log d -> 0 as d -> 0
    raise ValueError(f"gao_fit: form must be 'bon' or 'rl' (got {form!r})")


def gao_predict(form: str, alpha: float, beta: float, kl: float) -> float:
    """R(d) at d = √kl for the fitted coefficients."""
    f1, f2 = _features(form, math.sqrt(max(kl, 0.0)))
    return alpha * f1 - beta * f2


def gao_fit(form: str, kl: Sequence[float], gain: Sequence[float]) -> dict[str, float]:
    """Least-squares (α, β) of ``gain ≈ R(√kl)`` for ``form`` in {"bon", "rl"}, with R² =
    1 − SS_res / SS_tot (SS_tot around the mean gain; can be negative for a fit worse than the
    mean). Needs at least 3 points and two linearly independent feature columns."""
    if len(kl) != len(gain):
        raise ValueError(f"gao_fit: {len(kl)} KL values but {len(gain)} gains")
    pts = [(float(k), float(g)) for k, g in zip(kl, gain)]
    if len(pts) < 3:
        raise ValueError(f"gao_fit: need at least 3 points (got {len(pts)})")
    if any(not (math.isfinite(k) and math.isfinite(g)) or k < 0 for k, g in pts):
        raise ValueError("gao_fit: KL values must be finite and >= 0, gains finite")
    s11 = s12 = s22 = t1 = t2 = 0.0
    for k, g in pts:
        f1, f2 = _features(form, math.sqrt(k))
        f2 = -f2  # R = α·f1 + (−f2)·β
        s11 += f1 * f1
        s12 += f1 * f2
        s22 += f2 * f2
        t1 += f1 * g
        t2 += f2 * g
    det = s11 * s22 - s12 * s12
    if abs(det) <= 1e-12 * max(s11 * s22, 1e-300):
        raise ValueError("gao_fit: the points do not determine both coefficients (too few distinct KL values)")
    alpha = (t1 * s22 - t2 * s12) / det
    beta = (s11 * t2 - s12 * t1) / det
    mean = sum(g for _, g in pts) / len(pts)
    ss_tot = sum((g - mean) ** 2 for _, g in pts)
    ss_res = sum((g - gao_predict(form, alpha, beta, k)) ** 2 for k, g in pts)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return {"alpha": alpha, "beta": beta, "r2": r2, "n": len(pts)}


def peak_of_fit(form: str, alpha: float, beta: float) -> dict[str, float] | None:
    """Where the fitted curve peaks (its over-optimisation point): d* and the gain there; None
    when β <= 0 (no peak: the fit never turns down).

    bon: dR/dd = α − 2βd = 0      -> d* = α / (2β),      R* = α² / (4β)
    rl:  dR/dd = α − β(log d + 1) = 0 -> d* = exp(α/β − 1), R* = β·d*
    """
    if beta <= 0:
        return None
    if form == "bon":
        d = alpha / (2 * beta)
        return {"d": d, "kl": d * d, "gain": alpha * alpha / (4 * beta)}
    if form == "rl":
        d = math.exp(min(alpha / beta - 1.0, 700.0))
        return {"d": d, "kl": d * d, "gain": beta * d}
    raise ValueError(f"peak_of_fit: form must be 'bon' or 'rl' (got {form!r})")
