"""RAFT and ReST (rlhf/recipes/rejection.py): selection rules against hand-computed cases, the
schedules, learning on a programmatic reward, resume after a crash, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.configs import recipe_path
from rlhf.recipes import rejection
from rlhf.recipes.rejection import (
    RAFTConfig,
    ReSTConfig,
    raft_schedule,
    rest_schedule,
    select,
    select_best_per_prompt,
    select_threshold,
    select_top_fraction,
    train,
    train_rest,
)
from rlhf.train.run import RunDirError

REWARDS = '''
def frac_a(prompts, completions):
    return [c.count("a") / max(1, len(c)) for c in completions]

def boom(prompts, completions):
    raise RuntimeError("reward failed")

def nothing(prompts, completions):
    return [0.0 for c in completions]
'''


@pytest.fixture
def setup(rounds_setup):
    return rounds_setup("rs_rewards", REWARDS, 16)


COMMON = ["data.chat_template=none", "data.max_length=64", "reward=rs_rewards:frac_a", "samples_per_prompt=8",
          "sampling.max_new_tokens=16", "sampling.batch_size=16", "progress=false", "require_eos=false",
          "sft.train.lr=3e-3", "sft.train.batch_size=8", "sft.train.epochs=3", "sft.train.progress=false",
          "sft.train.save_model_in_checkpoints=false"]


def _cfg(cls, s, *extra, out=None):
    return load_config(cls, None, [f"output_dir={out or s['out']}", f"model.name_or_path={s['model']}",
                                   f"data.train={s['prompts']}", *COMMON, *extra])


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# --------------------------------------------------------------------------- selection


def test_best_per_prompt_hand_computed_with_seeded_ties():
    """Prompt 0: one maximum (index 2). Prompt 1: three-way tie at 5 (indices 0, 2, 3), each picked
    ~1/3 of the time over 3000 draws (sd of a count sqrt(3000·2/9) = 25.8; ±120 is > 4 sd).
    Prompt 2: its maximum (index 1) is ineligible, so the best eligible one (index 0) wins; prompt 3:
    nothing eligible -> None."""
    groups = [[0.1, 0.3, 0.9, 0.2], [5.0, 1.0, 5.0, 5.0], [2.0, 9.0, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0]]
    elig = [[True] * 4, [True] * 4, [True, False, True, True], [False] * 4]
    got = select_best_per_prompt(groups, random.Random(0), elig)
    assert got[0] == 2 and got[2] == 0 and got[3] is None and got[1] in (0, 2, 3)
    counts = {0: 0, 2: 0, 3: 0}
    rng = random.Random(1)
    for _ in range(3000):
        counts[select_best_per_prompt([groups[1]], rng)[0]] += 1
    assert all(abs(c - 1000) < 120 for c in counts.values()), counts
    # Seeded: the same seed picks the same tied sample.
    assert select_best_per_prompt(groups, random.Random(7)) == select_best_per_prompt(groups, random.Random(7))


def test_threshold_and_top_fraction_hand_computed():
    r = [0.5, -1.0, 2.0, 0.5, 3.0, 0.49]
    assert select_threshold(r, 0.5) == [0, 2, 3, 4]  # >= keeps the equal ones
    assert select_threshold(r, 0.5, [True, True, True, False, True, True]) == [0, 2, 4]
    assert select_threshold(r, 10.0) == []
    # top 1/2 of 6 = 3 samples: 3.0, 2.0, and one of the two 0.5s (tie at the cut, at random)
    seen = set()
    for seed in range(40):
        k = select_top_fraction(r, 0.5, random.Random(seed))
        assert len(k) == 3 and {2, 4} <= set(k) and k == sorted(k)
        seen.add(tuple(k))
    assert seen == {(0, 2, 4), (2, 3, 4)}
    assert len(select_top_fraction(r, 0.34, random.Random(0))) == 3  # ceil(0.34·6) = ceil(2.04) = 3
    assert select_top_fraction(r, 1 / 3, random.Random(0)) == [2, 4]  # exactly 2
    assert select_top_fraction(r, 1.0, random.Random(0)) == list(range(6))


def test_select_rules_on_sample_rows():
    """``select`` over a samples file: K = 3 rows per prompt; blank and (with require_eos)
    truncated completions are never kept."""
    def row(reward, text="x", eos=True):
        return {"reward": reward, "completion": text, "ended_with_eos": eos}
    rows = [row(1.0), row(3.0, eos=False), row(2.0),      # prompt 0
            row(0.0), row(5.0, text="  "), row(-1.0)]     # prompt 1
    best, t = select(("best",), rows, 3, random.Random(0), require_eos=True)
    assert best == [2, 3] and t is None     # 3.0 truncated, 5.0 blank
    best, _ = select(("best",), rows, 3, random.Random(0), require_eos=False)
    assert best == [1, 3]
    assert select(("threshold", 1.0), rows, 3, random.Random(0), require_eos=False) == ([0, 1, 2], 1.0)
    # ReST's quantile q keeps the top 1 - q of the eligible samples: q = 0.6 of the 5 non-blank
    # rewards (1, 3, 2, 0, -1) keeps ceil(0.4·5) = 2 of them, 3 and 2; its threshold is 2.
    assert select(("quantile", 0.6), rows, 3, random.Random(0), require_eos=False) == ([1, 2], 2.0)


def test_rest_thresholds_rise_and_quantiles_keep_less_each_improve_step():
    """Rewards 0..9 with many ties at 0: quantiles 0.5 then 0.8 keep exactly 5 then 2 samples, the
    second a subset of the first's top; 'reward >= the 0.5-quantile' would keep all 12."""
    rewards = [0.0] * 3 + [float(x) for x in range(10)]
    rows = [{"reward": r, "completion": "x", "ended_with_eos": True} for r in rewards]
    k1, t1 = select(("quantile", 0.5), rows, 1, random.Random(0), True)
    k2, t2 = select(("quantile", 0.8), rows, 1, random.Random(0), True)
    assert len(k1) == 7 and len(k2) == 3  # ceil(0.5·13) = 7, ceil(0.2·13) = 3
    assert sorted(rewards[i] for i in k1) == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0] and t1 == 3.0
    assert sorted(rewards[i] for i in k2) == [7.0, 8.0, 9.0] and t2 == 7.0
    with pytest.raises(ConfigError, match="non-decreasing"):
        load_config(ReSTConfig, None, ["data.train=x", "reward=m:f", "model.name_or_path=m",
                                       "thresholds=[0.8,0.5]"])


def test_schedules():
    raft = raft_schedule(load_config(RAFTConfig, None, ["data.train=x", "reward=m:f", "model.name_or_path=m",
                                                        "rounds=3", "keep=threshold", "threshold=0.2"]))
    assert [(s.folder, s.samples, s.rule) for s in raft] == [
        (f"round-{r}", f"round-{r}", ("threshold", 0.2)) for r in (1, 2, 3)]
    rest = rest_schedule(load_config(ReSTConfig, None, ["data.train=x", "reward=m:f", "model.name_or_path=m",
                                                        "grow_steps=2", "thresholds=[0.3,0.6,0.9]"]))
    assert [(s.index, s.folder, s.samples, s.rule[1]) for s in rest] == [
        (1, "grow-1/improve-1", "grow-1", 0.3), (2, "grow-1/improve-2", "grow-1", 0.6),
        (3, "grow-1/improve-3", "grow-1", 0.9), (4, "grow-2/improve-1", "grow-2", 0.3),
        (5, "grow-2/improve-2", "grow-2", 0.6), (6, "grow-2/improve-3", "grow-2", 0.9)]
    # Improve steps of one Grow share its samples (same seed, same prompt subset).
    assert len({(s.sample_seed, s.sampling_round) for s in rest}) == 2


# --------------------------------------------------------------------------- end to end


def test_raft_learns_a_programmatic_reward(setup):
    """Reward: the fraction of a completion's characters that are 'a'. The random tiny model
    starts near 0.01; measured over seeds 0, 1, 2 the final policy scores 0.076-0.082 after 4
    rounds of best-of-8 (7x). The bar: a gain of at least 0.03 (less than half of that), and the
    per-round score of the samples rising from round 1 to round 4."""
    s = train(_cfg(RAFTConfig, setup, "rounds=4", "keep=best"))
    out = setup["out"]
    m = _jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in m] == [1, 2, 3, 4] and json.loads((out / "summary.json").read_text()) == s
    assert s["final_score"] - s["initial_score"] >= 0.03, s
    assert m[-1]["score"] > m[0]["score"]
    # The files agree with each other: rewards recomputed, kept = the best of 8 per prompt.
    for r in (1, 4):
        rows, kept = _jsonl(out / f"round-{r}" / "samples.jsonl"), _jsonl(out / f"round-{r}" / "kept.jsonl")
        assert len(rows) == 16 * 8 and len(kept) == m[r - 1]["kept"] <= 16
        for x in rows:
            assert x["reward"] == pytest.approx(x["completion"].count("a") / max(1, len(x["completion"])))
        for k in kept:
            group = [x for x in rows if x["prompt_index"] == k["prompt_index"] and x["completion"].strip()]
            assert k["reward"] == max(x["reward"] for x in group)
        assert m[r - 1]["kept_score"] == pytest.approx(sum(k["reward"] for k in kept) / len(kept))
    # final/ is the last round's policy: the same weights.
    assert (out / "final" / "model.safetensors").read_bytes() == \
        (out / "round-4" / "sft" / "final" / "model.safetensors").read_bytes()


def test_rest_runs_its_schedule_and_shares_grow_samples(setup):
    s = train_rest(_cfg(ReSTConfig, setup, "grow_steps=2", "thresholds=[0.5,0.75]", "sft.train.epochs=1"))
    out = setup["out"]
    m = _jsonl(out / "metrics.jsonl")
    assert [(r["grow"], r["improve"]) for r in m] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # Improve steps filter the same Grow dataset, keeping less and better each time.
    assert m[0]["score"] == m[1]["score"] and m[0]["kept"] > m[1]["kept"] > 0
    assert m[1]["kept_score"] >= m[0]["kept_score"] and m[1]["threshold"] >= m[0]["threshold"]
    assert not (out / "grow-1" / "improve-1" / "samples.jsonl").exists()
    # Improve 2 fine-tunes the policy Improve 1 left: its SFT run starts from that folder.
    cfg2 = (out / "grow-1" / "improve-2" / "sft" / "config.yaml").read_text()
    assert str(out / "grow-1" / "improve-1" / "sft" / "final") in cfg2
    cfg3 = (out / "grow-2" / "improve-1" / "sft" / "config.yaml").read_text()
    assert str(out / "grow-1" / "improve-2" / "sft" / "final") in cfg3
    assert s["steps"] == 4 and s["policy_source"] == "grow-2/improve-2/sft/final"


@pytest.mark.slow
def test_resume_after_a_crash_equals_an_uninterrupted_run(setup, monkeypatch):
    """Kill the run inside round 2's SFT (after round 1 finished), start it again: round 1 is
    skipped, round 2's samples are read back, and every output equals a run never interrupted."""
    extra = ("rounds=3", "keep=top_fraction", "top_fraction=0.25", "sft.train.epochs=1")
    ref = train(_cfg(RAFTConfig, setup, *extra, out=setup["tmp"] / "ref"))

    from rlhf.recipes import sft as sft_recipe
    real, calls = sft_recipe.train, []

    def crash_in_round_2(cfg):
        calls.append(cfg.output_dir)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(cfg)

    monkeypatch.setattr(sft_recipe, "train", crash_in_round_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_cfg(RAFTConfig, setup, *extra))
    out = setup["out"]
    assert (out / "round-1" / "summary.json").is_file() and (out / "round-2" / "samples.jsonl").is_file()
    assert not (out / "round-2" / "summary.json").exists() and not (out / "summary.json").exists()
    # A changed setting is refused, not silently resumed.
    with pytest.raises(RunDirError, match="settings differ.*top_fraction: "):
        train(_cfg(RAFTConfig, setup, *extra[:2], "top_fraction=0.5", "sft.train.epochs=1"))
    monkeypatch.setattr(sft_recipe, "train", real)
    got = train(_cfg(RAFTConfig, setup, *extra))
    drop = ("seconds", "wall_time_s", "policy_source")
    assert {k: v for k, v in got.items() if k not in drop} == {k: v for k, v in ref.items() if k not in drop}
    for f in ("round-1/samples.jsonl", "round-2/kept.jsonl", "round-3/samples.jsonl", "final_samples.jsonl",
              "final/model.safetensors"):
        assert (out / f).read_bytes() == (setup["tmp"] / "ref" / f).read_bytes(), f
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _jsonl(out / "metrics.jsonl")]
    ref_metrics = _jsonl(setup["tmp"] / "ref" / "metrics.jsonl")
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in ref_metrics]
    # Finished: never overwritten.
    with pytest.raises(RunDirError, match="finished run"):
        train(_cfg(RAFTConfig, setup, *extra))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("override, key, message", [
    ("rounds=0", "rounds", "must be >= 1"),
    ("keep=threshold", "threshold", "is required with keep=threshold"),
    ("threshold=0.5", "threshold", "applies to keep=threshold only"),
    ("samples_per_prompt=1", "samples_per_prompt", "best of one"),
    ("sampling.temperature=0", "sampling.temperature", "greedy"),
    ("reward=", "reward", "is required"),
    ("data.train=", "data.train", "is required"),
    ("top_fraction=0", "top_fraction", "must be > 0"),
])
def test_bad_configs_are_rejected_before_any_work(setup, override, key, message):
    with pytest.raises(ConfigError) as e:
        _cfg(RAFTConfig, setup, override)
    assert e.value.key == key and message in e.value.message
    assert not setup["out"].exists()


def test_bad_input_gives_clear_errors_and_leaves_nothing_half_written(setup):
    out = setup["out"]
    empty = setup["tmp"] / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(Exception, match="empty|no usable prompts|no rows"):
        train(_cfg(RAFTConfig, setup, f"data.train={empty}"))
    with pytest.raises(ConfigError, match="reward: .*cannot import module 'nope'"):
        train(_cfg(RAFTConfig, setup, "reward=nope:f"))
    with pytest.raises(ConfigError, match="track.gold: .*no callable"):
        train(_cfg(RAFTConfig, setup, "track={gold: 'rs_rewards:missing'}"))
    assert not out.exists()  # inputs are checked before the folder is created
    from rlhf.rewards import RewardError
    with pytest.raises(RewardError, match=r"step 1/2 \(round-1\): reward source reward .*raised RuntimeError: "
                                          r"reward failed"):
        train(_cfg(RAFTConfig, setup, "reward=rs_rewards:boom", "rounds=2"))
    assert not (out / "round-1").exists() and not (out / "summary.json").exists()
    # Nothing kept: a clear error, the round's samples saved but the round not finished...
    with pytest.raises(RuntimeError, match="no sample was kept"):
        train(_cfg(RAFTConfig, setup, "reward=rs_rewards:nothing", "keep=threshold", "threshold=1.0", "rounds=2"))
    assert not (out / "round-1" / "summary.json").exists() and not (out / "summary.json").exists()
    assert not (out / "round-1" / "sft").exists()
    # ... or, with on_empty=skip (another folder: the settings changed), a counted skip.
    s = train(_cfg(RAFTConfig, setup, "reward=rs_rewards:nothing", "keep=threshold", "threshold=1.0", "rounds=2",
                   "on_empty=skip", "score_final=false", out=setup["tmp"] / "skip"))
    assert s["skipped_steps"] == 2 and s["kept_total"] == 0
    # Every round skipped: final/ is the starting model, unchanged.
    assert (setup["tmp"] / "skip" / "final" / "model.safetensors").read_bytes() == \
        (Path(setup["model"]) / "model.safetensors").read_bytes()


def test_shipped_tiny_configs_are_valid():
    load_config(RAFTConfig, recipe_path("raft", "tiny"))
    load_config(ReSTConfig, recipe_path("rest", "tiny"))
    assert rejection.train is train
