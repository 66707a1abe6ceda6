"""The sampler's draw (rlhf/rollout/sampler.py): ``inverse_cdf`` worked by hand, and ``_draw`` (one token
per row by inverse-CDF, plus its log-prob and entropy) against softmax frequencies and the
scoring functions of rlhf.logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.logprobs import entropy_from_logits, token_logps
from rlhf.rollout import SamplingConfig, inverse_cdf
from rlhf.rollout.sampler import _draw


def _icdf(weights: list[float], us: list[float], dtype=torch.float32) -> list[int]:
    """inverse_cdf of one weight vector at each u."""
    probs = torch.tensor([weights], dtype=dtype).expand(len(us), -1)
    return inverse_cdf(probs, torch.tensor(us, dtype=dtype)).tolist()


def _after(x: float, dtype=torch.float32) -> float:
    """The next representable number above x."""
    return torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(2.0, dtype=dtype)).item()


# --------------------------------------------------------------------------- inverse_cdf by hand


def test_inverse_cdf_by_hand():
    """weights [0.1, 0, 0.6, 0.3]: cdf [0.1, 0.1, 0.7, 1.0], so token 0 owns u in (0, 0.1],
    token 1 nothing, token 2 (0.1, 0.7], token 3 (0.7, 1]. (Points within rounding of 0.1 and 0.7
    are left to the exact test below: 0.1 and 0.7 are not representable.)"""
    us = [1e-30, 0.05, 0.0999, 0.100001, 0.5, 0.6999, 0.70001, 0.9, 1.0]
    want = [0, 0, 0, 2, 2, 2, 3, 3, 3]
    for dtype in (torch.float32, torch.float64):
        assert _icdf([0.1, 0.0, 0.6, 0.3], us, dtype) == want
        # Unnormalised weights: the same intervals scaled by the total.
        assert _icdf([0.7, 0.0, 4.2, 2.1], us, dtype) == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 3.0, 0.25])
def test_inverse_cdf_interval_ends_exactly(dtype, scale):
    """Dyadic weights [1/8, 0, 1/2, 3/8] (times ``scale``: exact in binary, so the boundaries are
    exact): cdf [1/8, 1/8, 5/8, 1]. Token i is drawn iff cdf[i-1] < u * total <= cdf[i]:
    u = 1/8 is still token 0, the next float above it is token 2 (never the zero-weight token
    1), u = 5/8 is token 2, just above is 3, u = 1 is 3, the smallest positive u is 0."""
    w = [scale * x for x in (0.125, 0.0, 0.5, 0.375)]
    tiny = torch.finfo(dtype).tiny
    us = [tiny, 0.125, _after(0.125, dtype), 0.625, _after(0.625, dtype), 1.0]
    assert _icdf(w, us, dtype) == [0, 0, 2, 2, 3, 3]


def test_inverse_cdf_leading_and_trailing_zeros():
    """A zero weight at either end is never drawn, even at u = 1 or the smallest u."""
    assert _icdf([0.5, 0.5, 0.0, 0.0], [1.0, 0.75, 0.5, _after(0.5)]) == [1, 1, 0, 1]
    tiny = torch.finfo(torch.float32).tiny
    assert _icdf([0.0, 0.0, 0.5, 0.5], [tiny, 0.5, 1.0]) == [2, 2, 3]


def test_inverse_cdf_on_a_dense_grid_gives_each_token_its_weight():
    """u on the grid k/N, k = 1..N (N = 100000): no zero-weight token ever comes, and the
    fraction of grid points landing on each token equals its probability within 2/N plus
    float32 rounding of the cdf (the grid is a deterministic stand-in for uniform u).
    Rows: softmax weights with top-k style zeros in between and at both ends."""
    N = 100_000
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 12, generator=g) * 2
    keep = torch.rand(6, 12, generator=g) < 0.5
    keep[:, 3] = True  # every row keeps something
    keep[1, [0, -1]] = False  # zeros at both ends
    probs = torch.softmax(logits.masked_fill(~keep, float("-inf")), -1)  # (6, 12), exact zeros
    u = torch.arange(1, N + 1, dtype=torch.float64).div(N).float()  # (N,) in (0, 1]
    for row in probs:
        tok = inverse_cdf(row.expand(N, -1), u)  # (N,)
        assert row[tok].gt(0).all(), "a zero-weight token was drawn"
        freq = torch.bincount(tok, minlength=12).double() / N
        want = row.double() / row.double().sum()
        assert (freq - want).abs().max().item() < 2 / N + 1e-5


# --------------------------------------------------------------------------- _draw


LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])  # (V,) = 8 tokens


def _kept_distribution(logits: torch.Tensor, T: float, top_k: int, top_p: float) -> list[float]:
    """softmax(logits / T) cut to the top-k, then to the smallest most-likely set whose mass
    reaches top_p, renormalised: the slow obvious way, in float64."""
    z = [x / T for x in logits.double().tolist()]
    order = sorted(range(len(z)), key=lambda i: -z[i])
    if top_k:
        order = order[:top_k]
    w = {i: math.exp(z[i]) for i in order}
    total = sum(w.values())
    kept, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.append(i)
        mass += w[i] / total
    k_total = sum(w[i] for i in kept)
    return [w[i] / k_total if i in kept else 0.0 for i in range(len(z))]


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.95), (5, 0.95)])  # keep 8, 3, 5, 4
def test_draw_frequencies_match_the_distribution(top_k, top_p):
    """20000 rows of the same logits, T = 0.7, one seeded draw per row: each token's frequency
    is within 4.5 standard errors of its probability under the (filtered, renormalised)
    distribution; removed tokens never come."""
    n = 20_000
    cfg = SamplingConfig(temperature=0.7, top_k=top_k, top_p=top_p)
    tok, lp, ent = _draw(LOGITS.expand(n, -1), cfg, torch.Generator().manual_seed(0), greedy=False, with_logps=False)
    assert lp is None and ent is None and tok.shape == (n,) and tok.dtype == torch.long
    counts = torch.bincount(tok, minlength=len(LOGITS)).tolist()
    for i, p in enumerate(_kept_distribution(LOGITS, 0.7, top_k, top_p)):
        if p == 0.0:
            assert counts[i] == 0, f"token {i} was removed but drawn {counts[i]} times"
            continue
        se = math.sqrt(p * (1 - p) / n)
        assert abs(counts[i] / n - p) < 4.5 * se, (i, counts[i] / n, p)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (4, 0.9)])
def test_draw_is_reproducible_with_a_seed(top_k, top_p):
    """The same seed gives the same tokens; another seed gives other tokens."""
    logits = torch.randn(500, 30, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(temperature=1.2, top_k=top_k, top_p=top_p)

    def draw(seed):
        return _draw(logits, cfg, torch.Generator().manual_seed(seed), greedy=False, with_logps=False)[0]

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_greedy_is_the_argmax_and_uses_no_randomness():
    logits = torch.randn(200, 50, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    for cfg in (SamplingConfig(), SamplingConfig(temperature=0.3, top_k=2, top_p=0.5)):
        tok, _, _ = _draw(logits, cfg, g, greedy=True, with_logps=False)
        assert torch.equal(tok, logits.argmax(-1))
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("T,top_k,top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.9)])
def test_draw_logps_and_entropy_equal_the_scoring_functions(T, top_k, top_p, greedy):
    """with_logps: the drawn token's log-prob and the entropy of softmax(logits / T) (the policy
    itself, before top-k/top-p) equal rlhf.logprobs' token_logps / entropy_from_logits of the
    same logits (what rollout_logps computes) and a float64 naive formula; a logit of -inf (a
    token the model rules out) gives a finite entropy."""
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(64, 40, generator=g) * 3
    logits[0, 5] = float("-inf")
    cfg = SamplingConfig(temperature=T, top_k=top_k, top_p=top_p)
    tok, lp, ent = _draw(logits, cfg, torch.Generator().manual_seed(7), greedy=greedy, with_logps=True)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    torch.testing.assert_close(lp, token_logps(logits, tok, T), atol=1e-6, rtol=0)
    torch.testing.assert_close(ent, entropy_from_logits(logits, T), atol=1e-6, rtol=0)
    logp64 = torch.log_softmax(logits.double() / T, -1)
    p64 = logp64.exp()
    naive_ent = -torch.where(p64 > 0, p64 * logp64, torch.zeros((), dtype=torch.float64)).sum(-1)
    torch.testing.assert_close(lp.double(), logp64.gather(-1, tok[:, None]).squeeze(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), naive_ent, atol=1e-5, rtol=0)
    assert torch.isfinite(ent).all()


def test_bf16_logits_sampler_and_scorer_log_probs_agree():
    """A bf16 policy gives bf16 logits. The sampler's with_logps (Rollout.logps) and
    rollout_logps (token_logps) must give the same log-prob of the same token, and both should
    be the float64 log-softmax of those bf16 logits up to float32 rounding: dividing by the
    temperature in bf16 first rounds each logit by up to 2^-9 relative (measured max |diff|
    0.048 for these logits of size ~4 at T = 0.7), which shows up as a PPO ratio != 1 before any
    update. The entropy (entropy_from_logits upcasts first) already agrees."""
    g = torch.Generator().manual_seed(8)
    logits = (torch.randn(64, 300, generator=g) * 4).bfloat16()
    T = 0.7
    tok, lp, ent = _draw(logits, SamplingConfig(temperature=T), torch.Generator().manual_seed(9),
                         greedy=False, with_logps=True)
    ref = torch.log_softmax(logits.double() / T, -1).gather(-1, tok[:, None]).squeeze(-1)
    torch.testing.assert_close(lp.double(), ref, atol=1e-5, rtol=0)  # the sampler: upcasts first
    torch.testing.assert_close(ent, entropy_from_logits(logits, T), atol=1e-5, rtol=0)
    torch.testing.assert_close(token_logps(logits, tok, T), lp, atol=1e-5, rtol=0)  # the scorer
