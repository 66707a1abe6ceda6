"""Environments: what the policy acts in, and the tools it may call (docs/ppo.md).

* :mod:`~rlhf.envs.base`         the :class:`Environment` and :class:`Tool` protocols, :class:`Step`
* :mod:`~rlhf.envs.single_turn`  :class:`SingleTurn`: every reward source (model, function,
  combination) as an environment with one step
* :mod:`~rlhf.envs.teacher`      :class:`Teacher`: on-policy distillation's per-token reward
"""

from rlhf.envs.base import Environment, Step, Tool
from rlhf.envs.single_turn import SingleTurn, single_turn
from rlhf.envs.teacher import Teacher

__all__ = ["Environment", "Step", "Tool", "SingleTurn", "single_turn", "Teacher"]
