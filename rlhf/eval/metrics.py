"""Evaluation metrics as pure functions of numbers and strings (no models, no files).

Every function here is checked in tests/eval/test_metrics.py against an independent reference
(a value worked out by hand, brute-force enumeration, or a closed form). docs/evaluation.md
explains what each number means and where it misleads.

Best-of-n notation: π is the policy sampled from, r(y) the reward of a sample. Best-of-n draws
y_1..y_n i.i.d. from π and returns the one with the highest reward. Its distribution π_BoN
differs from π; the price is measured by KL(π_BoN || π):

* ``best_of_n_kl_bound(n) = log n - (n-1)/n``: the value when rewards have no ties (a
  continuous reward distribution). Stiennon et al. 2020 use it as "the" best-of-n
  KL; Beirami et al. 2024 ("Theoretical guarantees on the best-of-n alignment policy") show
  that it is an upper bound, reached only in that tie-free limit.
* ``best_of_n_kl_exact``: the exact KL for a categorical π with given rewards, ties included.
* ``best_of_n_kl_estimate``: the exact KL computed on the empirical distribution of a pool of
  samples per prompt (a plug-in estimate, see its caveats).
* ``best_of_n_curve``: the expected best reward for every n from one pool (unbiased).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rlhf.stats import wilson_interval

__all__ = ["distinct_n", "mean_stderr", "win_rate", "sequence_kl", "best_of_n_kl_bound",
           "best_of_n_distribution", "best_of_n_kl_exact", "best_of_n_kl_estimate",
           "best_of_n_curve"]


def _floats(x: Any, what: str) -> list[float]:
    """A 1-D sequence (list, tuple, tensor, numpy array) as a list of finite Python floats."""
    if torch.is_tensor(x):
        x = x.detach().double().flatten().tolist()
    values = [float(v) for v in x]
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ValueError(f"{what}: value {i} is {v}; expected a finite number")
    return values


# --------------------------------------------------------------------------- text and rewards


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams over the whole set of texts.

    Tokens are whitespace-separated words (``str.split()``); n-grams are taken within each
    text, never across two texts, and counted over the set, so repeating one response many
    times lowers the score. A text with fewer than n words contributes nothing; a set with no
    n-gram at all gives 0.0.
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1 (got {n})")
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def mean_stderr(values: Any, group_size: int = 1) -> dict[str, float]:
    """``{"mean", "stderr", "n"}``: the sample mean and its standard error.

    With ``group_size = 1`` the samples are taken as independent: stderr = s / sqrt(n), s the
    Bessel-corrected standard deviation. With ``group_size = g > 1`` the values come in
    consecutive groups of g (g samples of the same prompt): samples of one prompt are
    correlated through the prompt, so the standard error is computed over the G = n / g group
    means instead (a cluster-robust standard error; the mean itself is unchanged). ``n`` counts
    the independent units (samples, or groups). ``stderr`` is nan with fewer than 2 units;
    both are nan with none.
    """
    x = _floats(values, "mean_stderr")
    if group_size < 1 or len(x) % group_size:
        raise ValueError(f"mean_stderr: {len(x)} values do not split into groups of {group_size}")
    if group_size > 1:
        x = [math.fsum(x[i:i + group_size]) / group_size for i in range(0, len(x), group_size)]
    n = len(x)
    if n == 0:
        return {"mean": float("nan"), "stderr": float("nan"), "n": 0}
    mean = math.fsum(x) / n
    if n < 2:
        return {"mean": mean, "stderr": float("nan"), "n": 1}
    var = math.fsum((v - mean) ** 2 for v in x) / (n - 1)
    return {"mean": mean, "stderr": math.sqrt(var / n), "n": n}


def win_rate(scores_a: Any, scores_b: Any) -> dict[str, Any]:
    """How often A beats B on paired scores: ``scores_a[i]`` against ``scores_b[i]``.

    Returns ``{"win_rate", "wins", "ties", "losses", "n", "ci95"}`` with
    win_rate = (wins + ties / 2) / n (a tie counts half, so swapping A and B gives 1 - win_rate)
    and ci95 the Wilson score interval (:func:`rlhf.stats.wilson_interval`) of that proportion.
    Without ties each pair is a Bernoulli trial and the interval is the usual one; with ties
    the per-pair outcome x in {0, 1/2, 1} has variance E[x²] - p² <= p - p² (since x² <= x),
    so the binomial interval is conservative (too wide, never too narrow). A tie is exact
    equality of the two scores.
    """
    a, b = _floats(scores_a, "win_rate scores_a"), _floats(scores_b, "win_rate scores_b")
    if len(a) != len(b):
        raise ValueError(f"win_rate: {len(a)} scores for A but {len(b)} for B; they are compared in pairs")
    wins = sum(x > y for x, y in zip(a, b))
    ties = sum(x == y for x, y in zip(a, b))
    n = len(a)
    score = wins + 0.5 * ties
    return {"win_rate": score / n if n else float("nan"), "wins": wins, "ties": ties,
            "losses": n - wins - ties, "n": n, "ci95": list(wilson_interval(score, n))}


def sequence_kl(logps_policy: Any, logps_ref: Any, group_size: int = 1) -> dict[str, float]:
    """Monte-Carlo KL(π || π_ref) from samples y_i ~ π: mean and standard error of
    log π(y_i) - log π_ref(y_i).

    ``logps_policy[i]`` and ``logps_ref[i]`` are the summed log-probs of sample i's tokens
    under each model. KL(π || π_ref) = E_{y~π}[log π(y) - log π_ref(y)], so the mean is
    unbiased; a single term can be negative, and so can the mean of few samples. The
    estimate is only a KL when the samples really come from π (see docs/evaluation.md on
    temperature and top-p). ``group_size``: samples per prompt, consecutive (see
    :func:`mean_stderr`). Returns ``{"mean", "stderr", "n"}``.
    """
    p, q = _floats(logps_policy, "sequence_kl logps_policy"), _floats(logps_ref, "sequence_kl logps_ref")
    if len(p) != len(q):
        raise ValueError(f"sequence_kl: {len(p)} policy log-probs but {len(q)} reference log-probs")
    return mean_stderr([x - y for x, y in zip(p, q)], group_size)


# --------------------------------------------------------------------------- best-of-n


def best_of_n_kl_bound(n: int) -> float:
    """log n - (n-1)/n: KL(π_BoN || π) for a reward without ties, an upper bound otherwise.

    Derivation (no ties): let u = F(r(y)) be a sample's reward quantile, uniform on [0, 1]
    under π. The best of n has quantile density n u^(n-1), so π_BoN(y) = n F(r(y))^(n-1) π(y) and
    KL = ∫ n u^(n-1) log(n u^(n-1)) du = log n + (n-1) ∫ n u^(n-1) log u du = log n - (n-1)/n.
    """
    if n < 1:
        raise ValueError(f"best_of_n_kl_bound: n must be >= 1 (got {n})")
    return math.log(n) - (n - 1) / n


def _levels(probs: list[float], rewards: list[float]) -> tuple[list[float], list[float]]:
    """Reward levels in increasing order: (their rewards, their total probability mass)."""
    mass: dict[float, float] = {}
    for p, r in zip(probs, rewards):
        if p > 0:
            mass[r] = mass.get(r, 0.0) + p
    order = sorted(mass)
    return order, [mass[r] for r in order]


def _check_categorical(probs: Any, rewards: Any, n: int) -> tuple[list[float], list[float]]:
    p = _floats(probs, "best-of-n probs")
    r = _floats(rewards, "best-of-n rewards")
    if len(p) != len(r) or not p:
        raise ValueError(f"best-of-n: need one reward per outcome (got {len(p)} probabilities, {len(r)} rewards)")
    if any(x < 0 for x in p) or abs(math.fsum(p) - 1.0) > 1e-6:
        raise ValueError(f"best-of-n: probs must be >= 0 and sum to 1 (sum is {math.fsum(p):.8g})")
    if n < 1:
        raise ValueError(f"best-of-n: n must be >= 1 (got {n})")
    total = math.fsum(p)
    return [x / total for x in p], r


def _level_winner_probs(masses: list[float], n: int) -> list[float]:
    """P(the best of n samples lies in level l) = F_l^n - F_{l-1}^n, F the cumulative mass."""
    out, below = [], 0.0
    for i, m in enumerate(masses):
        # the top level's cumulative mass is exactly 1 (no rounding left over)
        upto = 1.0 if i == len(masses) - 1 else min(1.0, below + m)
        out.append(upto ** n - below ** n)
        below = upto
    return out


def best_of_n_distribution(probs: Any, rewards: Any, n: int) -> list[float]:
    """π_BoN(k) for a categorical π (``probs``) with reward ``rewards[k]`` per outcome k.

    Tie rule: when several of the n samples share the highest reward, one of THOSE SAMPLES is
    chosen uniformly at random (not one of the distinct outcomes). Then, given that the best
    reward is level v, the chosen sample is distributed as π restricted to {k: r_k = v}, so

        π_BoN(k) = π(k) / P(v) · (F(v)^n - F(v⁻)^n),    v = r_k,

    with P(v) the mass of level v, F(v) = P(r <= v) and F(v⁻) = P(r < v).
    """
    p, r = _check_categorical(probs, rewards, n)
    levels, masses = _levels(p, r)
    q = dict(zip(levels, _level_winner_probs(masses, n)))
    m = dict(zip(levels, masses))
    return [pk / m[rk] * q[rk] if pk > 0 else 0.0 for pk, rk in zip(p, r)]


def best_of_n_kl_exact(probs: Any, rewards: Any, n: int) -> float:
    """Exact KL(π_BoN || π) in nats for a categorical π, with the tie rule of
    :func:`best_of_n_distribution`.

    Within a reward level π_BoN is proportional to π, so the KL depends only on the levels'
    masses P_l and best-of-n probabilities q_l = F_l^n - F_{l-1}^n: KL = Σ_l q_l log(q_l / P_l).
    It depends on the rewards only through their order and ties. It equals 0 for n = 1 or a
    constant reward, and is always <= :func:`best_of_n_kl_bound` (merging levels is a coarsening,
    which cannot raise a KL; the tie-free continuum is the finest case). For K equally likely
    outcomes with distinct rewards it approaches the bound from below as K grows.
    """
    p, r = _check_categorical(probs, rewards, n)
    if n == 1:
        return 0.0  # π_BoN = π exactly (the sum below would leave rounding error)
    _, masses = _levels(p, r)
    kl = 0.0
    for q, m in zip(_level_winner_probs(masses, n), masses):
        if q > 0:
            kl += q * math.log(q / m)
    return max(kl, 0.0)


def _pools(pool_rewards: Any, n: int, what: str) -> list[list[float]]:
    # tensors and numpy arrays -> nested lists; lists of lists (possibly ragged) stay as they are
    rows = pool_rewards.tolist() if hasattr(pool_rewards, "tolist") else list(pool_rewards)
    if not rows:
        raise ValueError(f"{what}: no prompts in the pool")
    out = []
    for i, row in enumerate(rows):
        vals = _floats(row, f"{what} prompt {i}")
        if len(vals) < n:
            raise ValueError(f"{what}: prompt {i} has {len(vals)} samples in its pool; "
                             f"n={n} needs at least n")
        out.append(vals)
    return out


def best_of_n_kl_estimate(pool_rewards: Any, n: int) -> float:
    """The best-of-n KL measured on a pool: :func:`best_of_n_kl_exact` on each prompt's empirical
    distribution (its M >= n samples, mass 1/M each, identical rewards tied), averaged over prompts.

    ``pool_rewards``: (num_prompts, M) nested lists/array/tensor (M may differ per prompt).
    What it captures is ties: discrete rewards (0/1 checks) or a policy that often repeats the
    same completion make the true KL much smaller than the bound, and the pool shows it. Its
    caveat: it is a plug-in estimate, biased low. With M distinct rewards it equals the KL of
    M equally likely outcomes whatever the rewards are: for n = 4 it gives 0.590 with M = 4,
    0.625 with M = 8 and 0.633 with M = 16, against the bound 0.636. A pool a few times larger
    than n makes this part of the bias small.
    """
    if n < 1:
        raise ValueError(f"best_of_n_kl_estimate: n must be >= 1 (got {n})")
    pools = _pools(pool_rewards, n, "best_of_n_kl_estimate")
    return math.fsum(best_of_n_kl_exact([1.0 / len(row)] * len(row), row, n) for row in pools) / len(pools)


def best_of_n_curve(rewards_matrix: Any, ns: Sequence[int]) -> list[float]:
    """Expected best-of-n reward for each n in ``ns``, from one pool of M samples per prompt.

    For one prompt with pool rewards sorted ascending r_(1) <= ... <= r_(M), the mean of
    max(subset) over all C(M, n) subsets of size n is

        E_n = Σ_{i=n}^{M} C(i-1, n-1) / C(M, n) · r_(i)

    (r_(i) is the maximum of exactly C(i-1, n-1) subsets: those holding i and n-1 of the
    i-1 below it). It is an unbiased estimate of E[max of n i.i.d. rewards] (a U-statistic),
    so a single pool gives the whole curve without resampling. Returned: E_n averaged over
    prompts, one float per entry of ``ns`` (each 1 <= n <= M). E_1 is the pool mean, E_M the
    pool maximum, and the curve never decreases in n.
    """
    ns = list(ns)
    if not ns:
        return []
    if min(ns) < 1:
        raise ValueError(f"best_of_n_curve: every n must be >= 1 (got {ns})")
    pools = _pools(rewards_matrix, max(ns), "best_of_n_curve")
    out = []
    for n in ns:
        total = 0.0
        for row in pools:
            M = len(row)
            r = sorted(row)
            denom = math.comb(M, n)
            # exact integer weights, divided once: no overflow or cancellation for large M
            total += math.fsum(math.comb(i - 1, n - 1) / denom * r[i - 1] for i in range(n, M + 1))
        out.append(total / len(pools))
    return out
