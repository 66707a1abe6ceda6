"""Advantage estimators: GAE with a critic, and the critic-free group / leave-one-out baselines.

Names (house rule 5): ``rewards`` are per-token rewards (B, T) (typically the sequence score at
the last completion token minus β·KL per token); ``scores`` are one number per completion (B,);
``mask`` (B, T) is 1 on completion tokens (the actions).

Grouped estimators assume the rollout order used throughout the library: each prompt's
``group_size`` completions are consecutive, so completion ``i`` belongs to group
``i // group_size``.

Everything here returns detached tensors: advantages and returns are targets, never a path for
gradients into the policy or the critic.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import torch

from rlhf.masking import Aggregation, last_index, masked_whiten

__all__ = [
    "gae",
    "grpo_advantages",
    "rloo_advantages",
    "reinforce_pp_advantages",
    "remax_advantages",
    "informative_groups",
    "degenerate_groups",
    "DynamicSample",
    "dynamic_sample",
    "token_rewards",
    "distillation_rewards",
    "Estimator",
    "ESTIMATOR_SPECS",
    "ESTIMATORS",
    "CRITIC_ESTIMATORS",
    "compute_advantages",
]


def _grouped(scores: torch.Tensor, group_size: int, who: str) -> torch.Tensor:
    """(B,) -> (B // group_size, group_size), with a clear error when B is not a multiple."""
    if scores.dim() != 1:
        raise ValueError(f"{who}: scores must be 1-D (B,), got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.numel() % group_size != 0:
        raise ValueError(
            f"{who}: batch of {scores.numel()} scores is not a whole number of groups of group_size={group_size}"
        )
    return scores.detach().view(-1, group_size)


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation", §3).

        δ_t = r_t + γ V_{t+1} - V_t,      A_t = δ_t + γλ A_{t+1},      R_t = A_t + V_t

    rewards, values, mask: (B, T). The recursion runs over the masked (completion) positions of
    each row, from the last to the first; after the last completion token the episode has ended,
    so V_{T_end+1} = 0 and A_{T_end+1} = 0 (bootstrap 0: a response cut at the length limit is
    treated as terminal, as in InstructGPT-style RLHF). Unmasked positions are not actions: they
    get advantage 0 and return 0 and are skipped by the recursion, so prompt tokens before the
    completion (left or right padded) and padding after it are both handled, and "next" means the
    next *masked* position.

    Returns ``(advantages, returns)``, both (B, T), in float32 or wider, with
    ``returns = advantages + values`` computed here, i.e. BEFORE the caller whitens advantages
    (the critic regresses on un-whitened returns).
    """
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    rewards, values = rewards.to(dtype), values.to(dtype)
    m = mask.bool()
    B, T = rewards.shape
    next_value = rewards.new_zeros(B)  # V of the next masked position; 0 after the end (B,)
    next_adv = rewards.new_zeros(B)  # A of the next masked position (B,)
    columns = []
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        m_t = m[:, t]
        columns.append(torch.where(m_t, adv_t, torch.zeros_like(adv_t)))
        # Only real tokens move the recursion; padding/prompt positions pass it through unchanged.
        next_value = torch.where(m_t, values[:, t], next_value)
        next_adv = torch.where(m_t, adv_t, next_adv)
    advantages = torch.stack(columns[::-1], dim=1)  # (B, T)
    returns = torch.where(m, advantages + values, torch.zeros_like(advantages))  # (B, T)
    return advantages, returns


_GROUP_SCALES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # Sample (Bessel-corrected) std of each group, as in the DeepSeekMath GRPO implementation.
    "std": lambda g: g.std(dim=-1, keepdim=True),
    # Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", §3.1): no division by the
    # group std, which otherwise up-weights prompts whose rewards barely vary (too easy/too hard).
    "none": lambda g: torch.ones_like(g[..., :1]),
}


@torch.no_grad()
def grpo_advantages(
    scores: torch.Tensor, group_size: int, scale: Literal["std", "none"] = "std", eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath, §4.1.2 "outcome supervision").

        A_i = (s_i - mean_g(s)) / (std_g(s) + eps)       scale="std"  (GRPO)
        A_i =  s_i - mean_g(s)                           scale="none" (Dr. GRPO)

    scores: (B,) with B = n_groups * group_size. Returns (B,) per-completion advantages (every
    token of completion i gets A_i). std is the unbiased sample std, so group_size >= 2 for "std".
    """
    g = _grouped(scores, group_size, "grpo_advantages")  # (G, K)
    if scale not in _GROUP_SCALES:
        raise ValueError(f"grpo_advantages: unknown scale {scale!r}; expected one of {', '.join(_GROUP_SCALES)}")
    if scale == "std" and group_size < 2:
        raise ValueError("grpo_advantages: scale='std' needs group_size >= 2 (the std of one sample is undefined)")
    centred = g - g.mean(dim=-1, keepdim=True)  # (G, K)
    denom = _GROUP_SCALES[scale](g)
    if scale != "none":
        denom = denom + eps
    return (centred / denom).reshape(-1)


@torch.no_grad()
def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

        A_i = s_i - 1/(K-1) Σ_{j≠i} s_j  =  K/(K-1) (s_i - mean_g(s))

    The baseline excludes the sample itself, so it is independent of it and the estimator is
    unbiased. scores: (B,) with B = n_groups * K, K >= 2. Returns (B,).
    """
    if group_size < 2:
        raise ValueError("rloo_advantages: group_size must be >= 2 (leave-one-out needs another sample)")
    g = _grouped(scores, group_size, "rloo_advantages")  # (G, K)
    baseline = (g.sum(dim=-1, keepdim=True) - g) / (group_size - 1)  # mean of the other K-1 (G, K)
    return (g - baseline).reshape(-1)


@torch.no_grad()
def reinforce_pp_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, eps: float = 1e-8,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs", §3).

        G_t = Σ_{k >= t} γ^{k-t} r_k  (return-to-go over completion tokens),
        A_t = (G_t - mean(G)) / std(G)  over every completion token of the batch.

    rewards, mask: (B, T), per-token rewards (score at the last token minus β·KL per token).
    Return-to-go is GAE with V = 0 and λ = 1, so it reuses :func:`gae`'s recursion. The
    whitening is over the batch given here, or, with ``reduce`` (a sum over processes), over the
    global batch of data-parallel training: the paper's global batch normalisation. Returns
    (B, T), 0 at unmasked positions.
    """
    returns_to_go, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)  # (B, T)
    return masked_whiten(returns_to_go, mask, shift_mean=True, eps=eps, reduce=reduce)


@torch.no_grad()
def remax_advantages(scores: torch.Tensor, greedy_scores: torch.Tensor) -> torch.Tensor:
    """ReMax (Li et al. 2024, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning
    Method for Aligning Large Language Models"): the baseline is the score of the greedy completion.

        A_i = s_i - s(greedy completion of prompt(i))

    scores: (B,); greedy_scores: (B,) aligned with scores, or (G,) one per prompt when each
    prompt has B/G consecutive sampled completions. Returns (B,).
    """
    scores, greedy_scores = scores.detach(), greedy_scores.detach()
    if greedy_scores.shape != scores.shape:
        if scores.dim() != 1 or greedy_scores.dim() != 1 or scores.numel() % greedy_scores.numel() != 0:
            raise ValueError(
                f"remax_advantages: greedy_scores shape {tuple(greedy_scores.shape)} matches neither scores "
                f"{tuple(scores.shape)} nor one score per group of consecutive samples"
            )
        greedy_scores = greedy_scores.repeat_interleave(scores.numel() // greedy_scores.numel())
    return scores - greedy_scores


@torch.no_grad()
def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards of the RLHF episode: ``-β·KL_t`` on every action, plus the sequence
    score on the last one (Ziegler et al. 2019; InstructGPT eq. 2). scores (B,), kl, mask (B, T)
    -> (B, T), 0 off the completion."""
    rewards = torch.where(mask.bool(), -beta * kl, torch.zeros_like(kl))
    last = last_index(mask)  # (B,) the last action of each completion
    if bool((last < 0).any()):
        raise ValueError("token_rewards: a completion with no tokens has no last action to reward")
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores.to(rewards.dtype)
    return rewards


@torch.no_grad()
def informative_groups(scores: torch.Tensor, group_size: int, tol: float = 0.0) -> torch.Tensor:
    """(G,) bool: True for groups whose scores are NOT all equal (within ``tol``).

    A group where every completion scored the same has zero group-relative advantage and adds
    only noise and length bias; DAPO's dynamic sampling (Yu et al. 2025, §3.2) drops such
    groups. Per completion: ``informative_groups(...).repeat_interleave(group_size)``.
    """
    g = _grouped(scores, group_size, "informative_groups")  # (G, K)
    spread = g.max(dim=-1).values - g.min(dim=-1).values  # (G,)
    return spread > tol


@torch.no_grad()
def degenerate_groups(scores: torch.Tensor, group_size: int, tol: float = 0.0) -> torch.Tensor:
    """(G,) bool: True for groups whose scores are all equal (within ``tol``): the groups DAPO's
    dynamic sampling replaces. The complement of :func:`informative_groups`."""
    return ~informative_groups(scores, group_size, tol)


G = TypeVar("G")


@dataclass(frozen=True)
class DynamicSample(Generic[G]):
    """What :func:`dynamic_sample` gathered. ``groups`` / ``scores`` / ``informative`` are
    aligned, ``num_groups`` long: the informative groups in the order they were drawn, then (only
    when the retries ran out) degenerate groups to complete the batch, ``informative`` False.

    ``draws`` calls of the sampler (1 + ``retries``), ``sampled`` groups drawn in all,
    ``replaced`` degenerate groups left out, ``surplus`` informative groups drawn beyond
    the batch and left out, ``filled`` = the batch is all informative."""

    groups: list[G]
    scores: list[torch.Tensor]
    informative: list[bool]
    draws: int
    retries: int
    sampled: int
    replaced: int
    surplus: int

    @property
    def filled(self) -> bool:
        return all(self.informative)


def dynamic_sample(
    sample_groups: Callable[[int], tuple[Sequence[G], torch.Tensor]],
    num_groups: int,
    group_size: int,
    max_retries: int,
    tol: float = 0.0,
) -> DynamicSample[G]:
    """DAPO's dynamic sampling (Yu et al. 2025, §3.2, Algorithm 1 line 6-8): fill a batch of
    ``num_groups`` groups whose scores are not all equal, drawing more groups to replace the
    degenerate ones (all correct or all wrong: zero group-relative advantage, no gradient).

    ``sample_groups(n)`` draws groups for (at least) ``n`` fresh prompts and returns them with
    their scores, (m * group_size,) with the usual consecutive layout; asking for fewer than
    needed is allowed (m >= 1), more is kept only up to ``num_groups``. It is called once, then
    again for the missing groups at most ``max_retries`` times. When the retries run out the
    batch is completed with degenerate groups (flagged, so the caller can leave them out of the
    loss), so its size is always ``num_groups``: the paper samples until full, which can take
    unbounded time on a task the policy always solves or always fails.
    """
    if num_groups < 1 or group_size < 1 or max_retries < 0:
        raise ValueError(f"dynamic_sample: need num_groups >= 1, group_size >= 1, max_retries >= 0 "
                         f"(got {num_groups}, {group_size}, {max_retries})")
    kept: list[tuple[G, torch.Tensor]] = []
    spare: list[tuple[G, torch.Tensor]] = []
    draws = sampled = surplus = 0
    while len(kept) < num_groups and draws <= max_retries:
        groups, scores = sample_groups(num_groups - len(kept))
        draws += 1
        groups = list(groups)
        if not groups or scores.numel() != len(groups) * group_size:
            raise ValueError(f"dynamic_sample: the sampler returned {len(groups)} group(s) with {scores.numel()} "
                             f"score(s); expected at least one group and {group_size} scores per group")
        sampled += len(groups)
        ok = informative_groups(scores, group_size, tol).tolist()
        for i, (group, good) in enumerate(zip(groups, ok)):
            entry = (group, scores[i * group_size:(i + 1) * group_size])
            if not good:
                spare.append(entry)
            elif len(kept) < num_groups:
                kept.append(entry)
            else:
                surplus += 1
    fill = spare[:num_groups - len(kept)]
    return DynamicSample(
        groups=[g for g, _ in kept + fill], scores=[s for _, s in kept + fill],
        informative=[True] * len(kept) + [False] * len(fill),
        draws=draws, retries=draws - 1, sampled=sampled, replaced=len(spare) - len(fill), surplus=surplus,
    )


@torch.no_grad()
def distillation_rewards(student_logps: torch.Tensor, teacher_logps: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """On-policy distillation's per-token reward (Agarwal et al. 2024, GKD; Lu & Thinking Machines
    2025, "On-Policy Distillation"): on tokens the STUDENT sampled,

        r_t = log π_teacher(y_t | y_<t) - log π_student(y_t | y_<t)

    the negative of the k1 estimator of the reverse KL, so the return Σ_t r_t of a completion
    has expectation -KL(π_student‖π_teacher) over the student's samples: maximising it is
    mode-seeking reverse-KL distillation, and the teacher grades every token, not just the end.
    student_logps, teacher_logps, mask: (B, T); returns (B, T) in float32 or wider, detached,
    0 off the mask (padding may hold -inf log-probs)."""
    dtype = torch.promote_types(torch.promote_types(student_logps.dtype, teacher_logps.dtype), torch.float32)
    diff = teacher_logps.detach().to(dtype) - student_logps.detach().to(dtype)
    return torch.where(mask.bool(), diff, torch.zeros_like(diff))


@dataclass(frozen=True)
class Estimator:
    """An advantage estimator and the settings the PPO-family loop reads from it: adding one is
    one entry of :data:`ESTIMATOR_SPECS`.

    ``fn`` takes keyword arguments with the names above (:func:`compute_advantages` passes each
    the inputs it declares); ``critic``: needs a value model (and returns the critic's returns);
    ``min_group``: samples per prompt its baseline needs; ``kl_placement``: where ``kl.placement:
    auto`` puts the KL penalty (``reward``: -β·KL per token; ``loss``: β·KL in the loss);
    ``aggregation``: what ``ppo.aggregation: auto`` reduces the loss with; ``whiten``: advantages
    are whitened over the batch when ``ppo.whiten_advantages`` (the group estimators normalise
    their own way); ``greedy_baseline``: needs the score of a greedy completion per prompt;
    ``per_token``: its advantages vary along a completion (a sequence-level loss such as GSPO
    cannot take them)."""

    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
    critic: bool = False
    min_group: int = 1
    kl_placement: Literal["reward", "loss"] = "reward"
    aggregation: Aggregation = "token_mean"
    whiten: bool = False
    greedy_baseline: bool = False
    per_token: bool = False


# Critic-free estimators and GAE, by name.
ESTIMATOR_SPECS: dict[str, Estimator] = {
    "gae": Estimator(gae, critic=True, whiten=True, per_token=True),
    "grpo": Estimator(grpo_advantages, min_group=2, kl_placement="loss"),
    "dr_grpo": Estimator(functools.partial(grpo_advantages, scale="none"), min_group=2, kl_placement="loss",
                         aggregation="constant"),
    "rloo": Estimator(rloo_advantages, min_group=2),
    "reinforce_pp": Estimator(reinforce_pp_advantages, per_token=True),
    "remax": Estimator(remax_advantages, greedy_baseline=True),
}
ESTIMATORS: dict[str, Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]] = {
    name: spec.fn for name, spec in ESTIMATOR_SPECS.items()}
CRITIC_ESTIMATORS = frozenset(name for name, spec in ESTIMATOR_SPECS.items() if spec.critic)


def compute_advantages(name: str, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run estimator ``name`` on whichever of ``inputs`` it takes; one call site for every recipe.

    ``inputs`` may hold any of: rewards (B, T), values (B, T), mask (B, T), scores (B,),
    greedy_scores, group_size, gamma, lam, eps. ``mask`` is required (per-completion advantages
    (B,) are broadcast over it). Returns ``(advantages (B, T), returns (B, T) or None)``;
    ``returns`` is only produced by estimators that use a critic.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; expected one of {', '.join(ESTIMATORS)}")
    if "mask" not in inputs:
        raise ValueError("compute_advantages: 'mask' (B, T) is required")
    fn = ESTIMATORS[name]
    params = inspect.signature(fn).parameters
    missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty and p not in inputs]
    if missing:
        raise ValueError(f"advantage estimator {name!r} needs {', '.join(missing)}")
    out = fn(**{p: inputs[p] for p in params if p in inputs})
    advantages, returns = out if isinstance(out, tuple) else (out, None)
    mask = inputs["mask"]
    if advantages.dim() == 1:
        advantages = advantages[:, None] * mask.to(advantages.dtype)  # (B,) -> (B, T), 0 off the completion
    return advantages, returns
