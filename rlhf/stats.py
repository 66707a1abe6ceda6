"""Small statistics used to report results honestly (intervals, not bare point estimates), and
the Bradley–Terry preference probability (judges and labelling share it)."""

from __future__ import annotations

import math

__all__ = ["wilson_interval", "student_t_cdf", "student_t_quantile", "mean_interval", "preference_probability"]


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes/n (Wilson 1927); z = 1.96 is 95%.

    Preferred over the normal approximation p ± z·sqrt(p(1-p)/n) because it stays inside [0, 1]
    and keeps its coverage near p = 0 or 1 and for small n. ``n == 0`` gives (nan, nan).
    """
    if n == 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be in [0, n={n}] (got {successes})")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom.

    Through the regularised incomplete beta function: for t >= 0,
    P(T <= t) = 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t²) (Abramowitz & Stegun 26.7.1),
    and the distribution is symmetric."""
    if df < 1:
        raise ValueError(f"student_t_cdf: df must be >= 1 (got {df})")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p (bisection on :func:`student_t_cdf`, to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"student_t_quantile: p must be in (0, 1) (got {p})")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def mean_interval(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean of independent runs (e.g. seeds) with a two-sided Student-t interval:
    mean ± t_{(1+level)/2, n-1} · s / √n, s the sample standard deviation (n - 1 in the
    denominator). One value gives an interval of nan (nothing to estimate the spread from)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval: no values")
    m = sum(values) / n
    if n == 1:
        return {"mean": m, "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "n": 1}
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = student_t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": m, "lo": m - half, "hi": m + half, "sd": sd, "n": n}


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes §6.4:
    the fraction converges fast for x < (a + 1) / (a + b + 2); otherwise use the symmetry
    I_x(a, b) = 1 - I_{1-x}(b, a))."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    # Modified Lentz evaluation of the continued fraction for I_x(a, b).
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def preference_probability(r_a: float, r_b: float, temperature: float) -> float:
    """Bradley–Terry: P(a ≻ b) = σ((r_a − r_b)/τ), computed without overflow; τ > 0."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature!r})")
    z = (r_a - r_b) / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
