"""GSPO, CISPO, DAPO's overlong penalty and dynamic sampling, on-policy distillation's reward:
values and gradients worked out by hand, naive float64 loops over the papers' equations, and
exact properties (tolerances: float64 inputs, so 1e-12 where the computation is a few
operations; the loop references reassociate sums, measured differences below 1e-15)."""

import math

import pytest
import torch

from rlhf.advantages import (
    compute_advantages,
    degenerate_groups,
    distillation_rewards,
    dynamic_sample,
)
from rlhf.logprobs import token_logps
from rlhf.losses.policy import (
    POLICY_LOSS_SPECS,
    POLICY_LOSSES,
    cispo_loss,
    gspo_loss,
    overlong_penalty,
    ppo_clip_loss,
    resolve_clip,
)
from rlhf.masking import count_units

# --------------------------------------------------------------------------- GSPO


def _gspo_rows():
    """Three completions, ε_low = ε_high = 0.1 (clip range [0.9, 1.1]):

    row 0: 2 tokens, log-ratios (0.1, 0.3) → mean 0.2, s = e^0.2 ≈ 1.2214 > 1.1, A = +1:
           clipped, loss -1.1, no gradient.
    row 1: 3 tokens, log-ratios (-0.3, 0, 0.15) → mean -0.05, s = e^-0.05 ≈ 0.9512, A = -2:
           inside the range, loss -A s = 2 e^-0.05, d/dlogp_t = -A s / 3 each.
    row 2: 1 token then padding (garbage), log-ratio -0.5, s = e^-0.5, A = +0.5: below 0.9 but
           moved against the advantage, so NOT clipped: loss -0.5 e^-0.5, d/dlogp = -0.5 e^-0.5.
    Loss = mean over the 3 completions; each gradient is divided by N = 3.
    """
    log_ratio = torch.tensor([[0.1, 0.3, 0.0], [-0.3, 0.0, 0.15], [-0.5, 7.0, -3.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    old = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, -1.5, -2.5], [-1.0, float("-inf"), 0.0]],
                       dtype=torch.float64)
    logps = torch.where(mask.bool(), old + log_ratio, torch.full_like(old, 1e30))
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    return logps, old, adv, mask


def test_gspo_by_hand():
    logps, old, adv, mask = _gspo_rows()
    logps.requires_grad_(True)
    loss, metrics = gspo_loss(logps, old, adv, mask, clip_low=0.1, clip_high=0.1)
    s1, s2 = math.exp(-0.05), math.exp(-0.5)
    assert loss.item() == pytest.approx((-1.1 + 2 * s1 - 0.5 * s2) / 3, abs=1e-12)
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 3)
    assert metrics["ratio"].item() == pytest.approx((math.exp(0.2) + s1 + s2) / 3, abs=1e-12)
    loss.backward()
    expected = [[0.0, 0.0, 0.0], [2 * s1 / 3 / 3] * 3, [-0.5 * s2 / 3, 0.0, 0.0]]
    assert logps.grad.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]


def _gspo_reference(logps, old, adv, mask, eps_low, eps_high):
    """GSPO eq. (5)-(7) one sequence at a time in Python/float64 autograd:
    J = (1/N) Σ_i min(s_i A_i, clip(s_i, 1-ε_low, 1+ε_high) A_i), s_i = exp(mean_t log-ratio)."""
    terms = []
    for i in range(logps.shape[0]):
        idx = [t for t in range(logps.shape[1]) if mask[i, t]]
        log_s = sum(logps[i, t] - old[i, t] for t in idx) / len(idx)
        s = torch.exp(log_s)
        terms.append(torch.minimum(s * adv[i], torch.clamp(s, 1 - eps_low, 1 + eps_high) * adv[i]))
    return -sum(terms) / len(terms)


@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.1, 0.2)])
def test_gspo_matches_the_paper_loop_value_and_gradient(eps):
    """Random rows of different lengths, old log-probs close enough that some sequences fall
    inside the tiny default range and some outside; value and gradient equal the naive loop."""
    gen = torch.Generator().manual_seed(3)
    B, T = 6, 7
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    noise = 2e-3 if eps[0] < 1e-3 else 0.3
    base = old + noise * torch.randn(B, T, generator=gen, dtype=torch.float64)
    lengths = [7, 1, 4, 6, 2, 5]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    a = base.clone().requires_grad_(True)
    loss, metrics = gspo_loss(a, old, adv, mask, clip_low=eps[0], clip_high=eps[1])
    loss.backward()
    b = base.clone().requires_grad_(True)
    ref = _gspo_reference(b, old, adv, mask, *eps)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    assert 0 < metrics["clip_fraction"].item() < 1  # both branches are exercised
    # GSPO's gradient weighs every token of a sequence alike: one value per row.
    for i, n in enumerate(lengths):
        row = a.grad[i, :n]
        assert torch.allclose(row, row[0].expand_as(row), atol=1e-15)
        assert (a.grad[i, n:] == 0).all()


def test_gspo_with_one_token_per_sequence_is_ppo_clip():
    """With |y_i| = 1 the sequence ratio is the token ratio and sequence_mean = token_mean."""
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(8, 1, generator=gen, dtype=torch.float64)
    lp = (old + 0.3 * torch.randn(8, 1, generator=gen, dtype=torch.float64))
    adv = torch.randn(8, generator=gen, dtype=torch.float64)
    mask = torch.ones(8, 1)
    a, b = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    g, _ = gspo_loss(a, old, adv, mask, clip_low=0.2, clip_high=0.2)
    p, _ = ppo_clip_loss(b, old, adv, mask, clip_low=0.2)
    (g + p).backward()  # one backward each would do; gradients are independent
    assert g.item() == pytest.approx(p.item(), abs=1e-12)
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_gspo_microbatches_with_the_global_sequence_count_sum_to_the_batch():
    logps, old, adv, mask = _gspo_rows()
    full, _ = gspo_loss(logps, old, adv, mask, clip_low=0.1, clip_high=0.1)
    denom = count_units(mask, "sequence_mean")
    parts = [gspo_loss(logps[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], clip_low=0.1, clip_high=0.1,
                       denominator=denom)[0] for i in range(3)]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), abs=1e-12)


def test_gspo_takes_broadcast_sequence_advantages_and_refuses_token_ones():
    """compute_advantages broadcasts a group estimator's (B,) over the mask: accepted and equal
    to passing (B,). GAE-like advantages varying inside a completion are refused."""
    logps, old, adv, mask = _gspo_rows()
    adv_bt, _ = compute_advantages("remax", scores=adv, greedy_scores=torch.zeros(3, dtype=torch.float64),
                                   mask=mask)
    a, _ = gspo_loss(logps, old, adv, mask)
    b, _ = gspo_loss(logps, old, adv_bt, mask)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    varying = adv_bt.clone()
    varying[1, 2] += 0.5
    with pytest.raises(ValueError, match="one advantage per completion"):
        gspo_loss(logps, old, varying, mask)


# --------------------------------------------------------------------------- CISPO


def test_cispo_by_hand():
    """Row 0: π = (0.1, 0.2, 0.4), π_old = (0.2, 0.2, 0.2) → r = (0.5, 1, 2); row 1: π = 0.8,
    π_old = 0.1 → r = 8, then padding holding garbage. ε_high = 2 (cap 3), no lower bound:
    r̂ = (0.5, 1, 2, 3). A = (1, -1, 1) on row 0 and 1 on row 1. Token-level mean over 4 tokens:

        loss = -(1/4) (0.5·1·ln 0.1 + 1·(-1)·ln 0.2 + 2·1·ln 0.4 + 3·1·ln 0.8)
        d loss / d log π_t = -r̂_t A_t / 4 = (-0.125, 0.25, -0.5 | -0.75)

    The r = 8 token is clipped, yet keeps a gradient (PPO's clip would give it none)."""
    p = torch.tensor([[0.1, 0.2, 0.4], [0.8, 1.0, 1.0]], dtype=torch.float64)
    p_old = torch.tensor([[0.2, 0.2, 0.2], [0.1, 1e-300, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([[1.0, -1.0, 1.0], [1.0, float("nan"), float("inf")]], dtype=torch.float64)
    logps = p.log().requires_grad_(True)
    loss, metrics = cispo_loss(logps, p_old.log(), adv, mask, clip_low=None, clip_high=2.0)
    expected = -(0.5 * math.log(0.1) - math.log(0.2) + 2 * math.log(0.4) + 3 * math.log(0.8)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 4)
    assert metrics["ratio"].item() == pytest.approx((0.5 + 1 + 2 + 8) / 4, abs=1e-12)
    loss.backward()
    assert logps.grad.tolist() == [pytest.approx([-0.125, 0.25, -0.5], abs=1e-12),
                                   pytest.approx([-0.75, 0.0, 0.0], abs=1e-12)]
    # A lower bound ε_low = 0.2 lifts the r = 0.5 weight to 0.8: gradient -0.8 / 4 = -0.2.
    logps.grad = None
    loss, metrics = cispo_loss(logps, p_old.log(), adv, mask, clip_low=0.2, clip_high=2.0)
    loss.backward()
    assert logps.grad[0, 0].item() == pytest.approx(-0.2, abs=1e-12)
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 4)
    # PPO on the same tokens: the clipped r = 8, A > 0 token gets no gradient.
    lp = p.log().requires_grad_(True)
    ppo, _ = ppo_clip_loss(lp, p_old.log(), adv, mask, clip_low=0.2, clip_high=2.0)
    ppo.backward()
    assert lp.grad[1, 0].item() == 0.0


def test_cispo_gradient_is_the_clipped_weight_times_grad_log_pi():
    """On a small categorical policy (logits θ: B rows × T positions × V), the gradient of the
    loss w.r.t. θ equals Σ_t -(r̂_t A_t / N) ∇θ log π(a_t), each ∇θ log π(a_t) taken
    separately by autograd, with r̂ the clipped ratio computed by hand in a loop; no gradient
    flows through r̂. Token-level normalisation: N = all tokens of the batch."""
    gen = torch.Generator().manual_seed(5)
    B, T, V = 3, 4, 6
    theta = torch.randn(B, T, V, generator=gen, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    old = token_logps(theta.detach() + 0.3 * torch.randn(B, T, V, generator=gen, dtype=torch.float64), actions)
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    eps_low, eps_high = 0.2, 0.5
    loss, _ = cispo_loss(token_logps(theta, actions), old, adv, mask, clip_low=eps_low, clip_high=eps_high)
    (grad,) = torch.autograd.grad(loss, theta)

    n = int(mask.sum())
    expected = torch.zeros_like(theta)
    clipped = 0
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            lp = torch.log_softmax(theta[i, t], -1)[actions[i, t]]
            r = math.exp(lp.item() - old[i, t].item())
            w = min(max(r, 1 - eps_low), 1 + eps_high)
            clipped += w != r
            (g,) = torch.autograd.grad(lp, theta)
            expected += -w * adv[i].item() / n * g
    assert 0 < clipped < n  # both clipped and unclipped tokens
    assert torch.allclose(grad, expected, atol=1e-12)


# --------------------------------------------------------------------------- DAPO overlong penalty


def test_overlong_penalty_table_and_kinks():
    """L_max = 20, L_cache = 5: 0 up to 15, then (15 - |y|)/5 down to -1 at 20, then -1."""
    lengths = torch.tensor([0, 10, 15, 16, 17, 18, 19, 20, 21, 100])
    expected = [0.0, 0.0, 0.0, -0.2, -0.4, -0.6, -0.8, -1.0, -1.0, -1.0]
    assert overlong_penalty(lengths, max_len=20, cache=5).tolist() == pytest.approx(expected, abs=1e-7)
    # The kinks: continuous at L_max - L_cache and at L_max, slopes 0, -1/L_cache, 0 around them.
    x = torch.tensor([14.99, 15.0, 15.01, 19.99, 20.0, 20.01], dtype=torch.float64)
    y = overlong_penalty(x, 20, 5)
    assert y.tolist() == pytest.approx([0.0, 0.0, -0.002, -0.998, -1.0, -1.0], abs=1e-12)
    # The paper's setting: L_max = 20480, L_cache = 4096.
    assert overlong_penalty(torch.tensor([16384, 18432, 20480]), 20480, 4096).tolist() == [0.0, -0.5, -1.0]
    # No cache: a step at L_max.
    assert overlong_penalty(torch.tensor([19, 20, 21]), 20, 0).tolist() == [0.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(lengths, 20, 21)


# --------------------------------------------------------------------------- DAPO dynamic sampling


def test_degenerate_groups_by_hand():
    # groups of 2: (1, 1) all equal, (0, 1) mixed, (0.5, 0.5) all equal
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert degenerate_groups(scores, 2).tolist() == [True, False, True]


class FakeSampler:
    """Hands out scripted groups of 2: each script entry is one group's two scores."""

    def __init__(self, script, over=0):
        self.script, self.calls, self.over = list(script), [], over

    def __call__(self, n):
        self.calls.append(n)
        take = [self.script.pop(0) for _ in range(min(n + self.over, len(self.script)))]
        names = [f"{a}{b}" for a, b in take]
        return names, torch.tensor([s for pair in take for s in pair], dtype=torch.float32)


def test_dynamic_sampling_fills_the_batch_with_informative_groups():
    """Batch of 3 groups. Draw 1 (3 groups): 01 informative, 11 and 00 degenerate. Draw 2
    (2 groups): 10 informative, 22 degenerate. Draw 3 (1 group): 12 informative. Full."""
    s = FakeSampler([(0, 1), (1, 1), (0, 0), (1, 0), (2, 2), (1, 2)])
    out = dynamic_sample(s, num_groups=3, group_size=2, max_retries=5)
    assert s.calls == [3, 2, 1]
    assert out.groups == ["01", "10", "12"]
    assert [x.tolist() for x in out.scores] == [[0, 1], [1, 0], [1, 2]]
    assert out.informative == [True, True, True] and out.filled
    assert (out.draws, out.retries, out.sampled, out.replaced, out.surplus) == (3, 2, 6, 3, 0)


def test_dynamic_sampling_cap_hit_completes_with_degenerate_groups():
    """max_retries = 2: three draws of which only one group is informative; the batch of 3 is
    completed with the first two degenerate groups, flagged; the rest counted as replaced."""
    s = FakeSampler([(1, 1), (0, 1), (0, 0), (2, 2), (3, 3), (4, 4)])
    out = dynamic_sample(s, num_groups=3, group_size=2, max_retries=2)
    assert s.calls == [3, 2, 2]
    assert out.groups == ["01", "11", "00"]
    assert out.informative == [True, False, False] and not out.filled
    assert (out.draws, out.retries, out.sampled, out.replaced) == (3, 2, 6, 3)
    # max_retries = 0: one draw, never a retry.
    s = FakeSampler([(1, 1), (0, 1)])
    out = dynamic_sample(s, num_groups=2, group_size=2, max_retries=0)
    assert s.calls == [2] and out.retries == 0 and out.informative == [True, False]


def test_dynamic_sampling_oversampling_sampler_and_bad_sampler():
    """A sampler that returns one group more than asked: the extra informative group is
    counted as surplus, not kept. A sampler returning the wrong number of scores is an error."""
    s = FakeSampler([(0, 1), (1, 1), (2, 2), (1, 0), (0, 2)], over=1)
    out = dynamic_sample(s, num_groups=2, group_size=2, max_retries=3)
    assert out.groups == ["01", "10"] and out.surplus == 1 and out.draws == 2

    def bad(n):
        return ["a"] * n, torch.zeros(n)  # one score per group, group_size 2

    with pytest.raises(ValueError, match="2 scores per group"):
        dynamic_sample(bad, 2, 2, 1)


# --------------------------------------------------------------------------- on-policy distillation


def test_distillation_rewards_by_hand_and_zero_for_identical_models():
    """r_t = log q - log p on the student's tokens: (ln 0.5 - ln 0.25, ln 0.1 - ln 0.4) = (ln 2,
    -ln 4); the first position (prompt) and padding hold -inf/garbage and give 0."""
    student = torch.log(torch.tensor([[1.0, 0.25, 0.4, 0.0]]))
    teacher = torch.log(torch.tensor([[0.0, 0.5, 0.1, 0.0]]))
    mask = torch.tensor([[0, 1, 1, 0]])
    r = distillation_rewards(student, teacher, mask)
    assert r.tolist() == [pytest.approx([0.0, math.log(2), -math.log(4), 0.0], abs=1e-6)]
    assert (distillation_rewards(teacher, teacher, mask) == 0).all()


def test_distillation_return_has_expectation_minus_reverse_kl():
    """A two-step autoregressive toy (V = 3, sequences y1 y2), student p and teacher q given by
    tables. Enumerating all 9 sequences: Σ_y p(y) Σ_t r_t(y) = -KL(p‖q) over whole sequences,
    with KL computed directly from the joint probabilities."""
    gen = torch.Generator().manual_seed(2)
    V = 3
    p1, q1 = (torch.softmax(torch.randn(V, generator=gen, dtype=torch.float64), -1) for _ in range(2))
    p2, q2 = (torch.softmax(torch.randn(V, V, generator=gen, dtype=torch.float64), -1) for _ in range(2))
    seqs = [(a, b) for a in range(V) for b in range(V)]
    student = torch.tensor([[0.0, math.log(p1[a]), math.log(p2[a, b])] for a, b in seqs], dtype=torch.float64)
    teacher = torch.tensor([[0.0, math.log(q1[a]), math.log(q2[a, b])] for a, b in seqs], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1]] * len(seqs))
    returns = distillation_rewards(student, teacher, mask).sum(-1)  # (9,)
    weights = torch.tensor([p1[a] * p2[a, b] for a, b in seqs], dtype=torch.float64)
    kl = sum(float(p1[a] * p2[a, b]) * math.log(float(p1[a] * p2[a, b]) / float(q1[a] * q2[a, b]))
             for a, b in seqs)
    assert kl > 0.05  # the two models differ
    assert float((weights * returns).sum()) == pytest.approx(-kl, abs=1e-12)


# --------------------------------------------------------------------------- the registry


def test_registry_names_and_settings():
    assert POLICY_LOSSES == {"ppo_clip": ppo_clip_loss, "gspo": gspo_loss, "cispo": cispo_loss}
    assert (POLICY_LOSS_SPECS["gspo"].clip_low, POLICY_LOSS_SPECS["gspo"].clip_high) == (3e-4, 4e-4)
    assert POLICY_LOSS_SPECS["gspo"].aggregation == "sequence_mean" and POLICY_LOSS_SPECS["gspo"].sequence_advantages
    assert POLICY_LOSS_SPECS["cispo"].clip_low is None and POLICY_LOSS_SPECS["cispo"].aggregation == "token_mean"


def test_resolve_clip_fills_each_null_with_the_losss_own():
    """ppo.clip / ppo.clip_high null take the loss's setting; ppo_clip's ε_high is its ε_low
    (symmetric PPO, as before the registry: ppo.clip 0.2 and clip_high null gave [0.8, 1.2])."""
    assert resolve_clip("ppo_clip", None, None) == (0.2, 0.2)
    assert resolve_clip("ppo_clip", 0.1, None) == (0.1, 0.1)
    assert resolve_clip("ppo_clip", 0.2, 0.28) == (0.2, 0.28)  # DAPO's clip-higher
    assert resolve_clip("gspo", None, None) == (3e-4, 4e-4)
    assert resolve_clip("gspo", 1e-3, None) == (1e-3, 4e-4)
    assert resolve_clip("cispo", None, None) == (None, 5.0)
    assert resolve_clip("cispo", 0.5, 2.0) == (0.5, 2.0)
    with pytest.raises(ValueError, match="unknown policy loss"):
        resolve_clip("nope", None, None)
