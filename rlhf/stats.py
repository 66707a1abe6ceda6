"""Small statistics used to report results honestly (intervals, not bare point estimates)."""

from __future__ import annotations

import math

__all__ = ["wilson_interval"]


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
