"""Masked statistics and the one place where per-token losses are reduced to a scalar.

Mask convention (house rule 5): ``mask`` is 1/True on real completion tokens, 0 elsewhere.

Reduction is explicit (house rule 2). A loss over a global batch is split into micro-batches
(gradient accumulation) and shards (data parallel). To make the sum of the micro-batch losses
equal the full-batch loss *exactly*, every micro-batch divides by the **global** denominator
(number of tokens, or of sequences, in the whole optimizer-step batch across processes), not by
its own. :func:`count_units` gives a micro-batch's share of that denominator; the trainer sums
the shares over the accumulation window and across processes before the first backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "aggregate",
    "count_units",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "last_index",
]

Aggregation = Literal["token_mean", "sequence_mean", "sequence_sum", "constant"]
AGGREGATIONS: tuple[str, ...] = ("token_mean", "sequence_mean", "sequence_sum", "constant")


def _select(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where mask is set, 0 elsewhere. ``where``, not ``x * mask``: padded positions may
    hold inf or NaN (e.g. log-probs of pad tokens), and inf * 0 = NaN would poison the sum."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is set (over ``dim``, or everything)."""
    xm = _select(x, mask)
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over masked positions. An all-zero mask gives 0, not NaN."""
    m = mask.to(x.dtype)
    if dim is None:
        return _select(x, mask).sum() / m.sum().clamp(min=1)
    return _select(x, mask).sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all masked positions (Bessel-corrected when ``unbiased``)."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = _select(x, mask).sum() / n.clamp(min=1)
    var = _select((x - mean) ** 2, mask).sum() / n.clamp(min=1)
    if unbiased:
        if n < 2:
            raise ValueError(f"masked_var: need at least 2 masked values for an unbiased variance, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(x - mean) / std over masked positions; masked-out positions are returned as 0.

    ``shift_mean=False`` keeps the original mean: (x - mean) / std + mean, so the scale is
    normalised but the level (whose sign matters for rewards) is kept. ``reduce`` sums a scalar
    over processes (e.g. ``Trainer.reduce_sum``): the mean and the (unbiased) variance are then
    those of the global batch, as if every process's positions were in one tensor.
    """
    m = mask.to(x.dtype)
    if reduce is None:
        mean = masked_mean(x, mask)
        var = masked_var(x, mask, unbiased=bool(m.sum() >= 2))
    else:  # two passes, each one all-reduce of a scalar: sums, then squared deviations
        n = reduce(m.sum())
        mean = (reduce((x * m).sum()) / n).to(x.dtype)
        var = (reduce((((x - mean) * m) ** 2).sum()) / (n - 1 if n >= 2 else n)).to(x.dtype)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return _select(out, mask)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position where ``mask`` is set in each row, -1 for an empty row:
    (B, T) -> (B,) long."""
    m = mask.bool()
    positions = torch.arange(m.shape[-1], device=m.device)
    return torch.where(m, positions, -1).amax(-1)


def count_units(mask: torch.Tensor, mode: Aggregation) -> torch.Tensor:
    """This micro-batch's contribution to the global denominator of :func:`aggregate`.

    ``mask``: (B, T). token_mean counts masked tokens; sequence_mean / sequence_sum count
    sequences with at least one masked token; constant counts rows (its per-row length
    normaliser is fixed separately, Dr. GRPO).
    """
    if mode == "token_mean":
        return mask.sum().to(torch.float64)
    if mode in ("sequence_mean", "sequence_sum"):
        return (mask.sum(-1) > 0).sum().to(torch.float64)
    if mode == "constant":
        return torch.tensor(float(mask.shape[0]), dtype=torch.float64, device=mask.device)
    raise ValueError(f"unknown aggregation {mode!r}; expected one of {', '.join(AGGREGATIONS)}")


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation = "token_mean",
    *,
    denominator: torch.Tensor | float | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    - ``token_mean``: sum over all masked tokens / number of masked tokens (DAPO; SFT).
    - ``sequence_mean``: mean over each sequence's tokens, then mean over sequences (GRPO paper).
    - ``sequence_sum``: sum over each sequence's tokens, then mean over sequences (DPO-style
      sequence log-prob losses).
    - ``constant``: sum over tokens / ``max_len``, then mean over rows (Dr. GRPO: a constant
      normaliser so long and short responses are weighted alike).

    ``denominator`` is the global unit count (see :func:`count_units`) when the batch is one of
    several micro-batches or shards; by default this micro-batch's own count is used, which is
    the plain full-batch value.
    """
    # Reduce in at least float32: bf16 cannot even count past 256 exactly.
    dtype = torch.promote_types(per_token.dtype, torch.float32)
    x = _select(per_token.to(dtype), mask)
    if denominator is None:
        denominator = count_units(mask, mode)
    denom = torch.as_tensor(denominator, device=per_token.device).to(dtype).clamp(min=1)
    if mode == "token_mean":
        return x.sum() / denom
    if mode == "sequence_mean":
        per_seq = x.sum(-1) / mask.sum(-1).to(dtype).clamp(min=1)  # (B,)
        return per_seq.sum() / denom
    if mode == "sequence_sum":
        return x.sum() / denom
    if mode == "constant":
        if max_len is None:
            raise ValueError("aggregate(mode='constant') needs max_len, the constant length normaliser")
        return x.sum() / max_len / denom
    raise ValueError(f"unknown aggregation {mode!r}; expected one of {', '.join(AGGREGATIONS)}")
