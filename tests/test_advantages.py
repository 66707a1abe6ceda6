"""Advantage estimators against plain Python loops in float64 and hand-worked numbers."""

import math
import statistics

import pytest
import torch

from rlhf.advantages import (
    CRITIC_ESTIMATORS,
    ESTIMATORS,
    compute_advantages,
    gae,
    grpo_advantages,
    informative_groups,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
)


def _reference_gae(rewards, values, mask, gamma, lam):
    """Naive GAE, one row at a time, over the row's completion positions in Python floats."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        idx = [t for t in range(T) if mask[b][t]]
        next_v, next_a = 0.0, 0.0  # episode ends after the last completion token
        for t in reversed(idx):
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            a = delta + gamma * lam * next_a
            adv[b][t], ret[b][t] = a, a + values[b][t]
            next_v, next_a = values[b][t], a
    return adv, ret


def _layout_mask():
    """(4, 9) masks: prompt then completion then padding; completion reaching the last column;
    a left-padded prompt (completion in the middle); an empty row."""
    return torch.tensor(
        [
            [0, 0, 1, 1, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )


def test_gae_hand_example():
    """T = 3, γ = λ = 0.5, r = (0, 0, 1), V = (0.5, 0.2, 0.4), bootstrap 0 after the last token.

    δ2 = 1 + 0.5·0 - 0.4 = 0.6                 A2 = 0.6
    δ1 = 0 + 0.5·0.4 - 0.2 = 0.0               A1 = 0.0 + 0.25·0.6 = 0.15
    δ0 = 0 + 0.5·0.2 - 0.5 = -0.4              A0 = -0.4 + 0.25·0.15 = -0.3625
    returns = A + V = (0.1375, 0.35, 1.0)
    """
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.2, 0.4]], dtype=torch.float64)
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.5, lam=0.5)
    assert adv[0].tolist() == pytest.approx([-0.3625, 0.15, 0.6], abs=1e-15)
    assert ret[0].tolist() == pytest.approx([0.1375, 0.35, 1.0], abs=1e-15)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.5, 0.0)])
def test_gae_matches_python_loop(gamma, lam):
    """Random rewards/values with NaN garbage at every unmasked position: results equal the naive
    float64 loop at completion tokens (including the last one, bootstrap 0), are exactly 0 at
    unmasked positions, and returns = advantages + values."""
    gen = torch.Generator().manual_seed(1)
    mask = _layout_mask()
    rewards = torch.randn(mask.shape, generator=gen, dtype=torch.float64)
    values = torch.randn(mask.shape, generator=gen, dtype=torch.float64)
    adv_ref, ret_ref = _reference_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    rewards[mask == 0] = float("nan")
    values[mask == 0] = float("nan")
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    assert adv.dtype == torch.float64
    assert torch.equal(adv[mask == 0], torch.zeros_like(adv[mask == 0]))
    assert torch.equal(ret[mask == 0], torch.zeros_like(ret[mask == 0]))
    assert torch.allclose(adv, torch.tensor(adv_ref, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.allclose(ret, torch.tensor(ret_ref, dtype=torch.float64), atol=1e-12, rtol=0)


def test_gae_float32_and_detached():
    """float32 inputs agree with the float64 reference to float32 precision; outputs carry no grad."""
    gen = torch.Generator().manual_seed(2)
    mask = _layout_mask()
    rewards = torch.randn(mask.shape, generator=gen)
    values = torch.randn(mask.shape, generator=gen, requires_grad=True)
    adv_ref, ret_ref = _reference_gae(rewards.double().tolist(), values.double().tolist(), mask.tolist(), 1.0, 0.95)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert not adv.requires_grad and not ret.requires_grad
    assert torch.allclose(adv.double(), torch.tensor(adv_ref, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(ret.double(), torch.tensor(ret_ref, dtype=torch.float64), atol=1e-5)


def test_grpo_advantages_by_hand():
    """Groups of 4. Group 1: scores (1, 0, 0, 1): mean ½, sample std √(4·¼/3) = √(1/3).
    Group 2: (2, 2, 2, 5): mean 2.75, deviations (-.75, -.75, -.75, 2.25), sample variance
    (3·0.5625 + 5.0625)/3 = 2.25, std 1.5. A = (s - mean)/(std + eps)."""
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0], dtype=torch.float64)
    eps = 1e-6
    s1 = math.sqrt(1 / 3)
    expected = [0.5 / (s1 + eps), -0.5 / (s1 + eps), -0.5 / (s1 + eps), 0.5 / (s1 + eps)] + [
        d / (1.5 + eps) for d in (-0.75, -0.75, -0.75, 2.25)
    ]
    assert grpo_advantages(scores, 4, eps=eps).tolist() == pytest.approx(expected, abs=1e-12)


def test_grpo_no_std_option():
    """Dr. GRPO: A = s - group mean, no division (so the two groups keep their different spreads)."""
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    expected = [0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25]
    assert grpo_advantages(scores, 4, scale="none").tolist() == pytest.approx(expected, abs=1e-6)
    adv, _ = compute_advantages("dr_grpo", scores=scores, group_size=4, mask=torch.ones(8, 2))
    assert adv[:, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_grpo_rejects_bad_groups():
    with pytest.raises(ValueError, match="not a whole number of groups"):
        grpo_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        grpo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="unknown scale"):
        grpo_advantages(torch.zeros(4), 2, scale="mad")


def test_rloo_baseline_is_mean_of_the_others():
    """A_i = s_i - mean_{j≠i} s_j, by a naive double loop; and equals K/(K-1)(s_i - mean)."""
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(12, generator=gen, dtype=torch.float64)
    K = 4
    expected = []
    for i, s in enumerate(scores.tolist()):
        g = i // K
        others = [scores[j].item() for j in range(g * K, g * K + K) if j != i]
        expected.append(s - sum(others) / len(others))
    adv = rloo_advantages(scores, K)
    assert adv.tolist() == pytest.approx(expected, abs=1e-12)
    grouped = scores.view(-1, K)
    assert torch.allclose(adv.view(-1, K), K / (K - 1) * (grouped - grouped.mean(-1, keepdim=True)))
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_advantages(scores, 1)


def test_reinforce_pp_return_to_go_then_global_whitening():
    """Row 0 rewards (0, 0, 1) on 3 tokens, row 1 (0.5, -1) on 2 tokens + 1 pad, γ = 1:
    returns-to-go (1, 1, 1) and (-0.5, -1); then whitened over the 5 completion tokens together
    (mean and Bessel-corrected std of all five values), padding 0."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, 99.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    g = [1.0, 1.0, 1.0, -0.5, -1.0]
    mu, sd = statistics.mean(g), statistics.stdev(g)
    expected = [[(x - mu) / sd for x in g[:3]], [(x - mu) / sd for x in g[3:]] + [0.0]]
    out = reinforce_pp_advantages(rewards, mask, gamma=1.0)
    assert out.tolist()[0] == pytest.approx(expected[0], abs=1e-7)
    assert out.tolist()[1] == pytest.approx(expected[1], abs=1e-7)


def test_reinforce_pp_discount():
    """γ = 0.5 on rewards (1, 2, 4): G = (1 + 0.5·2 + 0.25·4, 2 + 0.5·4, 4) = (3, 4, 4), then whitened."""
    out = reinforce_pp_advantages(torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64), torch.ones(1, 3), gamma=0.5)
    g = [3.0, 4.0, 4.0]
    mu, sd = statistics.mean(g), statistics.stdev(g)
    assert out[0].tolist() == pytest.approx([(x - mu) / sd for x in g], abs=1e-7)


def test_remax_uses_the_greedy_score():
    scores = torch.tensor([0.3, 0.9, -0.2, 0.4])
    greedy = torch.tensor([0.5, 0.5, 0.1, 0.1])
    assert remax_advantages(scores, greedy).tolist() == pytest.approx([-0.2, 0.4, -0.3, 0.3], abs=1e-6)
    # One greedy score per prompt, broadcast over that prompt's consecutive samples.
    assert (remax_advantages(scores, torch.tensor([0.5, 0.1])).tolist()
            == pytest.approx([-0.2, 0.4, -0.3, 0.3], abs=1e-6))
    with pytest.raises(ValueError, match="greedy_scores shape"):
        remax_advantages(scores, torch.tensor([0.1, 0.2, 0.3]))


def test_informative_groups_drop_identical_rewards():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0])
    assert informative_groups(scores, 3).tolist() == [False, True, False]
    assert informative_groups(torch.tensor([0.0, 0.05, 1.0, 1.5]), 2, tol=0.1).tolist() == [False, True]


def test_compute_advantages_dispatch():
    """Per-completion advantages are broadcast over the mask; GAE returns its returns; missing
    inputs are named."""
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])
    scores = torch.tensor([1.0, 3.0])
    adv, ret = compute_advantages("rloo", scores=scores, group_size=2, mask=mask, values=torch.zeros(2, 4))
    assert ret is None
    assert adv.tolist() == [[0.0, -2.0, -2.0, 0.0], [0.0, 2.0, 2.0, 2.0]]
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    values = torch.full((2, 4), 0.5)
    adv, ret = compute_advantages("gae", rewards=rewards, values=values, mask=mask, gamma=1.0, lam=1.0, scores=scores)
    ref_adv, ref_ret = gae(rewards, values, mask, 1.0, 1.0)
    assert torch.equal(adv, ref_adv) and torch.equal(ret, ref_ret)
    with pytest.raises(ValueError, match="needs rewards, values"):
        compute_advantages("gae", mask=mask)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        compute_advantages("ppo", mask=mask)
    assert CRITIC_ESTIMATORS <= set(ESTIMATORS)
    assert set(ESTIMATORS) == {"gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "remax"}


def test_token_rewards_closed_form():
    """r_t = -β·kl_t on actions, plus the score on the last action; 0 elsewhere."""
    kl = torch.tensor([[9.0, 0.5, 1.0, 9.0], [9.0, 2.0, 9.0, 9.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    from rlhf.advantages import token_rewards
    r = token_rewards(torch.tensor([3.0, -1.0]), kl, mask, beta=0.1)
    expected = torch.tensor([[0.0, -0.05, -0.1 + 3.0, 0.0], [0.0, -0.2 - 1.0, 0.0, 0.0]])
    torch.testing.assert_close(r, expected)
    with pytest.raises(ValueError, match="no last action"):
        token_rewards(torch.tensor([1.0]), kl[:1], torch.zeros(1, 4), beta=0.1)


def _two_process_run(fn, halves):
    """Run fn(half, reduce) in two threads whose ``reduce`` is an all-reduce (sum) of a scalar
    between them, as torch.distributed would do across two processes."""
    import threading

    barrier = threading.Barrier(2)
    slots = [None, None]
    out = [None, None]

    def reduce_for(rank):
        def reduce(t):
            slots[rank] = t.detach().double()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()  # both have read the slots before either writes the next value
            return total
        return reduce

    def run(rank):
        out[rank] = fn(halves[rank], reduce_for(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_reinforce_pp_global_normalisation_across_processes_equals_one_batch():
    """REINFORCE++ normalises over the global batch: two processes holding half the rows each,
    with ``reduce`` an all-reduce, give exactly the advantages of one process holding all rows
    (and differ from normalising each half alone)."""
    from rlhf.advantages import reinforce_pp_advantages

    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 7, generator=g, dtype=torch.float64)
    mask = torch.ones(6, 7, dtype=torch.float64)
    mask[0, 5:] = 0
    mask[4, 2:] = 0
    rewards[3] += 3.0  # the halves have different means, so local normalisation would differ
    whole = reinforce_pp_advantages(rewards, mask, gamma=0.9)
    halves = [(rewards[:3], mask[:3]), (rewards[3:], mask[3:])]
    a, b = _two_process_run(lambda h, red: reinforce_pp_advantages(h[0], h[1], gamma=0.9, reduce=red), halves)
    torch.testing.assert_close(torch.cat([a, b]), whole, rtol=0, atol=1e-12)
    local = reinforce_pp_advantages(rewards[:3], mask[:3], gamma=0.9)
    assert (local - whole[:3]).abs().max() > 0.1


def test_estimator_settings_live_beside_the_estimator():
    """ESTIMATOR_SPECS is the one table: ESTIMATORS and CRITIC_ESTIMATORS are read from it, and
    it holds what the PPO loop used to hard-code per name."""
    from rlhf.advantages import ESTIMATOR_SPECS

    assert {n: s.fn for n, s in ESTIMATOR_SPECS.items()} == ESTIMATORS
    assert CRITIC_ESTIMATORS == {"gae"}
    assert {n for n, s in ESTIMATOR_SPECS.items() if s.min_group >= 2} == {"grpo", "dr_grpo", "rloo"}
    assert {n for n, s in ESTIMATOR_SPECS.items() if s.kl_placement == "loss"} == {"grpo", "dr_grpo"}
    assert {n for n, s in ESTIMATOR_SPECS.items() if s.aggregation != "token_mean"} == {"dr_grpo"}
    assert {n for n, s in ESTIMATOR_SPECS.items() if s.whiten} == {"gae"}
    assert {n for n, s in ESTIMATOR_SPECS.items() if s.greedy_baseline} == {"remax"}
