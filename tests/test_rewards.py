"""Reward sources: callables, sums, Llama 2 safety gating, the spec factory, `rlhf score`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.rewards import CallableReward, RewardSource, SafetyGated, WeightedSum, load_reward_source

MODULE = '''
def count_a(prompts, completions):
    return [float(c.count("a")) for c in completions]

def length(prompts, completions):
    return [len(c) for c in completions]

def unsafe(prompts):
    return ["bomb" in p for p in prompts]

def bad_length(prompts, completions):
    return [1.0]

def nan(prompts, completions):
    return [float("nan")] * len(completions)
'''


@pytest.fixture
def fns(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


class Fixed(RewardSource):
    """A source returning given numbers, to test combinations on exact inputs."""

    def __init__(self, values, name="fixed"):
        self.values, self.name = torch.tensor(values, dtype=torch.float32), name

    def __call__(self, prompts, completions):
        return self.values.clone()


def test_callable_source_and_its_errors(fns):
    src = load_reward_source(f"{fns}:count_a")
    assert isinstance(src, CallableReward)
    out = src(["p", "q"], ["banana", "xyz"])
    assert out.dtype == torch.float32 and out.tolist() == [3.0, 0.0]
    assert load_reward_source({"type": "callable", "function": f"{fns}:length"})(["p"], ["abcd"]).tolist() == [4.0]
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        load_reward_source(f"{fns}:bad_length")(["p", "q"], ["a", "b"])
    with pytest.raises(ValueError, match="value 0 is nan"):
        load_reward_source(f"{fns}:nan")(["p"], ["a"])
    with pytest.raises(ValueError, match="no callable 'missing'"):
        load_reward_source(f"{fns}:missing")
    with pytest.raises(ValueError, match="cannot import"):
        load_reward_source("no_such_module_xyz:f")


def test_weighted_sum_equals_hand_computation(fns):
    """0.5·count_a - 2·length: for 'banana' 0.5·3 - 2·6 = -10.5; for 'aa' 0.5·2 - 2·2 = -3."""
    src = load_reward_source({"type": "sum", "sources": [f"{fns}:count_a", f"{fns}:length"],
                              "weights": [0.5, -2.0]})
    assert isinstance(src, WeightedSum)
    assert src(["p", "q"], ["banana", "aa"]).tolist() == [-10.5, -3.0]


def test_safety_gating_picks_the_right_score_in_each_case():
    """threshold 0.15, scale=probability. Rows:
    0: safe prompt, R_s = 0.9 >= 0.15       -> helpfulness 0.7
    1: safe prompt, R_s = 0.1 <  0.15       -> safety 0.1
    2: unsafe prompt (flagged), R_s = 0.8   -> safety 0.8
    3: unsafe prompt, R_s = 0.05            -> safety 0.05
    4: safe, R_s exactly 0.15 (not below)   -> helpfulness 0.2"""
    help_ = Fixed([0.7, 0.6, 0.5, 0.4, 0.2])
    safe = Fixed([0.9, 0.1, 0.8, 0.05, 0.15])
    prompts = ["hi", "hello", "how to make a bomb", "bomb?", "ok"]
    src = SafetyGated(help_, safe, threshold=0.15, scale="probability",
                      unsafe_prompts=lambda ps: ["bomb" in p for p in ps])
    r_c, use_safety = src.gate(prompts, ["x"] * 5)
    assert use_safety.tolist() == [False, True, True, True, False]
    assert r_c.tolist() == pytest.approx([0.7, 0.1, 0.8, 0.05, 0.2])
    assert src(prompts, ["x"] * 5).tolist() == pytest.approx([0.7, 0.1, 0.8, 0.05, 0.2])

    # Without a flagger only the threshold gates: row 2 now takes helpfulness.
    r2, u2 = SafetyGated(help_, safe, threshold=0.15, scale="probability").gate(prompts, ["x"] * 5)
    assert u2.tolist() == [False, True, False, True, False] and float(r2[2]) == pytest.approx(0.5)

    # Whitened logit (Llama 2 eq. 4): logit of the gated probabilities, then (x - mean) / std
    # with the Bessel-corrected std, computed here in plain Python.
    w = SafetyGated(help_, safe, threshold=0.15, scale="probability", whiten_logit=True,
                    unsafe_prompts=lambda ps: ["bomb" in p for p in ps])(prompts, ["x"] * 5)
    lg = [math.log(p / (1 - p)) for p in [0.7, 0.1, 0.8, 0.05, 0.2]]
    mu = sum(lg) / 5
    sd = math.sqrt(sum((x - mu) ** 2 for x in lg) / 4)
    assert w.tolist() == pytest.approx([(x - mu) / sd for x in lg], abs=1e-5)


def test_safety_gating_on_logit_scores(fns):
    """scale=sigmoid: raw reward-model scores are logits. σ(-2) = 0.119 < 0.15 -> safety;
    σ(0) = 0.5 -> helpfulness (returned as the probability σ(3) = 0.9526)."""
    src = SafetyGated(Fixed([3.0, 3.0]), Fixed([0.0, -2.0]), threshold=0.15)
    out = src(["a", "b"], ["x", "y"])
    assert out.tolist() == pytest.approx([1 / (1 + math.exp(-3.0)), 1 / (1 + math.exp(2.0))])
    # The factory builds the same thing from a spec, with a flagger given by name.
    spec = {"type": "safety_gated", "helpfulness": f"{fns}:length", "safety": f"{fns}:count_a",
            "threshold": 0.5, "unsafe_prompts": f"{fns}:unsafe"}
    g = load_reward_source(spec)
    # "bbb": σ(count_a=0) = 0.5, not < 0.5 -> helpfulness σ(3); prompt "bomb": safety σ(0) = 0.5
    assert g(["hi", "bomb"], ["bbb", "bbb"]).tolist() == pytest.approx([1 / (1 + math.exp(-3.0)), 0.5])
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        SafetyGated(Fixed([3.0]), Fixed([0.5]), scale="probability")(["a"], ["b"])


def test_spec_file_and_bad_specs(fns, tmp_path):
    f = tmp_path / "reward.yaml"
    f.write_text(f"type: sum\nsources: ['{fns}:count_a', '{fns}:count_a']\nweights: [1, 2]\n")
    assert load_reward_source(str(f))(["p"], ["aa"]).tolist() == [6.0]
    with pytest.raises(ValueError, match="unknown type 'nope'"):
        load_reward_source({"type": "nope"})
    with pytest.raises(ValueError, match="missing key 'sources'"):
        load_reward_source({"type": "sum"})
    with pytest.raises(ValueError, match="no such folder"):
        load_reward_source("runs/does-not-exist")


@pytest.mark.parametrize("fmt", ["sft", "ranked", "preference_csv"])
def test_score_tool_with_a_callable(fns, tmp_path, fmt):
    """`rlhf score --reward module:fn` writes the input rows plus rewards equal to fn's values;
    extra columns survive; a bad row is left out and reported."""
    from rlhf.cli import main

    if fmt == "sft":
        rows = [{"prompt": "p1", "completion": "banana", "id": 7}, {"prompt": "p2", "completion": "aa", "id": 8},
                {"prompt": "p3", "completion": ""}]
        data = tmp_path / "in.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / "out.jsonl"
    elif fmt == "ranked":
        rows = [{"prompt": "p", "responses": ["a", "aaa", "b"], "scores": [1, 2, 3]}]
        data = tmp_path / "in.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / "out.json"
    else:
        data = tmp_path / "in.csv"
        data.write_text("prompt,chosen,rejected\np,aab,b\n")
        out = tmp_path / "out.parquet"
    assert main(["score", "--reward", f"{fns}:count_a", "--data", str(data), "--output", str(out)]) == 0
    if fmt == "sft":
        got = [json.loads(x) for x in out.read_text().splitlines()]
        assert got == [{"prompt": "p1", "completion": "banana", "id": 7, "reward": 3.0},
                       {"prompt": "p2", "completion": "aa", "id": 8, "reward": 2.0}]
    elif fmt == "ranked":
        assert json.loads(out.read_text())[0]["rewards"] == [1.0, 3.0, 0.0]
    else:
        import pandas as pd
        df = pd.read_parquet(out)
        assert df["reward_chosen"].tolist() == [2.0] and df["reward_rejected"].tolist() == [0.0]
    assert main(["score", "--reward", f"{fns}:count_a", "--data", str(data), "--output", str(out)]) == 1
