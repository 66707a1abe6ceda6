"""Iterative (online) DPO (rlhf/recipes/iterative_dpo.py): pair labelling against hand-computed
cases and the Bradley–Terry rate, the loop's files and references, resume, bad input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from rlhf.config import ConfigError, load_config
from rlhf.configs import recipe_path
from rlhf.recipes.iterative_dpo import IterativeDPOConfig, label_pairs, train
from rlhf.train.run import RunDirError

REWARDS = '''
def frac_a(prompts, completions):
    return [c.count("a") / max(1, len(c)) for c in completions]

def boom(prompts, completions):
    raise RuntimeError("reward failed")

def constant(prompts, completions):
    return [1.0 for c in completions]
'''


@pytest.fixture
def setup(rounds_setup):
    return rounds_setup("idpo_rewards", REWARDS, 12)


def _cfg(s, *extra, out=None):
    return load_config(IterativeDPOConfig, None, [
        f"output_dir={out or s['out']}", f"model.name_or_path={s['model']}", f"data.train={s['prompts']}",
        "data.chat_template=none", "data.max_length=64", "reward=idpo_rewards:frac_a", "samples_per_prompt=4",
        "sampling.max_new_tokens=12", "sampling.batch_size=12", "progress=false", "rounds=2",
        "dpo.train.lr=1e-3", "dpo.train.batch_size=4", "dpo.train.progress=false",
        "dpo.train.save_model_in_checkpoints=false", *extra])


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _g(prompt, *items):
    return [{"prompt": prompt, "completion": c, "reward": r} for c, r in items]


# --------------------------------------------------------------------------- pairs


def test_pairs_are_best_vs_worst_and_ties_are_skipped():
    groups = [
        _g("p0", ("a", 0.2), ("b", 0.9), ("c", -0.5), ("d", 0.1)),   # best b, worst c
        _g("p1", ("x", 1.0), ("y", 1.0)),                            # all tied: no pair
        _g("p2", ("same", 2.0), ("same", 2.0), ("low", 0.0)),        # tie for best: either "same"
        _g("p3", ("q", 3.0), ("q", 1.0)),                            # same text, two rewards
        _g("p4", ("  ", 3.0), ("ok", 1.0)),                          # blank best
    ]
    pairs, dropped = label_pairs(groups, 0.0, random.Random(0))
    assert pairs == [
        {"prompt": "p0", "chosen": "b", "rejected": "c", "score_chosen": 0.9, "score_rejected": -0.5, "flipped": False},
        {"prompt": "p2", "chosen": "same", "rejected": "low", "score_chosen": 2.0, "score_rejected": 0.0,
         "flipped": False},
    ]
    assert dropped == {"tied": 1, "identical": 1, "empty": 1}


def test_bradley_terry_noise_flips_at_the_predicted_rate():
    """Margin 1, τ = 1: P(keep the order) = σ(1) = 0.7311, so over 4000 pairs the flip count is
    4000·0.2689 = 1075.6 with sd sqrt(4000·0.2689·0.7311) = 28.0; ±120 is > 4 sd. τ = 0 never
    flips; a flipped pair has the lower score as 'chosen'."""
    groups = [_g(f"p{i}", (f"hi{i}", 1.0), (f"lo{i}", 0.0)) for i in range(4000)]
    pairs, _ = label_pairs(groups, 1.0, random.Random(0))
    flips = sum(p["flipped"] for p in pairs)
    assert abs(flips - 4000 / (1 + math.e)) < 120, flips
    assert all((p["score_chosen"] < p["score_rejected"]) == p["flipped"] for p in pairs)
    assert not any(p["flipped"] for p in label_pairs(groups[:50], 0.0, random.Random(0))[0])


# --------------------------------------------------------------------------- end to end


def test_rounds_sample_the_current_policy_and_use_it_as_reference(setup):
    s = train(_cfg(setup))
    out = setup["out"]
    m = _jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in m] == [1, 2] and json.loads((out / "summary.json").read_text()) == s
    for r in (1, 2):
        rows, pairs = _jsonl(out / f"round-{r}" / "samples.jsonl"), _jsonl(out / f"round-{r}" / "pairs.jsonl")
        assert len(rows) == 12 * 4 and len(pairs) == m[r - 1]["pairs"] > 0
        by_prompt: dict[str, list[dict]] = {}
        for x in rows:
            assert x["reward"] == pytest.approx(x["completion"].count("a") / max(1, len(x["completion"])))
            by_prompt.setdefault(x["prompt"], []).append(x)
        for p in pairs:  # chosen = a best-scored sample, rejected = a worst-scored one
            rewards = [x["reward"] for x in by_prompt[p["prompt"]]]
            assert p["score_chosen"] == max(rewards) > p["score_rejected"] == min(rewards)
        assert m[r - 1]["pairs"] + sum(m[r - 1][f"dropped_{k}"] for k in ("tied", "identical", "empty")) == 12
    # Round 2's DPO starts from, and is anchored to, round 1's policy (the model it trains is
    # its reference); round 1's from the starting model.
    c1 = yaml.safe_load((out / "round-1" / "dpo" / "config.yaml").read_text())
    c2 = yaml.safe_load((out / "round-2" / "dpo" / "config.yaml").read_text())
    assert c1["model"]["name_or_path"] == str(setup["model"])
    assert c2["model"]["name_or_path"] == str(out / "round-1" / "dpo" / "final")
    assert c2["data"]["train"] == str(out / "round-2" / "pairs.jsonl") and c2["data"]["format"] == "preference"
    assert (out / "final" / "model.safetensors").read_bytes() == \
        (out / "round-2" / "dpo" / "final" / "model.safetensors").read_bytes()


def test_resume_after_a_crash_equals_an_uninterrupted_run(setup, monkeypatch):
    ref = train(_cfg(setup, out=setup["tmp"] / "ref"))
    from rlhf.recipes import dpo as dpo_recipe
    real, calls = dpo_recipe.train, []

    def crash_in_round_2(cfg):
        calls.append(cfg.output_dir)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(cfg)

    monkeypatch.setattr(dpo_recipe, "train", crash_in_round_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_cfg(setup))
    monkeypatch.setattr(dpo_recipe, "train", real)
    out = setup["out"]
    assert (out / "round-1" / "summary.json").is_file() and not (out / "summary.json").exists()
    with pytest.raises(RunDirError, match="settings differ.*label_temperature: "):
        train(_cfg(setup, "label_temperature=0.5"))
    got = train(_cfg(setup))
    drop = ("wall_time_s", "policy_source")
    assert {k: v for k, v in got.items() if k not in drop} == {k: v for k, v in ref.items() if k not in drop}
    for f in ("round-2/samples.jsonl", "round-2/pairs.jsonl", "final_samples.jsonl", "final/model.safetensors"):
        assert (out / f).read_bytes() == (setup["tmp"] / "ref" / f).read_bytes(), f


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("override, key, message", [
    ("samples_per_prompt=1", "samples_per_prompt", "must be >= 2"),
    ("dpo.loss=kto", "dpo.loss", "must be one of"),
    ("dpo.loss=ipo", None, None),
    ("dpo.label_smoothing=0.1", None, None),
    ("dpo.loss=ipo dpo.label_smoothing=0.1", "dpo.label_smoothing", "applies to loss=dpo"),
    ("label_temperature=-1", "label_temperature", "must be >= 0"),
    ("reward=", "reward", "is required"),
])
def test_bad_configs_are_rejected_before_any_work(setup, override, key, message):
    if key is None:  # valid: accepted
        _cfg(setup, *override.split())
        return
    with pytest.raises(ConfigError) as e:
        _cfg(setup, *override.split())
    assert e.value.key == key and message in e.value.message
    assert not setup["out"].exists()


def test_bad_input_gives_clear_errors_and_leaves_nothing_half_written(setup):
    out = setup["out"]
    with pytest.raises(ConfigError, match="reward: .*cannot import"):
        train(_cfg(setup, "reward=nope:f"))
    assert not out.exists()
    from rlhf.rewards import RewardError
    with pytest.raises(RewardError, match=r"round 1/2: reward source reward .*raised RuntimeError: reward failed"):
        train(_cfg(setup, "reward=idpo_rewards:boom"))
    assert not (out / "round-1").exists() and not (out / "summary.json").exists()
    # A constant reward ties every prompt: no pair, a clear error and no DPO run started...
    with pytest.raises(RuntimeError, match=r"no usable pair from 12 prompts \(dropped: \{'tied': 12"):
        train(_cfg(setup, "reward=idpo_rewards:constant", out=setup["tmp"] / "tied"))
    assert not (setup["tmp"] / "tied" / "round-1" / "dpo").exists()
    assert not (setup["tmp"] / "tied" / "round-1" / "summary.json").exists()
    # ... or a counted skip.
    s = train(_cfg(setup, "reward=idpo_rewards:constant", "on_empty=skip", "score_final=false",
                   out=setup["tmp"] / "skip"))
    assert s["skipped_steps"] == 2 and s["pairs_total"] == 0


def test_shipped_tiny_config_is_valid():
    load_config(IterativeDPOConfig, recipe_path("iterative-dpo", "tiny"))


def _chosen_logps(model_dir, pairs_file):
    """Chosen-completion log-probs of a round's pairs under ``model_dir``, computed directly."""
    import torch

    from rlhf.data.collate import PreferenceCollator
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_records
    from rlhf.data.tokenize import encode_records
    from rlhf.logprobs import bucketed_sequence_logps
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer

    dcfg = DataConfig(train=str(pairs_file), chat_template="none", max_length=64, format="preference")
    records, report = load_records(dcfg, "preference")
    mcfg = ModelConfig(name_or_path=str(model_dir))
    tok, model = load_tokenizer(mcfg), load_causal_lm(mcfg, for_training=False)
    examples = encode_records(records, tok, dcfg, report)
    with torch.no_grad():
        return bucketed_sequence_logps(model, PreferenceCollator(tok.pad_token_id)(examples))[0][:len(examples)]


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["round", "initial"])
def test_reference_is_the_round_start_or_the_initial_policy(setup, reference):
    """Round 2's cached reference log-probs are those of round 1's policy (reference=round) or
    of the starting model (reference=initial), recomputed here from the checkpoints."""
    import torch
    from safetensors.torch import load_file

    out = setup["tmp"] / reference
    train(_cfg(setup, f"reference={reference}", out=out))
    cache = load_file(str(out / "round-2" / "dpo" / "reference_logps.safetensors"))["train/ref_chosen_logps"]
    pairs = out / "round-2" / "pairs.jsonl"
    want_dir = setup["model"] if reference == "initial" else out / "round-1" / "dpo" / "final"
    other_dir = out / "round-1" / "dpo" / "final" if reference == "initial" else setup["model"]
    torch.testing.assert_close(cache, _chosen_logps(want_dir, pairs), rtol=1e-5, atol=1e-4)
    assert (cache - _chosen_logps(other_dir, pairs)).abs().max() > 1e-2  # the two candidates differ
