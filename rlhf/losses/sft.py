"""Supervised fine-tuning loss: negative log-likelihood of the target tokens."""

from __future__ import annotations

import torch

from rlhf.masking import Aggregation, aggregate

__all__ = ["nll_loss"]


def nll_loss(logps: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation = "token_mean",
             denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """``-mean log p(x_t | x_<t)`` over target tokens.

    logps: (B, T) per-token log-probs aligned with the input ids (rlhf.logprobs); mask: (B, T),
    1 on target tokens. ``token_mean`` weights every target token alike (the usual causal-LM
    loss; long completions count more); ``sequence_mean`` weights every example alike.
    ``denominator``: the global unit count when this is one micro-batch of a larger step.
    """
    return aggregate(-logps, mask, aggregation, denominator=denominator)
