"""Policy-gradient losses for the online stage: PPO clipped surrogate and the objectives that
followed it (GSPO's sequence-level ratio, CISPO's clipped importance weight, DAPO's overlong
penalty), clipped value loss, entropy bonus, and the KL-in-loss penalty of GRPO.

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
from dataclasses import dataclass

import torch

from rlhf.kl import kl_estimate, kl_k3
from rlhf.masking import Aggregation, aggregate, masked_mean

__all__ = ["ppo_clip_loss", "gspo_loss", "cispo_loss", "overlong_penalty", "value_loss", "entropy_bonus",
           "kl_loss", "truncated_importance_weights", "PolicyLossSpec", "POLICY_LOSS_SPECS", "POLICY_LOSSES",
           "resolve_clip"]

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




def _sequence_advantages(advantages: torch.Tensor, mask: torch.Tensor, who: str) -> torch.Tensor:
    """(B,) per-completion advantages from (B,) or from (B, T) constant over each row's masked
    tokens (what :func:`rlhf.advantages.compute_advantages` gives for a sequence-level estimator).
    A (B, T) that varies inside a row (GAE, REINFORCE++) has no single sequence advantage: refused."""
    advantages = advantages.detach()
    if advantages.dim() == 1:
        return advantages
    per_row = masked_mean(advantages, mask, dim=-1)  # (B,)
    spread = _masked(advantages - per_row[:, None], mask).abs().amax() if advantages.numel() else None
    if spread is not None and float(spread) > 1e-5 * max(1.0, float(_masked(advantages, mask).abs().amax())):
        raise ValueError(f"{who}: needs one advantage per completion (a sequence-level estimator such as grpo, "
                         f"dr_grpo, rloo or remax), but the per-token advantages vary inside a completion "
                         f"(by up to {float(spread):.3g})")
    return per_row


def gspo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float | None = 3e-4,
    clip_high: float | None = 4e-4,
    aggregation: Aggregation = "sequence_mean",
    denominator: torch.Tensor | float | None = None,
    max_len: int | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """GSPO, Group Sequence Policy Optimization (Zheng et al. 2025, eq. 5-7), as a loss; SCALAR.

        s_i = exp( (1/|y_i|) Σ_t (log π(y_i,t) - log π_old(y_i,t)) )     one ratio per sequence
        loss_i = max(-A_i s_i, -A_i clip(s_i, 1 - ε_low, 1 + ε_high))

    The importance ratio is the length-normalised (geometric mean) ratio of the whole completion
    and is clipped per sequence, so a completion is kept or dropped as a whole. Its gradient
    where the unclipped term is active is -A_i s_i (1/|y_i|) Σ_t ∇log π(y_i,t): every token of a
    sequence carries the same weight (PPO weighs each token by its own ratio). Because the ratio
    is a mean of log-ratios, the paper's clip range is tiny: ε_low = 3e-4, ε_high = 4e-4 (the
    defaults; None means no bound on that side).

    Each sequence's loss is placed on each of its tokens and reduced by
    ``aggregate(·, mask, aggregation, ...)``: the default ``sequence_mean`` is the paper's mean
    over sequences (with micro-batches: pass the global number of sequences as ``denominator``);
    ``token_mean`` would weigh each sequence by its length instead.

    logps (with grad), old_logps (detached here), mask: (B, T); advantages (B,), or (B, T)
    constant over each completion's tokens (else ValueError). ``is_weights`` (B, T), detached:
    per-token multipliers as in :func:`ppo_clip_loss` (use level=sequence weights here).

    Metrics: ``clip_fraction`` (fraction of completions whose clipped term is active),
    ``approx_kl`` (token-level k3 estimate of KL(π_old‖π), as in :func:`ppo_clip_loss`) and
    ``ratio`` (mean s_i over completions).
    """
    adv = _sequence_advantages(advantages, mask, "gspo_loss")  # (B,)
    old_logps = old_logps.detach()
    log_ratio = _masked(logps - old_logps, mask)  # (B, T), 0 on padding
    n_tok = mask.sum(-1).to(log_ratio.dtype).clamp(min=1)  # (B,)
    seq_ratio = torch.exp(log_ratio.sum(-1) / n_tok)  # (B,) s_i
    lo = -float("inf") if clip_low is None else 1.0 - clip_low
    hi = float("inf") if clip_high is None else 1.0 + clip_high
    adv = adv.to(seq_ratio.dtype)
    pg_unclipped = -adv * seq_ratio
    pg_clipped = -adv * torch.clamp(seq_ratio, lo, hi)
    per_seq = torch.maximum(pg_unclipped, pg_clipped)  # (B,)
    per_token = _masked(per_seq[:, None].expand_as(log_ratio), mask)  # (B, T)
    if is_weights is not None:
        per_token = per_token * _masked(is_weights.detach(), mask)
    loss = aggregate(per_token, mask, aggregation, denominator=denominator, max_len=max_len)
    with torch.no_grad():
        rows = (mask.sum(-1) > 0).to(seq_ratio.dtype)  # (B,) completions with tokens
        metrics = {
            "clip_fraction": masked_mean((pg_clipped > pg_unclipped).to(seq_ratio.dtype), rows),
            "approx_kl": masked_mean(kl_k3(old_logps, logps.detach(), mask), mask),
            "ratio": masked_mean(seq_ratio.detach(), rows),
        }
    return loss, metrics


def cispo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float | None = None,
    clip_high: float | None = 5.0,
    aggregation: Aggregation = "token_mean",
    denominator: torch.Tensor | float | None = None,
    max_len: int | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """CISPO, Clipped IS-weight Policy Optimization (MiniMax-M1, MiniMax 2025, eq. 4), as a loss; SCALAR.

        r̂_t = clip(r_t, 1 - ε_low, 1 + ε_high),    r_t = π(a_t|s_t) / π_old(a_t|s_t)
        loss_t = -sg(r̂_t) · A_t · log π(a_t|s_t)

    A REINFORCE loss with a clipped, stop-gradient importance weight: the gradient of each token
    is -r̂_t A_t ∇log π(a_t|s_t), so every token keeps contributing, also those whose ratio left
    the trust region (PPO's clip zeroes their gradient; the paper's point is that the rare
    "fork" tokens it drops are the ones reflective reasoning needs); clipping only bounds the
    weight. The paper puts no lower bound (ε_low = None, the default) and tunes the upper one;
    the default ε_high = 5 is such a loose cap. The loss value itself is Σ r̂ A log π, not an
    estimate of the surrogate: only its gradient is meaningful.

    Token-level normalisation (the paper's 1/Σ_i|o_i|) is ``aggregation="token_mean"``, the
    default. logps (with grad), old_logps (detached), mask: (B, T); advantages (B, T) or (B,).
    ``is_weights`` as in :func:`ppo_clip_loss`. Metrics: ``clip_fraction`` (tokens whose weight
    was clipped), ``approx_kl`` (k3 of KL(π_old‖π)), ``ratio`` (mean r_t, unclipped).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    advantages = _masked(advantages.detach().expand_as(logps), mask)  # (B, T)
    old_logps = old_logps.detach()
    ratio = torch.exp(_masked(logps.detach() - old_logps, mask))  # (B, T), no gradient: sg(r)
    lo = 0.0 if clip_low is None else 1.0 - clip_low
    hi = float("inf") if clip_high is None else 1.0 + clip_high
    weight = torch.clamp(ratio, lo, hi)
    per_token = -weight * advantages * _masked(logps, mask)
    if is_weights is not None:
        per_token = per_token * _masked(is_weights.detach(), mask)
    loss = aggregate(per_token, mask, aggregation, denominator=denominator, max_len=max_len)
    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean((weight != ratio).to(ratio.dtype), mask),
            "approx_kl": masked_mean(kl_k3(old_logps, logps.detach(), mask), mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): a length-dependent reward in [-1, 0].

        0                              |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache    L_max - L_cache < |y| <= L_max   (linear, 0 to -1)
        -1                             |y| > L_max

    ``lengths`` (B,) completion lengths in tokens; ``max_len`` = L_max; ``cache`` = L_cache
    (0 <= cache <= max_len; 0 gives a step: 0 up to L_max, -1 beyond). Returns a float tensor
    (B,), added to the score (times a coefficient) by the caller.
    """
    if not 0 <= cache <= max_len:
        raise ValueError(f"overlong_penalty: need 0 <= cache <= max_len (got cache={cache}, max_len={max_len})")
    n = lengths.detach().to(torch.promote_types(lengths.dtype, torch.float32))
    over = n > max_len
    if cache == 0:
        return torch.where(over, -torch.ones_like(n), torch.zeros_like(n))
    soft = ((max_len - cache) - n) / cache  # > 0 below the window, -1 at L_max
    return torch.where(over, -torch.ones_like(n), soft.clamp(max=0.0))


@dataclass(frozen=True)
class PolicyLossSpec:
    """A policy loss and the settings that go with it.

    ``fn`` has :func:`ppo_clip_loss`'s signature ``(logps, old_logps, advantages, mask, clip_low,
    clip_high, aggregation=, denominator=, max_len=, is_weights=)``. ``clip_low`` / ``clip_high``
    / ``aggregation`` are its defaults (the paper's); ``sequence_advantages`` says that it needs
    one advantage per completion (a group or ReMax estimator, not GAE or REINFORCE++)."""

    fn: Callable[..., tuple[torch.Tensor, Metrics]]
    clip_low: float | None
    clip_high: float | None
    aggregation: Aggregation
    sequence_advantages: bool
    summary: str


POLICY_LOSS_SPECS: dict[str, PolicyLossSpec] = {
    "ppo_clip": PolicyLossSpec(ppo_clip_loss, 0.2, None, "token_mean", False,
                               "PPO's clipped surrogate, per-token ratio (clip_high > clip gives DAPO's clip-higher)"),
    "gspo": PolicyLossSpec(gspo_loss, 3e-4, 4e-4, "sequence_mean", True,
                           "GSPO: one length-normalised ratio per completion, clipped per completion"),
    "cispo": PolicyLossSpec(cispo_loss, None, 5.0, "token_mean", False,
                            "CISPO: REINFORCE with a clipped stop-gradient IS weight; no token dropped"),
}
# The policy losses by name (all with ppo_clip_loss's signature); their settings in POLICY_LOSS_SPECS.
POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, Metrics]]] = {
    name: spec.fn for name, spec in POLICY_LOSS_SPECS.items()}


def resolve_clip(name: str, clip: float | None, clip_high: float | None) -> tuple[float | None, float | None]:
    """(ε_low, ε_high) for policy loss ``name`` from the config's ``clip`` / ``clip_high``, where
    None takes the loss's own setting (POLICY_LOSS_SPECS); ppo_clip's ε_high defaults to its
    ε_low (symmetric PPO)."""
    if name not in POLICY_LOSS_SPECS:
        raise ValueError(f"unknown policy loss {name!r}; expected one of {', '.join(POLICY_LOSS_SPECS)}")
    spec = POLICY_LOSS_SPECS[name]
    low = spec.clip_low if clip is None else clip
    high = clip_high if clip_high is not None else (spec.clip_high if spec.clip_high is not None else low)
    return low, high
