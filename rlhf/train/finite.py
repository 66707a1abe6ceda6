"""Non-finite numbers are errors: :func:`check_finite` names the tensor and the first bad position.

The lowest layer of rlhf/train (no import from the rest of it): rlhf.train.run checks weights
before it publishes them, rlhf.train.guards re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["NonFiniteError", "check_finite", "check_finite_tensors"]


class NonFiniteError(RuntimeError):
    """A loss, gradient norm, reward or weight is NaN or infinite; nothing was published."""


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what``, the first bad position and its value."""
    if t.is_floating_point() or t.is_complex():
        t = t.detach()
        # Fast path: a NaN or inf anywhere makes the sum non-finite; a finite sum proves all
        # are finite (one read of the tensor, no mask). An overflowing sum of finite values
        # falls through to the exact element check.
        acc = torch.float64 if t.dtype == torch.float64 else torch.float32
        if t.numel() == 0 or bool(torch.isfinite(t.sum(dtype=acc if not t.is_complex() else None))):
            return
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            pos = idx[0] if len(idx) == 1 else idx
            raise NonFiniteError(f"{what}: {int(bad.sum())} of {t.numel()} values are not finite "
                                 f"(first at index {pos}: {float(t[idx].float())})")


def check_finite_tensors(tensors: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """Every named tensor finite, else :class:`NonFiniteError` naming the first bad one."""
    for name, t in tensors:
        check_finite(t, f"{where}: tensor {name}")
