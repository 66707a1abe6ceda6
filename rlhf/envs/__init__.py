"""Environments: what the policy acts in, and the tools it may call (docs/ppo.md).

* :mod:`~rlhf.envs.base`         the :class:`Environment` and :class:`Tool` protocols, :class:`Step`
* :mod:`~rlhf.envs.single_turn`  :class:`SingleTurn`: every reward source (model, function,
  combination) as an environment with one step
* :mod:`~rlhf.envs.teacher`      :class:`Teacher`: on-policy distillation's per-token reward
* :mod:`~rlhf.envs.tools`        tool calls (chat and plain formats), run with a time limit
* :mod:`~rlhf.envs.episodes`     multi-turn episodes in one token sequence (:func:`run_episodes`),
  :class:`ToolEnvironment` (tools + a reward for the final answer)
* :mod:`~rlhf.envs.config`       ``EnvConfig`` (``env.*``)
"""

from rlhf.envs.base import Environment, Step, Tool
from rlhf.envs.config import EnvConfig
from rlhf.envs.episodes import Episode, ToolEnvironment, episodes_rollout, run_episodes
from rlhf.envs.single_turn import SingleTurn, single_turn
from rlhf.envs.teacher import Teacher
from rlhf.envs.tools import FunctionTool, ToolCall, ToolError, calculator, parse_tool_call, run_tool

__all__ = ["Environment", "Step", "Tool", "EnvConfig", "SingleTurn", "single_turn", "Teacher", "Episode",
           "ToolEnvironment", "run_episodes", "episodes_rollout", "FunctionTool", "ToolCall", "ToolError",
           "calculator", "parse_tool_call", "run_tool"]
