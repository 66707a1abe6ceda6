"""Settings of the environment (``env.*`` of the online stage): one-turn by default; tools or a
custom environment make episodes multi-turn (rlhf/envs/episodes.py, docs/environments.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.config import opt

__all__ = ["EnvConfig"]


@dataclass(frozen=True)
class EnvConfig:
    tools: list[str] = opt(factory=list, help="tools the policy may call from its text, package.module:function or "
                                              "path/to/file.py:function each (e.g. rlhf.envs.tools:calculator): "
                                              "episodes become multi-turn, the reward source scores the final "
                                              "answer (the first turn with no call)")
    factory: str = opt("", "a custom environment: package.module:function (or path/to/file.py:function) taking "
                           "the row and returning an "
                           "rlhf.envs.Environment (reset(row) -> prompt, step(action) -> Step); episodes are "
                           "multi-turn and the environment gives the rewards; empty = the reward source "
                           "(with env.tools if set)")
    max_turns: int = opt(4, "multi-turn: most policy turns per episode", gt=0)
    max_tokens: int | None = opt(None, "multi-turn: most tokens per episode after the prompt, policy and "
                                       "environment tokens together; null = sampling.max_new_tokens x max_turns",
                                 gt=0)
    tool_format: Literal["auto", "chat", "plain"] = opt(
        "auto", "how a tool call is written: chat = <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call> "
                "and the chat template's tool turn for the result; plain = [name: text] and ' = result' appended "
                "(models without a tool template); auto = chat when the chat template writes <tool_call>, "
                "else plain")
    tool_timeout_s: float = opt(5.0, "a tool call that has not returned after this many seconds ends its episode "
                                     "(counted in env/tool_errors)", gt=0)

    @property
    def multi_turn(self) -> bool:
        return bool(self.tools or self.factory)

    def episode_tokens(self, max_new_tokens: int) -> int:
        """The per-episode token budget after the prompt."""
        return self.max_tokens if self.max_tokens is not None else max_new_tokens * self.max_turns
