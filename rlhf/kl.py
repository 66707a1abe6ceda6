"""Per-token KL estimators and the controllers that set the KL coefficient β.

Estimators (Schulman 2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html).
For a token ``x`` sampled from the policy π, with ``d = log π_ref(x) - log π(x)`` (so
``π_ref/π = exp(d)``), each estimator below is a function of ``d`` alone:

- ``k1 = -d = log π - log π_ref``: unbiased for KL(π‖π_ref), high variance, can be negative.
- ``k2 = ½ d²``: always ≥ 0, low variance, biased; its expectation is ½ E_π[(log π/π_ref)²],
  which matches KL(π‖π_ref) only to second order when the two are close.
- ``k3 = exp(d) - d - 1``: unbiased (E_π[exp(d)] = 1) and always ≥ 0 (since eˣ ≥ 1 + x).

All three need ``logps`` of tokens drawn from π; on other tokens they estimate nothing.
Padded positions carry arbitrary numbers (often huge differences), so pass ``mask`` and the
log-ratio there is set to 0 before the nonlinearity: every estimator is then exactly 0 at
padding, and ``exp`` cannot overflow into ``inf * 0 = nan`` in a later masked sum.

Controllers (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", §2.2):
tiny state holders with ``.value`` (the current β), ``.update(current_kl, n_steps)`` and
``state_dict`` / ``load_state_dict`` so that a resumed run continues with the same β.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "KL_ESTIMATORS",
    "kl_estimate",
    "FixedKLController",
    "AdaptiveKLController",
    "KL_CONTROLLERS",
]


def _log_ratio(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``log π - log π_ref`` per token, 0 where ``mask`` is 0."""
    diff = logps - ref_logps  # (B, T)
    if mask is not None:
        # where, not multiply: a garbage 1e30 at a padded position times 0 is fine, but its exp is not.
        diff = torch.where(mask.bool(), diff, torch.zeros_like(diff))
    return diff


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k1 = log π(x) - log π_ref(x); unbiased estimator of KL(π‖π_ref) for x ~ π. Shape as input."""
    return _log_ratio(logps, ref_logps, mask)


def kl_k2(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k2 = ½ (log π(x) - log π_ref(x))²; biased, non-negative, low variance. Shape as input."""
    return 0.5 * _log_ratio(logps, ref_logps, mask).square()


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k3 = π_ref/π - log(π_ref/π) - 1 = exp(d) - d - 1 with d = log π_ref - log π.

    Unbiased for KL(π‖π_ref) and never negative. Written ``expm1(d) - d`` so that a small d
    (policy close to reference, the usual case) keeps its precision instead of cancelling
    ``exp(d) - 1`` to zero. Shape as input.
    """
    d = -_log_ratio(logps, ref_logps, mask)  # (B, T) log π_ref - log π
    return torch.expm1(d) - d


KL_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(
    logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1", mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token KL estimate by registry name (``k1``, ``k2``, ``k3``)."""
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}") from None
    return fn(logps, ref_logps, mask)


class FixedKLController:
    """A constant β. ``update`` does nothing; present so both controllers are used alike."""

    def __init__(self, beta: float):
        if beta < 0:
            raise ValueError(f"FixedKLController: beta must be >= 0 (got {beta})")
        self.value = float(beta)

    @classmethod
    def build(cls, beta: float, target: float | None = None, horizon: float = 10000.0) -> FixedKLController:
        """From the ``kl`` settings (every controller takes the same three; a fixed β uses one)."""
        return cls(beta)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller that steers the measured KL towards ``target``.

    Ziegler et al. 2019, §2.2:  e_t = clip(KL_t / KL_target - 1, -0.2, 0.2),
    β_{t+1} = β_t (1 + K_β e_t), with K_β = n_steps / horizon (``n_steps`` = samples or
    steps since the last update; ``horizon`` sets how fast β reacts). KL above target raises β.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        if init_beta <= 0:
            raise ValueError(f"AdaptiveKLController: init_beta must be > 0 (got {init_beta})")
        if target <= 0:
            raise ValueError(f"AdaptiveKLController: target must be > 0 (got {target})")
        if horizon <= 0:
            raise ValueError(f"AdaptiveKLController: horizon must be > 0 (got {horizon})")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    @classmethod
    def build(cls, beta: float, target: float | None = None, horizon: float = 10000.0) -> AdaptiveKLController:
        """From the ``kl`` settings; ``target`` is required."""
        if target is None:
            raise ValueError("AdaptiveKLController: a target KL is required")
        return cls(beta, target, horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)  # clipped proportional error
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


KL_CONTROLLERS: dict[str, type[FixedKLController] | type[AdaptiveKLController]] = {
    "fixed": FixedKLController, "adaptive": AdaptiveKLController}
