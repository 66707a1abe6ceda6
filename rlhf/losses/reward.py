"""Reward-model losses and metrics: Bradley–Terry with margin and ranked-pair weights, centring, ECE.

A reward model maps (prompt, completion) to a scalar score. It is trained on pairs where
annotators preferred ``chosen`` over ``rejected``; under the Bradley–Terry model
P(chosen ≻ rejected) = σ(r_c - r_r), and the loss is that pair's negative log-likelihood.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "bradley_terry_loss",
    "ranked_pair_weights",
    "reward_centering_loss",
    "expected_calibration_error",
]


def _weighted_mean(x: torch.Tensor, weights: torch.Tensor | None,
                   denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """Σ w x / Σ w over pairs (B,) -> scalar. ``denominator`` = the global Σ w under accumulation.

    Not :func:`rlhf.masking.aggregate`: that reduces per-token (B, T) losses by unit *counts*
    (and clamps its denominator at 1), whereas pair weights are fractions (1/npairs).
    """
    if weights is None:
        weights = torch.ones_like(x)
    weights = weights.to(x.dtype)
    if denominator is None:
        denominator = weights.sum()
    mean: torch.Tensor = (weights * x).sum() / denominator
    return mean


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    *,
    denominator: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise reward-model loss; returns a SCALAR (weighted mean over pairs) and metrics.

        loss_pair = -log σ(r_c - r_r - m)

    InstructGPT (Ouyang et al. 2022, eq. 1) with m = 0; Llama 2 (Touvron et al. 2023, eq. 2)
    adds a per-pair margin m(r) that grows with how strongly annotators preferred the chosen
    response, so clearly separated pairs must be scored further apart.

    chosen_scores, rejected_scores: (B,); margin: (B,) or None (plain BT); weights: (B,) or None
    (all 1). The reduction is Σ w·loss / Σ w; with :func:`ranked_pair_weights` each prompt's
    K(K-1)/2 pairs from a ranking of K responses count as one prompt (InstructGPT §3.5 / eq. 1's
    1/C(K,2) factor), instead of prompts with long rankings dominating. Under gradient
    accumulation pass ``denominator`` = Σ w over the whole optimizer-step batch.

    Metrics (detached, same weighting): ``accuracy`` (r_c > r_r strictly; ties count as wrong),
    ``margin`` (mean r_c - r_r), ``chosen_scores`` and ``rejected_scores`` (means).
    """
    diff = chosen_scores - rejected_scores  # (B,)
    logits = diff if margin is None else diff - margin.to(diff.dtype)
    per_pair = -F.logsigmoid(logits)  # (B,) logsigmoid: no log(0) for large negative logits
    loss = _weighted_mean(per_pair, weights, denominator)
    with torch.no_grad():
        metrics = {
            "accuracy": _weighted_mean((diff > 0).to(diff.dtype), weights),
            "margin": _weighted_mean(diff, weights),
            "chosen_scores": _weighted_mean(chosen_scores.detach(), weights),
            "rejected_scores": _weighted_mean(rejected_scores.detach(), weights),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def ranked_pair_weights(group_ids: torch.Tensor) -> torch.Tensor:
    """Per-pair weights so that each prompt counts once, whatever its number of pairs.

    group_ids: (B,) prompt/group id of each pair (any integers). Returns (B,) float weights,
    w_b = 1 / (number of pairs in b's group): each group's weights sum to 1, so the weighted mean
    of :func:`bradley_terry_loss` is the mean over prompts of each prompt's mean pair loss.
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    weights: torch.Tensor = 1.0 / counts[inverse].to(torch.float32)  # (B,)
    return weights


def reward_centering_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, coef: float) -> torch.Tensor:
    """Auxiliary loss that pins the reward scale's free offset near 0; returns a SCALAR.

        coef · mean((r_c + r_r)²)

    Eisenstein et al. 2023 ("Helping or Herding? Reward Model Ensembles Mitigate but do not
    Eliminate Reward Hacking"): the BT loss only sees differences, so a reward model's mean is
    arbitrary; this term makes members of an ensemble (and successive checkpoints) comparable.
    """
    return coef * (chosen_scores + rejected_scores).square().mean()


@torch.no_grad()
def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> torch.Tensor:
    """ECE of predicted probabilities against 0/1 outcomes (Naeini et al. 2015; Guo et al. 2017).

        ECE = Σ_b (n_b / N) · |acc_b - conf_b|

    with ``n_bins`` equal-width bins on [0, 1]: bin b holds p in [b/n, (b+1)/n), and p = 1 goes
    in the last bin. acc_b = mean label in the bin, conf_b = mean probability; empty bins add 0.
    For a reward model, probs = σ(r_c - r_r) and labels = 1 where the chosen response really is
    preferred (e.g. by a gold reward). probs, labels: (N,). Returns a scalar tensor.
    """
    if n_bins < 1:
        raise ValueError(f"expected_calibration_error: n_bins must be >= 1 (got {n_bins})")
    probs = probs.detach().double().reshape(-1)
    labels = labels.detach().double().reshape(-1)
    if probs.numel() == 0:
        return probs.new_zeros(())
    bins = (probs * n_bins).floor().long().clamp(0, n_bins - 1)  # (N,) bin index
    n_b = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device).index_add_(0, bins, torch.ones_like(probs))
    conf_sum = torch.zeros_like(n_b).index_add_(0, bins, probs)
    acc_sum = torch.zeros_like(n_b).index_add_(0, bins, labels)
    # n_b · |acc_b - conf_b| = |acc_sum - conf_sum|, which is also 0 for empty bins.
    return (acc_sum - conf_sum).abs().sum() / probs.numel()
