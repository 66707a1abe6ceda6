"""Evaluation metrics against values worked out by hand, brute force and closed forms."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
import torch

from rlhf.eval.metrics import (
    best_of_n_curve,
    best_of_n_distribution,
    best_of_n_kl_bound,
    best_of_n_kl_estimate,
    best_of_n_kl_exact,
    distinct_n,
    mean_stderr,
    sequence_kl,
    win_rate,
)

Z = 1.959964


# --------------------------------------------------------------------------- distinct-n


def test_distinct_n_by_hand():
    """["a b a b", "a c", "x"]: unigrams a b a b a c x -> 7 in all, {a, b, c, x} unique: 4/7.
    Bigrams (within a text only): (a b) (b a) (a b) | (a c) | none -> 4 in all, 3 unique: 3/4.
    Trigrams: (a b a) (b a b) -> 2/2. No 5-gram anywhere -> 0."""
    texts = ["a b a b", "a c", "x"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == 1.0
    assert distinct_n(texts, 5) == 0.0
    # n-grams never cross two texts: "b" + "a" at the seam of ["a b", "a b"] is not a bigram.
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    # whitespace of any kind separates words
    assert distinct_n(["a\tb\n a"], 1) == pytest.approx(2 / 3)
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_n(texts, 0)


# --------------------------------------------------------------------------- means, win rate, KL


def test_mean_stderr_matches_statistics_module_and_clusters_by_prompt():
    x = [1.0, 4.0, 2.0, 7.0, 3.0, 5.0]
    d = mean_stderr(x)
    assert d["n"] == 6
    assert d["mean"] == pytest.approx(statistics.mean(x))
    assert d["stderr"] == pytest.approx(statistics.stdev(x) / math.sqrt(6))
    # groups of 2 consecutive values (2 samples per prompt): units are the means 2.5, 4.5, 4.0
    g = mean_stderr(x, group_size=2)
    assert g["n"] == 3 and g["mean"] == pytest.approx(d["mean"])
    assert g["stderr"] == pytest.approx(statistics.stdev([2.5, 4.5, 4.0]) / math.sqrt(3))
    assert math.isnan(mean_stderr([3.0])["stderr"]) and mean_stderr([3.0])["mean"] == 3.0
    with pytest.raises(ValueError, match="groups of 4"):
        mean_stderr(x, group_size=4)
    with pytest.raises(ValueError, match="finite"):
        mean_stderr([1.0, float("nan")])


def test_win_rate_by_hand():
    """Pairs (3,1) win, (1,1) tie, (2,3) loss, (2,0) win: (2 + 1/2) / 4 = 0.625. The interval is
    Wilson's with 2.5 successes of 4, written out here: centre (p + z²/2n) / (1 + z²/n),
    half-width z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)."""
    w = win_rate([3, 1, 2, 2], [1, 1, 3, 0])
    assert (w["wins"], w["ties"], w["losses"], w["n"]) == (2, 1, 1, 4)
    assert w["win_rate"] == 0.625
    p, n = 0.625, 4
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    assert w["ci95"] == pytest.approx([centre - half, centre + half], abs=1e-9)
    # Swapping the sides gives 1 - win rate; a model against itself wins half.
    assert win_rate([1, 1, 3, 0], [3, 1, 2, 2])["win_rate"] == 0.375
    assert win_rate([5, 6], [5, 6])["win_rate"] == 0.5
    with pytest.raises(ValueError, match="compared in pairs"):
        win_rate([1, 2], [1])


def test_sequence_kl_of_a_policy_against_itself_is_zero():
    lp = torch.tensor([-3.5, -10.25, -1.0])
    assert sequence_kl(lp, lp) == {"mean": 0.0, "stderr": 0.0, "n": 3}


def test_sequence_kl_is_unbiased_for_a_categorical():
    """y_i ~ p (20 000 draws): the mean of log p(y) - log q(y) must fall within 4 standard errors
    of the exact Σ p log(p/q), and the standard error must be the one of the differences."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())  # 0.2186...
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(p, 20_000, replacement=True, generator=g)
    est = sequence_kl(p.log()[y], q.log()[y])
    d = (p.log()[y] - q.log()[y]).tolist()
    assert est["stderr"] == pytest.approx(statistics.stdev(d) / math.sqrt(len(d)))
    assert abs(est["mean"] - exact) < 4 * est["stderr"]
    assert est["stderr"] < 0.01  # the check above is tight: 4 stderr < 0.04 of 0.22


# --------------------------------------------------------------------------- best-of-n


def _brute_force_bon(probs, rewards, n):
    """Enumerate every n-tuple of outcomes with its probability; the best reward's samples
    share the choice equally (ties broken uniformly among tied SAMPLES)."""
    K = len(probs)
    out = [0.0] * K
    for tup in itertools.product(range(K), repeat=n):
        pr = math.prod(probs[k] for k in tup)
        top = max(rewards[k] for k in tup)
        tied = [k for k in tup if rewards[k] == top]
        for k in tied:
            out[k] += pr / len(tied)
    return out


def _kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


@pytest.mark.parametrize("rewards", [[0.3, 1.0, -2.0, 0.5],   # distinct
                                     [1.0, 0.5, 1.0, 2.0],    # outcomes 0 and 2 tie
                                     [1.0, 1.0, 1.0, 0.0],    # three-way tie at the top
                                     [7.0, 7.0, 7.0, 7.0]])   # constant reward
@pytest.mark.parametrize("n", [1, 2, 3])
def test_best_of_n_distribution_and_kl_equal_brute_force(rewards, n):
    probs = [0.1, 0.2, 0.3, 0.4]
    want = _brute_force_bon(probs, rewards, n)
    assert sum(want) == pytest.approx(1.0)
    assert best_of_n_distribution(probs, rewards, n) == pytest.approx(want, abs=1e-12)
    assert best_of_n_kl_exact(probs, rewards, n) == pytest.approx(_kl(want, probs), abs=1e-12)


def test_best_of_n_kl_two_outcomes_closed_form():
    """Two equally likely outcomes, rewards 0 < 1, n = 2: the best is outcome 1 unless both
    draws are 0, so π_BoN = (1/4, 3/4) and KL = 1/4 log(1/2) + 3/4 log(3/2) = 0.13081."""
    want = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert best_of_n_kl_exact([0.5, 0.5], [0.0, 1.0], 2) == pytest.approx(want, abs=1e-15)
    assert want == pytest.approx(0.13081, abs=1e-5)


def test_best_of_n_kl_bound_values():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl_bound(16) == pytest.approx(2.772588722 - 0.9375, abs=1e-9)
    with pytest.raises(ValueError):
        best_of_n_kl_bound(0)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_many_equiprobable_distinct_outcomes_approach_the_bound_from_below(n):
    """K equally likely outcomes with distinct rewards: q_l = (l/K)^n - ((l-1)/K)^n → n u^(n-1)/K,
    the continuous case, so KL → log n - (n-1)/n as K → ∞. For finite K the KL is strictly
    below it (a finite categorical is a coarsening of the continuum) and rises with K.
    Measured: the gap shrinks like 1/K² (7.5e-5 at K = 100, 7.5e-7 at K = 1000 for n = 4)."""
    bound = best_of_n_kl_bound(n)
    kls = [best_of_n_kl_exact([1 / K] * K, list(range(K)), n) for K in (2, 5, 20, 100, 1000)]
    assert all(a < b for a, b in zip(kls, kls[1:]))
    assert all(k < bound for k in kls)
    assert bound - kls[-1] < 1e-4 * bound


def test_ties_lower_the_kl_and_only_order_matters():
    """Merging two reward levels coarsens π_BoN and π alike, so the KL strictly drops; a
    monotone transformation of the rewards leaves it unchanged (only order and ties matter)."""
    probs = [0.25] * 4
    distinct = best_of_n_kl_exact(probs, [1, 2, 3, 4], 3)
    merged_top = best_of_n_kl_exact(probs, [1, 2, 3, 3], 3)
    merged_bottom = best_of_n_kl_exact(probs, [1, 1, 3, 4], 3)
    assert merged_top < distinct and merged_bottom < distinct < best_of_n_kl_bound(3)
    assert best_of_n_kl_exact(probs, [math.exp(r) for r in (1, 2, 3, 3)], 3) == pytest.approx(merged_top, abs=1e-15)
    assert best_of_n_kl_exact(probs, [5.0] * 4, 3) == 0.0
    assert best_of_n_kl_exact([0.3, 0.7], [1.0, 0.0], 1) == 0.0


def test_best_of_n_input_errors():
    with pytest.raises(ValueError, match="sum to 1"):
        best_of_n_kl_exact([0.5, 0.6], [0, 1], 2)
    with pytest.raises(ValueError, match="one reward per outcome"):
        best_of_n_kl_exact([0.5, 0.5], [0, 1, 2], 2)
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n_kl_exact([1.0], [0.0], 0)
    with pytest.raises(ValueError, match="at least n"):
        best_of_n_kl_estimate([[1.0, 2.0], [1.0, 2.0, 3.0]], 3)
    with pytest.raises(ValueError, match="finite"):
        best_of_n_kl_estimate([[1.0, float("inf")]], 1)


def test_kl_estimate_on_binary_rewards_equals_the_closed_form():
    """A 0/1 reward (a verifiable check) with success rate p: the best of n succeeds with
    probability s = 1 - (1-p)^n, so KL = s log(s/p) + (1-s) log((1-s)/(1-p)). Pools of 8 with 2
    and 6 successes: p = 1/4 and 3/4; the estimate averages the two prompts' values."""
    def binary(p, n):
        s = 1 - (1 - p) ** n
        return s * math.log(s / p) + (1 - s) * math.log((1 - s) / (1 - p))
    pools = [[0, 1, 0, 0, 0, 1, 0, 0], [1, 1, 0, 1, 1, 0, 1, 1]]
    want = (binary(0.25, 4) + binary(0.75, 4)) / 2
    assert best_of_n_kl_estimate(pools, 4) == pytest.approx(want, abs=1e-12)
    assert best_of_n_kl_estimate(torch.tensor(pools, dtype=torch.float32), 4) == pytest.approx(want, abs=1e-12)
    assert want < best_of_n_kl_bound(4) - 0.25  # ties: 0.34 nats against the bound's 0.64


def test_kl_estimate_with_distinct_rewards_is_the_uniform_categorical():
    """M distinct pool rewards: each prompt's empirical distribution is M equally likely
    outcomes with distinct rewards, whatever the values (this is the estimator's low bias)."""
    rng = random.Random(0)
    pools = [[rng.gauss(0, 1) for _ in range(12)] for _ in range(3)]
    want = best_of_n_kl_exact([1 / 12] * 12, list(range(12)), 4)
    assert best_of_n_kl_estimate(pools, 4) == pytest.approx(want, abs=1e-12)


def _brute_force_curve(pool, n):
    subsets = list(itertools.combinations(pool, n))
    return sum(max(s) for s in subsets) / len(subsets)


def test_best_of_n_curve_equals_the_mean_over_all_subsets():
    """Against brute force: the mean of max over every n-subset of each prompt's pool (with
    ties and ragged pools), averaged over prompts."""
    rng = random.Random(1)
    pools = [[rng.randint(0, 4) for _ in range(9)], [rng.gauss(0, 1) for _ in range(9)],
             [rng.randint(0, 1) for _ in range(9)]]
    ns = list(range(1, 10))
    got = best_of_n_curve(pools, ns)
    want = [sum(_brute_force_curve(p, n) for p in pools) / 3 for n in ns]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] == pytest.approx(sum(map(sum, pools)) / 27)  # n = 1: the pool mean
    assert got[-1] == pytest.approx(sum(map(max, pools)) / 3)  # n = M: the pool maximum
    assert all(a <= b + 1e-12 for a, b in zip(got, got[1:]))
    # A larger pool of 30 (ints, many ties): still monotone, matches brute force at n = 3.
    big = [[rng.randint(0, 3) for _ in range(30)]]
    c = best_of_n_curve(big, range(1, 31))
    assert all(a <= b + 1e-12 for a, b in zip(c, c[1:]))
    assert c[2] == pytest.approx(_brute_force_curve(big[0], 3), abs=1e-12)
    with pytest.raises(ValueError, match="at least n"):
        best_of_n_curve(pools, [10])
