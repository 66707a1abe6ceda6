"""Sequence limits and attention kernels: a clear line before any work, never a deep traceback.

* ``data.max_length`` above a model's position limit (GPT-2 with 64 learned positions, where a
  longer sequence is an IndexError inside the embedding) stops SFT/RM/DPO with both numbers;
* PPO's longest prompt + ``sampling.max_new_tokens`` above it stops before sampling;
* an explicit attention kernel the architecture lacks (sdpa on BLOOM) is one config error;
  ``auto`` (the default) loads it with the kernel transformers supports.
"""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.cli import main
from rlhf.models.config import ModelConfig
from rlhf.models.load import load_causal_lm, position_limit


@pytest.fixture(scope="module")
def gpt2_64(tiny_checkpoint):
    return tiny_checkpoint("gpt2", max_position_embeddings=64)


def test_position_limit_is_read_from_the_config(gpt2_64, tiny_llama):
    assert position_limit(ModelConfig(name_or_path=str(gpt2_64))) == 64
    assert position_limit(ModelConfig(name_or_path=str(tiny_llama))) == 512


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_max_length_above_the_position_limit_stops_with_both_numbers(stage, gpt2_64, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    row = {"prompt": "a", "completion": "b"} if stage == "sft" else {"prompt": "a", "chosen": "b", "rejected": "c"}
    data.write_text(json.dumps(row) + "\n")
    out = tmp_path / "out"
    code = main([stage, f"output_dir={out}", f"model.name_or_path={gpt2_64}", f"data.train={data}",
                 "data.max_length=65"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "data.max_length" in err[0] and "65 tokens" in err[0] and ": 64 (max_position_embeddings)" in err[0]
    assert not out.exists()  # stopped before the run folder was made


def test_ppo_prompt_plus_new_tokens_above_the_limit_stops(gpt2_64, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "the cat sees a dog"}) + "\n")
    code = main(["ppo", f"output_dir={tmp_path / 'out'}", f"model.name_or_path={gpt2_64}", f"data.train={data}",
                 "reward=rlhf.testbed.reviews:gold_reward", "advantage=rloo", "sampling.num_samples=2",
                 "data.max_length=32", "sampling.max_new_tokens=63"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "sampling.max_new_tokens" in err[0] and "+ max_new_tokens (63)" in err[0] and ": 64 (" in err[0]


@pytest.fixture(scope="module")
def tiny_bloom(tmp_path_factory, corpus):
    from transformers import BloomConfig, BloomForCausalLM

    from rlhf.models.load import save_model
    from rlhf.models.tiny import train_tokenizer

    tok = train_tokenizer(corpus, 300)
    cfg = BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=2, n_head=4, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return save_model(BloomForCausalLM(cfg), tok, tmp_path_factory.mktemp("bloom") / "m")


def test_attention_auto_loads_an_architecture_without_sdpa(tiny_bloom):
    model = load_causal_lm(ModelConfig(name_or_path=str(tiny_bloom)), for_training=False)
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()
    assert position_limit(ModelConfig(name_or_path=str(tiny_bloom))) is None  # ALiBi: no table


def test_an_explicit_kernel_the_architecture_lacks_is_one_config_error(tiny_bloom):
    from rlhf.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.attn_implementation: 'sdpa' is not supported .* use auto"):
        load_causal_lm(ModelConfig(name_or_path=str(tiny_bloom), attn_implementation="sdpa"))
