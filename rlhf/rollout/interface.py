"""The interface every rollout engine implements (rlhf/rollout/engines.py holds the registry)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rlhf.rollout.episode import Rollout

__all__ = ["RolloutEngine", "stamp_version"]


class RolloutEngine:
    """What every engine offers. ``sample`` returns a :class:`rlhf.rollout.Rollout` laid out as
    the built-in sampler's (left-padded prompts, right-padded completions, EOS kept, the tail
    cut by :func:`rlhf.rollout.episode.end_of_completion`), with ``policy_version`` set to
    ``version``; ``sync(model)`` makes the engine sample from ``model``'s current weights, moves
    ``version`` on by one and returns metrics (seconds, probe difference); ``can_load(model)`` says
    whether ``sync`` can take another model of the same shapes; ``close`` frees what the engine
    holds."""

    name = "engine"
    version = 0  # weight syncs so far: the policy version the next rollout is drawn from

    def sample(self, tokenizer: Any, prompts: Sequence[Any], prompt_ids: Sequence[list[int]], cfg: Any, *,
               greedy: bool = False, num_samples: int | None = None, generator: torch.Generator | None = None,
               with_logps: bool = False) -> Rollout:
        raise NotImplementedError

    def sync(self, model: nn.Module) -> dict[str, float]:
        self.version += 1
        return {}

    def can_load(self, model: nn.Module) -> bool:
        """True when ``sync(model)`` can take ``model``'s weights (same architecture and shapes)."""
        return False

    def close(self) -> None:
        pass


def stamp_version(ro: Rollout, version: int) -> Rollout:
    """``ro`` with ``policy_version`` = ``version`` on its actions, -1 elsewhere."""
    mask = ro.loss_mask.bool()
    ro.policy_version = torch.where(mask, torch.full_like(ro.input_ids, version), torch.full_like(ro.input_ids, -1))
    return ro
