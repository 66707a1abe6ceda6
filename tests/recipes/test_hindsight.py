"""Hindsight instruction relabeling: relabeled data is fn(prompt, completion) of each sample,
rounds chain policies and resume, a raising relabel function names the row and writes nothing,
and on the built-in task relabeling raises gold reward on instruction prompts."""

from __future__ import annotations

import json

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.recipes import hindsight as hir
from rlhf.recipes.hindsight import HindsightConfig, RelabelError, relabel_samples, train

PROMPTS = [f"reverse: {c}\n" for c in "abcdef"]


def tag(prompt, completion):
    return f"said {len(completion)}:"


def explode(prompt, completion):
    if prompt.startswith("reverse: c"):
        raise KeyError("no rule for c")
    return "x:"


def _cfg(tmp_path, tiny_llama, *extra):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return load_config(HindsightConfig, None, [
        f"output_dir={tmp_path / 'hir'}", f"model.name_or_path={tiny_llama}", f"data.train={prompts}",
        "data.chat_template=none", "data.max_length=64", "relabel=tests.recipes.test_hindsight:tag",
        "rounds=2", "num_samples=2", "sampling.max_new_tokens=6", "progress=false", "sft.train.batch_size=4",
        "sft.train.max_steps=2", "sft.train.progress=false", "sft.train.save_model_in_checkpoints=false", *extra])


def test_relabel_samples_maps_each_sample_and_names_a_failing_row():
    rows, dropped = relabel_samples(tag, ["p1", "p2"], ["ab", "", "abc", "a"], 2)
    assert rows == [{"prompt": "said 2:", "completion": "ab", "original_prompt": "p1"},
                    {"prompt": "said 3:", "completion": "abc", "original_prompt": "p2"},
                    {"prompt": "said 1:", "completion": "a", "original_prompt": "p2"}]
    assert dropped == 1  # the empty completion
    with pytest.raises(RelabelError, match=r"raised on prompt 2 \('reverse: c\\n'\), sample 1 \('y'\): KeyError"):
        relabel_samples(explode, ["reverse: a\n", "reverse: c\n"], ["y", "y", "y", "z"], 2)
    with pytest.raises(RelabelError, match="returned 3 on prompt 1"):
        relabel_samples(lambda p, c: 3, ["p"], ["c"], 1)


def test_rounds_chain_policies_and_resume(tmp_path, tiny_llama, monkeypatch):
    summary = train(_cfg(tmp_path, tiny_llama))
    out = tmp_path / "hir"
    r1, r2 = summary["rounds"]
    assert r1["policy"] == str(tiny_llama) and r2["policy"] == str(out / "round-1" / "sft" / "final")
    assert (out / "final" / "model.safetensors").read_bytes() == \
        (out / "round-2" / "sft" / "final" / "model.safetensors").read_bytes()
    for r in (1, 2):
        rows = [json.loads(x) for x in (out / f"round-{r}" / "relabeled.jsonl").read_text().splitlines()]
        assert len(rows) + summary["rounds"][r - 1]["dropped"] == 12
        assert all(x["prompt"] == tag(x["original_prompt"], x["completion"]) for x in rows)
        assert {x["original_prompt"] for x in rows} <= set(PROMPTS)
    # Resume: with round 2 unfinished, round 1 is skipped and round 2's samples are reused.
    (out / "summary.json").unlink()
    (out / "round-2" / "summary.json").unlink()

    def no_sampling(*a, **k):
        raise AssertionError("finished rounds and written samples are not sampled again")
    monkeypatch.setattr(hir, "generate_texts", no_sampling)
    again = train(_cfg(tmp_path, tiny_llama))
    assert again["rounds"][0] == r1 and again["rounds"][1]["relabeled"] == r2["relabeled"]


def test_a_raising_relabel_function_stops_the_round_with_nothing_written(tmp_path, tiny_llama):
    with pytest.raises(RelabelError, match=r"test_hindsight:explode raised on prompt 3 \('reverse: c\\n'\), sample 1"):
        train(_cfg(tmp_path, tiny_llama, "relabel=tests.recipes.test_hindsight:explode"))
    assert not (tmp_path / "hir" / "round-1").exists() and not (tmp_path / "hir" / "summary.json").exists()


@pytest.mark.parametrize("override,key", [("relabel=", "relabel"), ("relabel=nocolon", "relabel"),
                                          ("rounds=0", "rounds")])
def test_bad_configs(tmp_path, override, key):
    with pytest.raises(ConfigError) as e:
        load_config(HindsightConfig, None, ["data.train=x.jsonl", "model.name_or_path=m",
                                            "relabel=a.b:c", override])
    assert e.value.key == key


def test_missing_relabel_function_fails_before_any_output(tmp_path, tiny_llama):
    with pytest.raises(ConfigError, match="relabel"):
        train(_cfg(tmp_path, tiny_llama, "relabel=tests.recipes.test_hindsight:nope"))
    assert not (tmp_path / "hir").exists()


@pytest.mark.slow
def test_hindsight_relabeling_raises_gold_on_instruction_prompts(tmp_path):
    """The built-in task: a tiny policy fine-tuned on reviews, 30% of them with an instruction
    prompt ("positive/negative review of X:"), then 3 hindsight rounds on instruction prompts
    relabeled by the reviews' actual polarity (invalid texts dropped). Gold on held-out
    instruction prompts (polarity-aware) rises. Measured (seed 0): -0.53 -> -0.12; margin 0.2."""
    import torch

    from rlhf.data.config import DataConfig
    from rlhf.eval.evaluate import SamplingConfig, sample_completions
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.models.tiny import make_tiny_checkpoint
    from rlhf.recipes.sft import SFTConfig
    from rlhf.recipes.sft import train as sft_train
    from rlhf.testbed import reviews
    from rlhf.train.run import write_jsonl_atomic

    torch.set_num_threads(1)
    sft = reviews.make_sft_records(2000, seed=0, instruct_fraction=0.3)
    write_jsonl_atomic(tmp_path / "sft.jsonl", sft)
    write_jsonl_atomic(tmp_path / "prompts.jsonl",
                       [{"prompt": p} for p in reviews.make_prompts(128, seed=1, instruct=True)])
    base = make_tiny_checkpoint(tmp_path / "base", "llama", [r["prompt"] + r["completion"] for r in sft],
                                vocab_size=400, hidden_size=64, num_layers=2, num_heads=4,
                                max_position_embeddings=96, seed=0)
    data = {"chat_template": "none", "max_length": 64}
    quiet = {"progress": False, "save_model_in_checkpoints": False}
    sft_train(load_config(SFTConfig, None, [], base={
        "output_dir": str(tmp_path / "sft"), "model": {"name_or_path": str(base)},
        "data": {**data, "train": str(tmp_path / "sft.jsonl")},
        "train": {"lr": 3e-3, "batch_size": 32, "epochs": 3, "scheduler": "cosine", "warmup_ratio": 0.05, **quiet}}))
    train(load_config(HindsightConfig, None, [], base={
        "output_dir": str(tmp_path / "hir"), "relabel": "rlhf.testbed.feedback:reviews_relabel", "rounds": 3,
        "num_samples": 4, "progress": False, "model": {"name_or_path": str(tmp_path / "sft" / "final")},
        "data": {**data, "train": str(tmp_path / "prompts.jsonl")},
        "sampling": {"max_new_tokens": 40, "batch_size": 64},
        "sft": {"train": {"lr": 2e-3, "batch_size": 32, "epochs": 2, **quiet}}}))
    held_out = reviews.make_prompts(64, seed=2, instruct=True)

    def gold(path):
        cfg = ModelConfig(name_or_path=str(path))
        rows = sample_completions(load_causal_lm(cfg, for_training=False), load_tokenizer(cfg), held_out,
                                  SamplingConfig(max_new_tokens=40, batch_size=64), num_samples=4, seed=0,
                                  data_cfg=DataConfig(chat_template="none"))
        return reviews.summarize([r["prompt"] for r in rows], [r["completion"] for r in rows])["gold_mean"]

    before, after = gold(tmp_path / "sft" / "final"), gold(tmp_path / "hir" / "final")
    assert after > before + 0.2, (before, after)
