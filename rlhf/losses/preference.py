"""Offline preference losses: the DPO family (DPO/cDPO, robust DPO, IPO, SLiC hinge, SimPO, ORPO) and KTO.

Inputs are per-sequence SUMMED log-probs of the completion tokens (B,) — ``masking.masked_sum``
of per-token ``logps`` over the completion mask — for the policy and, where needed, the frozen
reference; and completion lengths (B,) (number of completion tokens) for the losses that
length-normalise.

Every paired loss has the same signature, so a recipe can call any of them by name:

    fn(chosen_logps, rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
       chosen_lengths=None, rejected_lengths=None, *, beta, <its own hyper-parameters>)

Inputs a loss does not use are ignored (a recipe may compute reference log-probs for logging
even with a reference-free loss). Each returns ``(losses, metrics)``: ``losses`` is PER PAIR (B,)
(the recipe reduces it, with the global pair count under accumulation), and ``metrics`` is a dict
of detached (B,) tensors:

- ``chosen_rewards`` / ``rejected_rewards``: the implicit reward, β·(logπ - logπ_ref) for the
  reference-based losses, β·logπ/|y| for the reference-free ones (SimPO, ORPO);
- ``reward_accuracy``: 1.0 where chosen_rewards > rejected_rewards, else 0.0;
- ``reward_margin``: chosen_rewards - rejected_rewards.

Notation: h = (logπ(y_w) - logπ_ref(y_w)) - (logπ(y_l) - logπ_ref(y_l)), the difference of
log-ratios of the chosen (w) and rejected (l) completions.

KTO is unpaired and has its own signature (see :func:`kto_loss`); :func:`is_paired` tells them apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "dpo_loss",
    "robust_dpo_loss",
    "ipo_loss",
    "hinge_loss",
    "simpo_loss",
    "orpo_loss",
    "kto_loss",
    "kto_reference_point",
    "nll_term",
    "add_nll_term",
    "PREFERENCE_LOSSES",
    "needs_reference",
    "is_paired",
]

Metrics = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- shared pieces


def _reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Metrics:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "reward_accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype),
        "reward_margin": chosen_rewards - rejected_rewards,
    }


def _require(value: torch.Tensor | None, name: str, loss: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{loss}: {name} is required (got None)")
    return value


def _log_ratios(loss: str, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logπ - logπ_ref) of chosen and rejected, each (B,); the reference is required."""
    ref_c = _require(ref_chosen_logps, "ref_chosen_logps", loss)
    ref_r = _require(ref_rejected_logps, "ref_rejected_logps", loss)
    if not (chosen_logps.shape == rejected_logps.shape == ref_c.shape == ref_r.shape):
        raise ValueError(
            f"{loss}: chosen/rejected policy and reference log-probs must share one (B,) shape, got "
            f"{tuple(chosen_logps.shape)}, {tuple(rejected_logps.shape)}, {tuple(ref_c.shape)}, {tuple(ref_r.shape)}"
        )
    return chosen_logps - ref_c, rejected_logps - ref_r


def _per_token(logps: torch.Tensor, lengths: torch.Tensor | None, name: str, loss: str) -> torch.Tensor:
    """Length-averaged log-prob logπ(y)/|y| (B,); an empty completion (length 0) gives 0, not nan."""
    lengths = _require(lengths, name, loss)
    if lengths.shape != logps.shape:
        raise ValueError(f"{loss}: {name} must have shape {tuple(logps.shape)}, got {tuple(lengths.shape)}")
    return logps / lengths.to(logps.dtype).clamp(min=1)


def nll_term(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Length-normalised NLL of the chosen completion, per pair (B,): -logπ(y_w) / |y_w|.

    Averaging this over pairs gives a *sequence mean* of the per-token cross entropy (each
    completion weighted equally), as in RPO (Pang et al. 2024, "Iterative Reasoning Preference
    Optimization"). TRL's ``rpo_alpha`` and ORPO's reference code instead take a
    token mean over the batch, which weights long completions more; the two agree when all
    chosen completions have the same length.
    """
    return -_per_token(chosen_logps, chosen_lengths, "chosen_lengths", "nll_term")


def add_nll_term(
    losses: torch.Tensor, chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``losses + alpha · nll_term`` per pair (B,): an SFT anchor on the chosen response (RPO, rpo_alpha)."""
    if alpha == 0:
        return losses
    return losses + alpha * nll_term(chosen_logps, chosen_lengths)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate over the whole range (Mächler 2012, "Accurately
    Computing log(1 - exp(-|a|))"): log(-expm1(x)) near 0, log1p(-exp(x)) far from it."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# --------------------------------------------------------------------------- reference-based, paired


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """DPO (Rafailov et al. 2023, eq. 7) and conservative DPO; per-pair losses (B,).

        loss = -(1 - ε) log σ(βh) - ε log σ(-βh)

    ε = ``label_smoothing`` = 0 is plain DPO; ε > 0 is cDPO (Mitchell 2023, "A note on DPO with
    noisy preferences"): the expected DPO loss when each label is flipped with probability ε.
    Lengths unused.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5) (got {label_smoothing})")
    chosen_lr, rejected_lr = _log_ratios("dpo_loss", chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen_lr - rejected_lr)  # (B,) βh
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


def robust_dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language
    Models with Noisy Feedback"); per-pair losses (B,).

        loss = ((1 - ε)(-log σ(βh)) - ε(-log σ(-βh))) / (1 - 2ε)

    Unlike cDPO this is an *unbiased* estimate of the clean-label DPO loss when labels are
    flipped with probability ε = ``label_smoothing`` (note the minus sign; it can be negative).
    ε = 0 is plain DPO. Lengths unused.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust_dpo_loss: label_smoothing must be in [0, 0.5) (got {label_smoothing})")
    chosen_lr, rejected_lr = _log_ratios(
        "robust_dpo_loss", chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_lr - rejected_lr)  # (B,)
    eps = label_smoothing
    losses = ((1.0 - eps) * -F.logsigmoid(logits) - eps * -F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)
    return losses, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17 with τ = β); per-pair losses (B,).

        loss = (h̄ - 1/(2β))²,   h̄ = (logπ(y_w) - logπ_ref(y_w))/|y_w| - (logπ(y_l) - logπ_ref(y_l))/|y_l|

    Choice: h̄ uses LENGTH-AVERAGED log-ratios (lengths required), not the summed ones of the
    paper's equation. The squared loss regresses h onto a fixed target 1/(2β), so with sums the
    target margin would be shared by a 5-token and a 500-token completion; per-token averages keep
    the target on one scale. TRL's ``ipo`` loss and the authors' follow-up experiments do the same.
    Metrics use the summed log-ratios, as for DPO.
    """
    chosen_lr, rejected_lr = _log_ratios("ipo_loss", chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    h = _per_token(chosen_lr, chosen_lengths, "chosen_lengths", "ipo_loss") - _per_token(
        rejected_lr, rejected_lengths, "rejected_lengths", "ipo_loss"
    )  # (B,)
    losses = (h - 1.0 / (2.0 * beta)).square()
    return losses, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


def hinge_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """SLiC-style hinge on the DPO log-ratio (Zhao et al. 2023, "SLiC-HF"; Liu et al. 2024, "RSO"); (B,).

        loss = max(0, 1 - βh)

    Pairs already separated by a margin of 1/β contribute nothing. Lengths unused.
    """
    chosen_lr, rejected_lr = _log_ratios("hinge_loss", chosen_logps, rejected_logps,
                                         ref_chosen_logps, ref_rejected_logps)
    losses = torch.relu(1.0 - beta * (chosen_lr - rejected_lr))
    return losses, _reward_metrics(beta * chosen_lr, beta * rejected_lr)


# --------------------------------------------------------------------------- reference-free, paired


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> tuple[torch.Tensor, Metrics]:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", eq. 6); per-pair losses (B,). Reference-free (ref log-probs ignored).

        loss = -log σ(β/|y_w| · logπ(y_w) - β/|y_l| · logπ(y_l) - γ)

    The reward is the length-averaged log-prob (β/|y| logπ(y)), which is what decoding optimises;
    γ is the target reward margin (in reward units, not divided by β).
    """
    chosen_rewards = beta * _per_token(chosen_logps, chosen_lengths, "chosen_lengths", "simpo_loss")  # (B,)
    rejected_rewards = beta * _per_token(rejected_logps, rejected_lengths, "rejected_lengths", "simpo_loss")
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, _reward_metrics(chosen_rewards, rejected_rewards)


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    eq. 6-7); per-pair losses (B,). Reference-free (ref log-probs ignored). ``beta`` is the
    paper's λ, the weight of the odds-ratio term (TRL calls it beta as well).

        ℓ(y)  = logπ(y) / |y|                           (length-averaged log-prob; P = exp ℓ)
        log odds(y) = ℓ - log(1 - exp ℓ)
        loss = NLL + λ · (-log σ(log odds(y_w) - log odds(y_l)))

    NLL is :func:`nll_term`: -logπ(y_w)/|y_w| PER PAIR, so the batch mean is a sequence mean of
    the chosen completions' per-token cross entropy (the paper's reference code and TRL use a
    token mean over the batch instead; equal when chosen lengths are equal).

    log(1 - exp ℓ) is computed by :func:`_log1mexp` (log(-expm1 ℓ) near 0, log1p(-exp ℓ) below
    -log 2). ℓ is clamped to ≤ -1e-7: at ℓ = 0 (probability 1) the odds are infinite.
    Metrics use β·ℓ as the "reward" (as TRL) and add ``log_odds_ratio`` and ``nll`` (B,).
    """
    avg_c = _per_token(chosen_logps, chosen_lengths, "chosen_lengths", "orpo_loss")  # (B,)
    avg_r = _per_token(rejected_logps, rejected_lengths, "rejected_lengths", "orpo_loss")
    avg_c_safe, avg_r_safe = avg_c.clamp(max=-1e-7), avg_r.clamp(max=-1e-7)
    log_odds_ratio = (avg_c_safe - _log1mexp(avg_c_safe)) - (avg_r_safe - _log1mexp(avg_r_safe))  # (B,)
    odds_ratio_loss = -F.logsigmoid(log_odds_ratio)
    nll = -avg_c  # = nll_term(chosen_logps, chosen_lengths)
    losses = nll + beta * odds_ratio_loss
    metrics = _reward_metrics(beta * avg_c, beta * avg_r)
    metrics["log_odds_ratio"] = log_odds_ratio.detach()
    metrics["nll"] = nll.detach()
    return losses, metrics


# --------------------------------------------------------------------------- KTO, unpaired


def kto_reference_point(mismatched_logps: torch.Tensor, mismatched_ref_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean(logπ(y'|x) - logπ_ref(y'|x))), detached; scalar.

    Ethayarajh et al. 2024 ("KTO: Model Alignment as Prospect Theoretic Optimization"):
    z0 estimates KL(π‖π_ref) from completions y' paired with *other* prompts x in the batch
    (mismatched pairs), so it does not leak the example's own reward; it is clamped at 0 (a KL is
    non-negative) and carries no gradient. Inputs: summed log-probs (N,). Under data parallelism,
    average the difference over all processes' mismatched pairs before the clamp.
    """
    return (mismatched_logps - mismatched_ref_logps).mean().clamp(min=0).detach()


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor | float,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """KTO (Ethayarajh et al. 2024); per-example losses (B,). Unpaired data.

        r = logπ(y|x) - logπ_ref(y|x)
        loss = λ_D (1 - σ(β(r - z0)))   if y is desirable
               λ_U (1 - σ(β(z0 - r)))   if y is undesirable

    logps, ref_logps: summed completion log-probs (B,); desirable: (B,) bool; reference_point:
    z0 from :func:`kto_reference_point` (detached here again: the paper does not backpropagate
    through it). The paper advises λ_D·n_D / (λ_U·n_U) in [1, 4/3] for imbalanced data.

    Metrics (detached, (B,)): ``rewards`` = β·r, ``desirable`` (1.0/0.0).
    """
    if not (logps.shape == ref_logps.shape == desirable.shape):
        raise ValueError(
            f"kto_loss: logps, ref_logps and desirable must share one (B,) shape, got "
            f"{tuple(logps.shape)}, {tuple(ref_logps.shape)}, {tuple(desirable.shape)}"
        )
    z0 = torch.as_tensor(reference_point, dtype=logps.dtype, device=logps.device).detach()
    log_ratio = logps - ref_logps  # (B,) r
    desirable = desirable.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1.0 - torch.sigmoid(beta * (log_ratio - z0))),
        undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - log_ratio))),
    )
    metrics = {"rewards": (beta * log_ratio).detach(), "desirable": desirable.to(logps.dtype)}
    return losses, metrics


# --------------------------------------------------------------------------- registry

PREFERENCE_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, Metrics]]] = {
    "dpo": dpo_loss,
    "robust": robust_dpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
    "kto": kto_loss,
}
_REFERENCE_FREE = frozenset({"simpo", "orpo"})
_UNPAIRED = frozenset({"kto"})


def _check_name(name: str) -> None:
    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; expected one of {', '.join(PREFERENCE_LOSSES)}")


def needs_reference(name: str) -> bool:
    """True when loss ``name`` needs the frozen reference policy's log-probs."""
    _check_name(name)
    return name not in _REFERENCE_FREE


def is_paired(name: str) -> bool:
    """True for (chosen, rejected) pair losses; False for KTO (unpaired desirable/undesirable)."""
    _check_name(name)
    return name not in _UNPAIRED
