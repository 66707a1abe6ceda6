"""Wilson interval against values derived by hand."""

from __future__ import annotations

import math

import pytest

from rlhf.stats import wilson_interval


def test_wilson_zero_successes_closed_form():
    """With p = 0 the interval is [0, z²/(n + z²)]: for n = 10, 3.8415/13.8415 = 0.27753."""
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1.959964**2 / (10 + 1.959964**2), abs=1e-12)
    assert hi == pytest.approx(0.27753, abs=1e-5)


def test_wilson_half_is_centred_and_mirrors():
    """p = 1/2: centre exactly 1/2, half-width z·sqrt(1/(4n) + z²/(4n²)) / (1 + z²/n)."""
    n, z = 100, 1.959964
    lo, hi = wilson_interval(50, n)
    half = z * math.sqrt(0.25 / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo + hi) / 2 == pytest.approx(0.5, abs=1e-12)
    assert (hi - lo) / 2 == pytest.approx(half, abs=1e-12)
    # Swapping successes and failures mirrors the interval around 1/2.
    a, b = wilson_interval(30, n), wilson_interval(70, n)
    assert a[0] == pytest.approx(1 - b[1], abs=1e-12) and a[1] == pytest.approx(1 - b[0], abs=1e-12)
    with pytest.raises(ValueError, match="successes must be in"):
        wilson_interval(11, 10)
