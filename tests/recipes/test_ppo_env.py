"""rlhf ppo with multi-turn episodes (env.tools, env.factory) on a tiny model: the loop runs,
trains only the policy's tokens, logs the episodes' metrics, and refuses what cannot work."""

from __future__ import annotations

import json

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.recipes.ppo import PPOConfig, train

ENV_MODULE = '''
from rlhf.envs import Step

def any_answer(prompts, completions):
    return [float(len(c.strip()) > 0) for c in completions]

class Echo:
    """Two turns: 0.25 for the first action (then the observation " ok:"), 0.5 for the second."""
    def reset(self, row):
        self.turn = 0
        return row["prompt"]
    def step(self, action):
        self.turn += 1
        if self.turn == 1:
            return Step(observation=" ok:", reward=0.25, done=False)
        return Step(observation=None, reward=0.5, done=True)

def make(row):
    return Echo()
'''


@pytest.fixture
def setup(tmp_path, monkeypatch, tiny_llama):
    (tmp_path / "ppo_env_mod.py").write_text(ENV_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i}*7?"}) + "\n" for i in range(16)))

    def make(name: str, *overrides: str) -> PPOConfig:
        base = [f"model.name_or_path={tiny_llama}", f"data.train={prompts}", f"output_dir={tmp_path / name}",
                "train.batch_size=4", "sampling.num_samples=2", "sampling.max_new_tokens=6", "train.max_steps=2",
                "train.progress=false", "num_log_samples=0", "train.save_model_in_checkpoints=false",
                "advantage=grpo", "env.max_turns=2", "env.max_tokens=16"]
        return load_config(PPOConfig, None, base + list(overrides))

    return make


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"score"' in line]


@pytest.mark.parametrize("advantage", ["grpo", "gae"])
def test_tool_episodes_run_and_log(setup, tmp_path, advantage):
    cfg = setup(f"tools-{advantage}", "reward=ppo_env_mod:any_answer", "env.tools=[rlhf.envs.tools:calculator]",
                "env.tool_format=plain", f"advantage={advantage}", "value_model=shared")
    train(cfg)
    rows = _rows(tmp_path / f"tools-{advantage}")
    assert len(rows) == 2
    for r in rows:
        assert 1 <= r["env/turns"] <= 2 and 0 <= r["env/tool_errors"] <= r["env/turns"]
        assert r["response_length"] <= 16  # env.max_tokens: every token after the prompt


def test_custom_environment_gives_the_rewards(setup, tmp_path):
    """env.factory: the episode's reward is the sum of its steps' (0.25 + 0.5), no reward source."""
    train(setup("factory", "env.factory=ppo_env_mod:make", "reward="))
    for r in _rows(tmp_path / "factory"):
        assert r["env/turns"] == 2.0  # 6 + the observation + 6 tokens fit in env.max_tokens
        assert r["score"] == 0.75


@pytest.mark.parametrize("overrides,field", [
    (["advantage=remax", "env.tools=[rlhf.envs.tools:calculator]", "reward=ppo_env_mod:any_answer"], "advantage"),
    (["reward="], "reward"),  # neither a reward nor an environment factory
    (["env.max_tokens=100000", "reward=ppo_env_mod:any_answer", "env.tools=[rlhf.envs.tools:calculator]"],
     "env.max_tokens"),  # past the model's positions: found before any sampling
])
def test_env_config_errors(setup, tmp_path, overrides, field):
    with pytest.raises(ConfigError) as e:
        train(setup("bad", *overrides))
    assert e.value.key == field
