"""Every reward source of today as an environment with one step.

:class:`SingleTurn` wraps a reward source (a reward model, a Python function, a weighted sum, a
safety gate: rlhf/rewards.py): the first observation is the row's prompt, the one action is the
completion, the reward is the source's score of (prompt, completion, the row's other columns) and
the episode ends. Recipes score a whole batch of finished episodes in one call
(:meth:`SingleTurn.score`: the reward model runs batched), which is the same number the
per-episode :meth:`SingleTurn.step` gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rlhf.envs.base import Step
from rlhf.rewards import RewardSource, call_reward, load_reward_source, row_columns

__all__ = ["SingleTurn", "single_turn"]


class SingleTurn:
    """The environment of one-turn RLHF around ``reward`` (a :class:`rlhf.rewards.RewardSource`
    or any ``fn(prompts, completions, **columns)``)."""

    max_turns = 1

    def __init__(self, reward: Any):
        self.reward = reward
        self._row: Mapping[str, Any] | None = None

    # ------------------------------------------------------------------ one episode

    def reset(self, row: Mapping[str, Any]) -> Any:
        self._row = row
        return row["prompt"]

    def step(self, action: str) -> Step:
        if self._row is None:
            raise RuntimeError("SingleTurn.step before reset")
        row, self._row = self._row, None
        columns = row_columns([dict(row.get("columns", {}))])
        score = self.score([row["prompt"]], [action], columns)
        return Step(observation=None, reward=float(score[0]), done=True)

    # ------------------------------------------------------------------ a batch of episodes

    def score(self, prompts: Sequence[Any], completions: Sequence[str], columns: dict[str, list[Any]]) -> torch.Tensor:
        """The scores (B,) of finished episodes, one batched call of the reward source with the
        columns it accepts (rlhf.rewards.call_reward)."""
        return call_reward(self.reward, prompts, completions, **columns)

    def modules(self) -> list[nn.Module]:
        """The frozen models the reward runs (for placement and offloading)."""
        return self.reward.modules() if isinstance(self.reward, RewardSource) else []

    @property
    def mean(self) -> float | None:
        return getattr(self.reward, "mean", None)

    @property
    def std(self) -> float | None:
        return getattr(self.reward, "std", None)


def single_turn(spec: str | dict | RewardSource, *, device: str | None = None) -> SingleTurn:
    """The one-step environment of a reward spec (a reward-model folder, ``package.module:function``,
    a .yaml/.json spec file: rlhf.rewards.load_reward_source)."""
    return SingleTurn(load_reward_source(spec, device=device))
