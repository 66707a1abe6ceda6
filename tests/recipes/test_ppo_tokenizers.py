"""A policy and a reward model with different tokenizers (a Llama policy, a GPT-2 reward model
whose BPE was trained on other text).

* the vocabularies are compared as token -> id maps: equal-size but permuted ones differ;
* PPO with a critic-free estimator runs, says once that the reward model scores re-encoded text,
  and the scores it trains on equal the reward model applied to the decoded text directly;
* a critic that would start from that reward model (``value_model`` auto, the default) is refused
  before any work, naming value_model=shared and value_model=policy; before this check the run
  crashed with ``IndexError: index out of range in self`` inside the critic's embedding;
* ``value_model=shared`` runs.
"""

from __future__ import annotations

import json

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.models.config import ModelConfig
from rlhf.models.load import load_scalar_model, load_tokenizer, save_model
from rlhf.models.tiny import make_tiny_checkpoint, tiny_corpus
from rlhf.models.vocab import vocabulary_difference
from rlhf.recipes.ppo import PPOConfig, train
from rlhf.rewards import ModelReward


@pytest.fixture(scope="module")
def other_rm(tmp_path_factory):
    """A GPT-2 reward model (fresh head) whose tokenizer was trained on other text than the policy's."""
    d = tmp_path_factory.mktemp("other-rm")
    lm = make_tiny_checkpoint(d / "lm", "gpt2", tiny_corpus(200, seed=7), vocab_size=280, hidden_size=32,
                              num_layers=1, num_heads=2, max_position_embeddings=128)
    cfg = ModelConfig(name_or_path=str(lm))
    return save_model(load_scalar_model(cfg, for_training=False), load_tokenizer(cfg), d / "rm")


@pytest.fixture
def ppo_cfg(tmp_path, tiny_llama, other_rm):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"reverse: a b {c}\n"}) + "\n" for c in "cdef"))

    def make(*overrides: str) -> PPOConfig:
        return load_config(PPOConfig, None, [
            f"model.name_or_path={tiny_llama}", f"data.train={prompts}", f"reward={other_rm}",
            f"output_dir={tmp_path / 'run'}", "train.batch_size=4", "train.max_steps=1", "sampling.num_samples=2",
            "sampling.max_new_tokens=6", "train.progress=false", "ppo.epochs=1", *overrides])

    return make


def test_vocabularies_are_compared_by_mapping_not_size(tiny_llama, other_rm):
    policy = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama)))
    assert vocabulary_difference(policy, load_tokenizer(ModelConfig(name_or_path=str(tiny_llama)))) is None
    assert "tokens" in vocabulary_difference(policy, load_tokenizer(ModelConfig(name_or_path=str(other_rm))))

    class Permuted:  # same size, two ids swapped
        def get_vocab(self):
            v = dict(policy.get_vocab())
            a, b = sorted(v)[:2]
            v[a], v[b] = v[b], v[a]
            return v

    assert "same size" in vocabulary_difference(policy, Permuted())


def test_reward_model_with_another_tokenizer_scores_text(ppo_cfg, other_rm, tmp_path, capsys):
    train(ppo_cfg("advantage=rloo", "num_log_samples=4"))
    out = capsys.readouterr().out
    assert out.count("has another vocabulary than the policy") == 1, out
    samples = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if '"samples"' in x][0]["samples"]
    rm = ModelReward(other_rm, device="cpu")
    direct = rm([s["prompt"] for s in samples], [s["completion"] for s in samples])
    assert [round(float(x), 4) for x in direct] == [s["score"] for s in samples]


def test_a_critic_from_a_reward_model_with_another_vocabulary_is_refused(ppo_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"value_model: .*value_model=shared .*value_model=policy"):
        train(ppo_cfg("advantage=gae"))


def test_a_shared_critic_works_with_another_reward_tokenizer(ppo_cfg, tmp_path):
    summary = train(ppo_cfg("advantage=gae", "value_model=shared"))
    assert summary["last_step"]["updates"] == 1
