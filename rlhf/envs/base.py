"""What an environment and a tool are: the protocols every one implements.

An **environment** is the world a policy acts in for one episode. It receives the dataset row,
returns the first observation (the prompt), then takes each action (the text of one policy turn)
and answers with a :class:`Step`: the next observation, a reward, and whether the episode is
over. Today's reward functions, reward models and their combinations are environments of one
step (:class:`rlhf.envs.single_turn.SingleTurn`): the observation is the prompt, the one action
is the completion, the reward is its score, and the episode ends there.

A **tool** is a Python function the policy may call from its text (a calculator, a search):
``name``, a one-line ``description`` and ``__call__(**arguments) -> str``, the text appended to
the episode as an observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Step", "Environment", "Tool"]


@dataclass
class Step:
    """What an environment answers to one action. ``observation``: text to append to the episode
    before the policy's next turn (None or "" = nothing); ``reward``: this step's reward (an
    episode's score is the sum of its steps'); ``done``: the episode is over; ``info``: anything to
    log (e.g. ``{"tool_error": 1}``)."""

    observation: str | None
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Environment(Protocol):
    """One episode's world: ``reset(row)`` -> the first observation (the prompt: text or chat
    messages); ``step(action)`` -> :class:`Step`. An instance serves one episode at a time."""

    def reset(self, row: Mapping[str, Any]) -> Any: ...

    def step(self, action: str) -> Step: ...


@runtime_checkable
class Tool(Protocol):
    """A function the policy can call: ``name``, ``description`` and ``__call__(**arguments)``
    returning the text of the result."""

    name: str
    description: str

    def __call__(self, **arguments: Any) -> str: ...
