"""Policy-gradient losses for the online stage: PPO clipped surrogate, clipped value loss,
entropy bonus, and the KL-in-loss penalty of GRPO.

All inputs are per-token (B, T) tensors aligned with the completion ``mask`` (1 = a sampled
completion token). Each function builds a per-token loss and reduces it through
:func:`rlhf.masking.aggregate` — the one place where reduction happens — with the same
``aggregation`` / ``denominator`` / ``max_len`` arguments, so that micro-batches under gradient
accumulation reproduce the full-batch loss when given the global denominator. Since
``aggregate`` is linear, adding the returned scalars equals reducing the summed per-token
objective (e.g. GRPO's ``pg + β·kl`` per token).

Each returns ``(loss, metrics)``: a SCALAR loss to minimise and a dict of detached scalar
metrics (micro-batch means over masked tokens, for logging only).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhf.kl import kl_estimate, kl_k3
from rlhf.masking import Aggregation, aggregate, masked_mean

__all__ = ["ppo_clip_loss", "value_loss", "entropy_bonus", "kl_loss", "truncated_importance_weights",
           "POLICY_LOSSES"]

Metrics = dict[str, torch.Tensor]


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with unmasked positions set to exactly 0 (where, not multiply: padding may hold inf/nan)."""
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def ppo_clip_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    aggregation: Aggregation = "token_mean",
    denominator: torch.Tensor | float | None = None,
    max_len: int | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss; SCALAR.

        r_t = π(a_t|s_t) / π_old(a_t|s_t) = exp(logps - old_logps)
        loss_t = max(-A_t r_t, -A_t clip(r_t, 1 - ε_low, 1 + ε_high))

    ``clip_high`` = None uses ε_high = ε_low (symmetric PPO); DAPO's "clip-higher" (Yu et al.
    2025, §3.1) sets ε_high > ε_low so that low-probability tokens with positive advantage can
    grow. Clipping removes the gradient exactly where the ratio has already moved past the
    bound in the direction the advantage pushes it (A > 0 and r > 1 + ε_high, or A < 0 and
    r < 1 - ε_low); on the other side the unclipped term is the larger one and stays active.

    logps (with grad), old_logps (sampling-time, detached here), mask: (B, T); advantages:
    (B, T), or (B,) per completion (broadcast over its tokens). Reduction:
    ``aggregate(loss_t, mask, aggregation, denominator=..., max_len=...)``.

    ``is_weights`` (B, T), detached: per-token importance weights π_old/π_sampler that correct
    for a rollout engine whose probabilities differ from the trainer's
    (:func:`truncated_importance_weights`); each loss_t is multiplied by its weight.

    Metrics: ``clip_fraction`` (tokens where the clipped term is the active one),
    ``approx_kl`` = mean((r - 1) - log r), the k3 estimate of KL(π_old‖π) from tokens sampled
    from π_old (Schulman 2020), and ``ratio`` (mean r).
    """
    eps_low = clip_low
    eps_high = clip_low if clip_high is None else clip_high
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (B, 1): one advantage per completion
    advantages = _masked(advantages.detach().expand_as(logps), mask)  # (B, T)
    old_logps = old_logps.detach()
    log_ratio = _masked(logps - old_logps, mask)  # (B, T); 0 on padding so exp stays finite
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(pg_unclipped, pg_clipped)  # (B, T) pessimistic bound
    if is_weights is not None:
        per_token = per_token * _masked(is_weights.detach(), mask)
    loss = aggregate(per_token, mask, aggregation, denominator=denominator, max_len=max_len)
    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean((pg_clipped > pg_unclipped).to(ratio.dtype), mask),
            "approx_kl": masked_mean(kl_k3(old_logps, logps.detach(), mask), mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    aggregation: Aggregation = "token_mean",
    denominator: torch.Tensor | float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped value loss (OpenAI baselines' PPO2; detail 9 of Huang et al. 2022, "The 37
    Implementation Details of Proximal Policy Optimization"); SCALAR.

        v_clip = old_v + clip(v - old_v, -c, c)
        loss_t = ½ max((v - R)², (v_clip - R)²)

    The critic may not move more than c from its rollout-time value per update in the
    direction that would reduce the error; ``clip`` = None gives plain ½(v - R)².
    values (with grad), old_values, returns (from :func:`rlhf.advantages.gae`), mask: (B, T).
    Metrics: ``clip_fraction`` (tokens where the clipped error is the larger one),
    ``values`` (mean v), ``value_error`` (mean (v - R)²).
    """
    old_values, returns = old_values.detach(), _masked(returns.detach(), mask)
    values_m = _masked(values, mask)  # (B, T)
    err_unclipped = (values_m - returns).square()
    if clip is None:
        per_token = 0.5 * err_unclipped
        clipped_active = torch.zeros_like(err_unclipped, dtype=torch.bool)
    else:
        old_m = _masked(old_values, mask)
        values_clipped = old_m + torch.clamp(values_m - old_m, -clip, clip)
        err_clipped = (values_clipped - returns).square()
        per_token = 0.5 * torch.maximum(err_unclipped, err_clipped)  # (B, T)
        clipped_active = err_clipped > err_unclipped
    loss = aggregate(per_token, mask, aggregation, denominator=denominator, max_len=max_len)
    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean(clipped_active.to(per_token.dtype), mask),
            "values": masked_mean(values_m.detach(), mask),
            "value_error": masked_mean(err_unclipped.detach(), mask),
        }
    return loss, metrics


def entropy_bonus(
    entropies: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    aggregation: Aggregation = "token_mean",
    denominator: torch.Tensor | float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Entropy regulariser as a term to ADD to the loss; SCALAR ``-coef · aggregate(H_t)``.

    Minimising it raises the policy's entropy (Schulman et al. 2017, eq. 9's c₂ S[π]).
    entropies: (B, T) per-token entropies of π (``rlhf.logprobs.entropy_from_logits``); mask (B, T).
    Metrics: ``entropy`` (mean over masked tokens).
    """
    entropies_m = _masked(entropies, mask)
    term = -coef * aggregate(entropies_m, mask, aggregation, denominator=denominator, max_len=max_len)
    return term, {"entropy": masked_mean(entropies_m.detach(), mask)}


def kl_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    estimator: str = "k3",
    aggregation: Aggregation = "token_mean",
    denominator: torch.Tensor | float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """KL penalty placed in the loss rather than the reward (GRPO; Shao et al. 2024, eq. 3-4); SCALAR.

        loss = β · aggregate(k(logps, ref_logps))       k3 by default, as GRPO

    Add it to :func:`ppo_clip_loss` with the same aggregation arguments. ``ref_logps`` is
    detached. What the gradient of each estimator *used as a loss* estimates, on tokens sampled
    from the current π (so only the first update of a batch is exactly on-policy):
    k1 → 0 in expectation (E_π[∇log π] = 0); k2 → ∇KL(π‖π_ref), the reverse KL one usually
    means; k3 (GRPO) → ∇KL(π_ref‖π), the forward KL — both pull π towards π_ref, but k3 is not
    the gradient of the KL it estimates in value (tests/losses/test_policy_losses.py checks all
    three exactly on a categorical). See also Tang & Munos 2025, "On a few pitfalls in KL
    divergence gradient estimation for RL".

    logps (with grad), ref_logps, mask: (B, T). Metrics: ``kl`` (mean estimate over masked tokens).
    """
    per_token = kl_estimate(logps, ref_logps.detach(), estimator, mask)  # (B, T), 0 on padding
    loss = beta * aggregate(per_token, mask, aggregation, denominator=denominator, max_len=max_len)
    return loss, {"kl": masked_mean(per_token.detach(), mask)}


def truncated_importance_weights(
    old_logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    mask: torch.Tensor,
    cap: float = 2.0,
    level: str = "token",
    mode: str = "truncate",
) -> tuple[torch.Tensor, Metrics]:
    """Importance weights for tokens drawn by a rollout engine whose probabilities differ from
    the trainer's (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy
    RL Training": truncated importance sampling, TIS). Returns detached (B, T) weights, 0 where
    ``mask`` is 0, and metrics.

    The tokens come from π_sampler (the engine: vLLM's kernels, another precision) while the
    PPO ratio's denominator π_old is the trainer's own forward over the same weights, so the
    policy gradient needs the correction ρ = π_old / π_sampler:

        level=token:     ρ_t = exp(old_logps_t - sampler_logps_t), one per token
        level=sequence:  ρ   = exp(Σ_t (old_logps_t - sampler_logps_t)), the same for every token
                         of a completion (the exact sequence-level ratio)
        mode=truncate:   w = min(ρ, cap)                  (TIS: bounded variance, small bias)
        mode=mask:       w = ρ if ρ <= cap else 0         (masked IS: drop the outliers)

    Computed in log space (a sequence ratio can overflow float32). old_logps, sampler_logps,
    mask: (B, T). Metrics: ``capped_fraction`` (fraction of tokens, or of completions at
    sequence level, whose ratio exceeded ``cap``), ``mismatch_kl`` (the k3 estimate of
    KL(π_sampler‖π_old) per token from the sampled tokens, always >= 0), ``mismatch_k1``
    (mean log π_sampler - log π_old per token, unbiased but signed) and ``weight`` (mean w).
    """
    if cap <= 0:
        raise ValueError(f"truncated_importance_weights: cap must be > 0 (got {cap})")
    if level not in ("token", "sequence"):
        raise ValueError(f"truncated_importance_weights: level must be 'token' or 'sequence' (got {level!r})")
    if mode not in ("truncate", "mask"):
        raise ValueError(f"truncated_importance_weights: mode must be 'truncate' or 'mask' (got {mode!r})")
    old_logps, sampler_logps = old_logps.detach().float(), sampler_logps.detach().float()
    m = mask.bool()
    log_rho = _masked(old_logps - sampler_logps, mask)  # (B, T), 0 on padding
    if level == "sequence":
        seq = log_rho.sum(-1, keepdim=True)  # (B, 1)
        log_rho = seq.expand_as(log_rho)
    log_cap = torch.log(torch.tensor(cap, dtype=log_rho.dtype, device=log_rho.device))
    over = log_rho > log_cap  # (B, T)
    if mode == "truncate":
        w = torch.exp(torch.minimum(log_rho, log_cap))
    else:
        w = torch.where(over, torch.zeros_like(log_rho), torch.exp(torch.minimum(log_rho, log_cap)))
    w = _masked(w, mask)
    with torch.no_grad():
        if level == "sequence":
            rows = m.any(-1)  # (B,) completions with at least one token
            capped = over[:, 0][rows].float().mean() if bool(rows.any()) else log_rho.new_zeros(())
        else:
            capped = masked_mean(over.float(), mask)
        metrics = {
            "capped_fraction": capped,
            "mismatch_kl": masked_mean(kl_k3(sampler_logps, old_logps, mask), mask),
            "mismatch_k1": masked_mean(_masked(sampler_logps - old_logps, mask), mask),
            "weight": masked_mean(w, mask),
        }
    return w, metrics


# One clipped-surrogate variant today; new ones (e.g. dual-clip, sequence-level ratios) go here.
POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, Metrics]]] = {"ppo_clip": ppo_clip_loss}
