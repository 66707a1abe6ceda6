"""Multi-turn episodes: the policy and an environment take turns in ONE token sequence.

    prompt | action 1 (sampled) | observation 1 (environment) | action 2 (sampled) | ...
    loss_mask  0 ... 0 |  1 1 1 1 1  |  0 0 0 0 0 0  |  1 1 1 ...     (a mask with holes)

:func:`run_episodes` drives a batch of episodes with any rollout engine: each turn it samples one
action per unfinished episode, its context being the episode's exact token ids so far (the
prompt, then every sampled and every observation token, never text decoded and tokenized
again); the environment reads the action's text and answers with a :class:`~rlhf.envs.base.Step`;
the observation's text is tokenized on its own and appended. What is trained is therefore exactly
what was sampled plus exactly the observation tokens that followed. Only the sampled tokens are
actions (log-probs, KL, advantages and loss); observation tokens are context.

Every action goes to the environment, also one cut by a length limit. An episode ends when the
environment says done, when a tool call fails (:class:`~rlhf.envs.tools.ToolError`: counted in
``tool_errors``, the episode's reward is what it had), after ``max_turns`` policy turns, or when
``max_tokens`` (everything after the prompt) leaves no room for another turn; ``ended`` is True
only when the environment said done after a turn that ended by itself (EOS or a stop string):
the EOS trick, ``ppo.missing_eos_penalty``, treats every other episode as cut.

:class:`ToolEnvironment` is the built-in multi-turn environment: tools the policy calls from its
text (rlhf/envs/tools.py) and a reward source that scores the final answer, the first turn
without a tool call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rlhf.envs.base import Environment, Step
from rlhf.envs.tools import PLAIN_RESULT, FunctionTool, ToolError, chat_observation, parse_tool_call, run_tool
from rlhf.rewards import call_reward, row_columns
from rlhf.rollout import Rollout, assemble_rollout
from rlhf.rollout.interface import stamp_version

__all__ = ["Episode", "ToolEnvironment", "run_episodes", "episodes_rollout", "episode_metrics", "tool_format_for"]


@dataclass
class Episode:
    """One episode's tokens after the prompt: ``tokens`` (exact ids, actions and observations in
    order), ``policy`` (1 where the token was sampled), and per token ``logps`` / ``entropy``
    (the sampler's, 0 on observations)."""

    prompt: Any
    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    policy: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    ended: bool = False
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, ids: Sequence[int], sampled: bool, logps: Sequence[float] = (),
            entropy: Sequence[float] = ()) -> None:
        self.tokens += list(ids)
        self.policy += [int(sampled)] * len(ids)
        self.logps += list(logps) if sampled and logps else [0.0] * len(ids)
        self.entropy += list(entropy) if sampled and entropy else [0.0] * len(ids)


def tool_format_for(tokenizer: Any, fmt: str) -> str:
    """``auto``: ``chat`` when the tokenizer's chat template writes ``<tool_call>`` blocks, else ``plain``."""
    if fmt != "auto":
        return fmt
    template = getattr(tokenizer, "chat_template", None) or ""
    return "chat" if isinstance(template, str) and "<tool_call>" in template else "plain"


class ToolEnvironment:
    """Tools plus a reward for the final answer. ``reset(row)`` -> the prompt; ``step(action)``:
    a tool call in the action runs the tool and returns its result as the observation (reward 0,
    not done); an action without one is the answer: ``reward`` scores (prompt, answer, the row's
    other columns) and the episode is done."""

    def __init__(self, reward: Callable[..., Any], tools: dict[str, FunctionTool], tool_format: str,
                 timeout_s: float = 5.0, tokenizer: Any = None):
        if tool_format == "chat" and tokenizer is None:
            raise ValueError("ToolEnvironment: the chat tool format needs the tokenizer (its chat template)")
        self.reward, self.tools, self.format, self.timeout_s, self.tokenizer = \
            reward, tools, tool_format, timeout_s, tokenizer
        self.row: Mapping[str, Any] = {}

    def reset(self, row: Mapping[str, Any]) -> Any:
        self.row = row
        return row["prompt"]

    def step(self, action: str) -> Step:
        call = parse_tool_call(action, self.format)  # ToolError when malformed
        if call is None:
            columns = row_columns([dict(self.row.get("columns", {}))])
            score = call_reward(self.reward, [self.row["prompt"]], [action], **columns)
            return Step(observation=None, reward=float(torch.as_tensor(score, dtype=torch.float64)[0]), done=True)
        result = run_tool(self.tools, call, self.timeout_s)
        obs = PLAIN_RESULT.format(result=result) if self.format == "plain" else chat_observation(self.tokenizer, result)
        return Step(observation=obs, reward=0.0, done=False, info={"tool_calls": 1})


def _observation_ids(tokenizer: Any, text: str) -> list[int]:
    """The observation's own tokens (no BOS/EOS added: it continues the sequence)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def run_episodes(engine: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], prompt_ids: Sequence[list[int]],
                 envs: Sequence[Environment], sampling: Any, *, max_turns: int, max_tokens: int,
                 turn_stop_strings: Sequence[str] = (), with_logps: bool = False,
                 generator: torch.Generator | None = None) -> list[Episode]:
    """Run one episode per (row, env) to its end (see the module doc). ``sampling``: a
    SamplingConfig; each turn samples at most ``sampling.max_new_tokens`` tokens, plus
    ``turn_stop_strings`` (a plain tool call's closing bracket) as stop strings."""
    if not (len(rows) == len(prompt_ids) == len(envs)):
        raise ValueError(f"run_episodes: {len(rows)} rows, {len(prompt_ids)} prompt_ids, {len(envs)} envs")
    episodes = [Episode(prompt=env.reset(row), prompt_ids=list(ids)) for row, ids, env in zip(rows, prompt_ids, envs)]
    stops = list(dict.fromkeys([*sampling.stop_strings, *turn_stop_strings]))
    for _turn in range(max_turns):
        active = [i for i, e in enumerate(episodes) if not e.done]
        if not active:
            break
        room = max(max_tokens - len(episodes[i].tokens) for i in active)
        cfg = replace(sampling, num_samples=1, max_new_tokens=min(sampling.max_new_tokens, room), stop_strings=stops)
        ro = engine.sample(tokenizer, [episodes[i].prompt for i in active],
                           [episodes[i].prompt_ids + episodes[i].tokens for i in active], cfg, num_samples=1,
                           generator=generator, with_logps=with_logps)
        P = ro.prompt_width
        for j, i in enumerate(active):
            e, env = episodes[i], envs[i]
            n = int(ro.completion_mask[j, P:].sum())
            ids = ro.input_ids[j, P:P + n].tolist()  # the exact sampled ids (EOS kept)
            budget = max_tokens - len(e.tokens)
            cut = len(ids) > budget
            ids = ids[:budget]
            lps = ro.logps[j, P:P + len(ids)].tolist() if ro.logps is not None else []
            ents = ro.entropy[j, P:P + len(ids)].tolist() if ro.entropy is not None else []
            e.add(ids, True, lps, ents)
            e.turns += 1
            try:  # a turn cut by a limit is still the policy's action: the environment reads it
                step = env.step(tokenizer.decode(ids, skip_special_tokens=True))
            except ToolError as err:
                e.done, e.tool_errors = True, e.tool_errors + 1
                e.errors.append(str(err))
                continue
            e.reward += float(step.reward)
            e.tool_calls += int(step.info.get("tool_calls", 0))
            if step.done:
                e.done, e.ended = True, bool(ro.ended[j]) and not cut
                continue
            obs = _observation_ids(tokenizer, step.observation or "")
            if cut or len(e.tokens) + len(obs) >= max_tokens:  # the length limit: no room left to act
                e.done = True
                continue
            e.add(obs, False)
    for e in episodes:
        e.done = True
    return episodes


def episodes_rollout(tokenizer: Any, episodes: Sequence[Episode], group_size: int, device: torch.device,
                     with_logps: bool = False, version: int = 0) -> Rollout:
    """The :class:`Rollout` of finished episodes: prompt left-padded, then every token after it;
    ``policy_mask`` (``loss_mask``) 1 on the sampled tokens only; ``extra["rewards"]`` (B,) the
    episodes' rewards and ``extra["episodes"]`` the episodes."""
    ro = assemble_rollout(tokenizer, [e.prompt for e in episodes], [e.prompt_ids for e in episodes],
                          [e.tokens for e in episodes], [e.ended for e in episodes], group_size, device,
                          logps=[torch.tensor(e.logps) for e in episodes] if with_logps else None,
                          entropy=[torch.tensor(e.entropy) for e in episodes] if with_logps else None)
    P = ro.prompt_width
    mask = torch.zeros_like(ro.completion_mask)
    for i, e in enumerate(episodes):
        mask[i, P:P + len(e.policy)] = torch.tensor(e.policy, dtype=mask.dtype)
    ro.policy_mask = mask
    ro.extra["rewards"] = torch.tensor([e.reward for e in episodes], dtype=torch.float32, device=device)
    ro.extra["episodes"] = list(episodes)
    return stamp_version(ro, version)


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """Means per episode: turns, tool calls, tool errors; the fraction that ended by the environment."""
    n = max(len(episodes), 1)
    return {"env/turns": sum(e.turns for e in episodes) / n, "env/tool_calls": sum(e.tool_calls for e in episodes) / n,
            "env/tool_errors": sum(e.tool_errors for e in episodes) / n,
            "env/ended_fraction": sum(e.ended for e in episodes) / n}
