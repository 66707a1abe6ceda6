"""The environment seam (rlhf/envs): every reward source is an environment of one step whose
batched score is the reward source's own call."""

from __future__ import annotations

import pytest
import torch

from rlhf.envs import Environment, SingleTurn, Step, single_turn
from rlhf.rewards import CallableReward, WeightedSum


def length_reward(prompts, completions, bonus=None):
    """len(completion), plus the row's bonus column when given."""
    extra = bonus or [0.0] * len(prompts)
    return [float(len(c)) + float(b) for c, b in zip(completions, extra, strict=True)]


def test_single_turn_is_the_reward_source_as_one_step():
    env = SingleTurn(CallableReward(length_reward))
    assert isinstance(env, Environment)
    assert env.reset({"prompt": "p1", "columns": {"bonus": 10.0}}) == "p1"
    step = env.step("abc")
    assert step == Step(observation=None, reward=13.0, done=True)  # 3 characters + the row's bonus
    with pytest.raises(RuntimeError, match="before reset"):
        env.step("again")  # one step per episode


def test_batched_score_equals_the_reward_call_and_the_steps():
    """SingleTurn.score is the reward source's call (columns it does not take are dropped), and
    equals the per-episode steps; a weighted sum stays a weighted sum."""
    src = WeightedSum([CallableReward(length_reward), CallableReward(lambda p, c: [1.0] * len(c))], [2.0, -1.0])
    env = SingleTurn(src)
    rows = [{"prompt": "a", "columns": {"unused": 1}}, {"prompt": "b", "columns": {"unused": 2}}]
    completions = ["xy", "xyz!"]
    batched = env.score([r["prompt"] for r in rows], completions, {"unused": [1, 2]})
    assert torch.equal(batched, src(["a", "b"], completions))
    assert batched.tolist() == [2 * 2 - 1, 2 * 4 - 1]
    steps = []
    for r, c in zip(rows, completions, strict=True):
        env.reset(r)
        steps.append(env.step(c).reward)
    assert steps == batched.tolist()
    assert env.modules() == [] and env.mean is None


def test_single_turn_loads_a_reward_spec():
    env = single_turn("tests.test_envs:length_reward")
    assert env.score(["p"], ["abcd"], {}).tolist() == [4.0]
