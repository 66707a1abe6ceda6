"""The best-of-n stage: outputs recomputed from the pool, the reward curve, tie-breaking, no
overwrite of a finished run, config errors."""

from __future__ import annotations

import json
import math
import random

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.eval.metrics import best_of_n_curve, best_of_n_kl_estimate
from rlhf.recipes.best_of_n import BestOfNConfig, select_best, train
from rlhf.rewards import RewardError
from rlhf.train.run import RunDirError

REWARDS = '''
def count_a(prompts, completions):
    return [float(c.count("a")) for c in completions]

def boom(prompts, completions):
    raise RuntimeError("reward failed")
'''

PROMPTS = ["reverse: a b c\n", "count: d e\n", "sort: 3 1 2\n", "first: q w e\n", "double: x y\n"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models are ~100x faster on one thread than on two contended ones (shared 2 cores)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def setup(tmp_path, monkeypatch, tiny_llama):
    (tmp_path / "bon_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"model": tiny_llama, "prompts": prompts, "out": tmp_path / "bon"}


def _cfg(s, *extra):
    return load_config(BestOfNConfig, None, [
        f"output_dir={s['out']}", f"model.name_or_path={s['model']}", f"data.train={s['prompts']}",
        "data.chat_template=none", "reward=bon_rewards:count_a", "sampling.max_new_tokens=12",
        "sampling.batch_size=2", "progress=false", *extra])


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_best_of_n_end_to_end_from_config(setup):
    cfg = _cfg(setup, "n=4", "pool_size=8", "save_pool=true")
    summary = train(cfg)
    out = setup["out"]
    best, pool = _jsonl(out / "best.jsonl"), _jsonl(out / "pool.jsonl")
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "config.yaml").is_file()
    assert [b["prompt"] for b in best] == PROMPTS == [p["prompt"] for p in pool]

    # Every reward in the files is the reward function recomputed on the saved text.
    for b, p in zip(best, pool):
        assert len(p["completions"]) == len(p["rewards"]) == 8
        assert p["rewards"] == [float(c.count("a")) for c in p["completions"]]
        # the best is the highest of the FIRST n = 4 candidates, and is that candidate
        assert b["rewards"] == p["rewards"][:4]
        assert b["reward"] == max(b["rewards"]) == b["rewards"][b["index"]]
        assert b["completion"] == p["completions"][b["index"]]
        assert b["reward"] == float(b["completion"].count("a"))

    pools = [p["rewards"] for p in pool]
    assert summary["n"] == 4 and summary["pool_size"] == 8 and summary["num_prompts"] == 5
    assert summary["mean_reward_best"] == pytest.approx(sum(b["reward"] for b in best) / 5)
    assert summary["mean_reward_single"] == pytest.approx(sum(map(sum, pools)) / 40)
    assert summary["mean_reward_best"] >= summary["mean_reward_single"]
    # The curve: unbiased expected best-of-k from the pool, k = 1..8, never decreasing; k = 1 is
    # the single-sample mean and k = 8 the mean of the pool maxima.
    curve = [c["mean_reward"] for c in summary["curve"]]
    assert [c["n"] for c in summary["curve"]] == list(range(1, 9))
    assert curve == pytest.approx(best_of_n_curve(pools, range(1, 9)))
    assert curve[0] == pytest.approx(summary["mean_reward_single"])
    assert curve[-1] == pytest.approx(sum(map(max, pools)) / 5)
    assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:]))
    assert curve[-1] > curve[0]  # the random tiny model varies: selection must help
    assert summary["kl_bound"] == pytest.approx(math.log(4) - 3 / 4)
    assert summary["kl_estimate"] == pytest.approx(best_of_n_kl_estimate(pools, 4))
    assert 0 <= summary["kl_estimate"] <= summary["kl_bound"]

    # A finished run is never overwritten: a second run stops before touching anything.
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunDirError, match="finished run"):
        train(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_same_seed_same_outputs_and_pool_defaults_to_n(setup, tmp_path):
    a = train(_cfg(setup, "n=3"))
    setup2 = dict(setup, out=tmp_path / "again")
    b = train(_cfg(setup2, "n=3"))
    assert (setup["out"] / "best.jsonl").read_text() == (setup2["out"] / "best.jsonl").read_text()
    assert a["pool_size"] == 3 and len(a["curve"]) == 3
    assert not (setup["out"] / "pool.jsonl").exists()
    # pool == n: the best of each pool is its max, so the curve's last point is the best mean
    assert a["expected_reward_best_of_n"] == pytest.approx(a["mean_reward_best"])
    assert a["mean_reward_best"] == b["mean_reward_best"]


def test_ties_are_broken_uniformly_among_the_tied_samples():
    """Three samples tie at the top: each must be chosen about 1/3 of the time (6000 draws:
    standard deviation of a count sqrt(6000·2/9) = 36.5, so ±150 is over 4 standard deviations)."""
    rng = random.Random(0)
    counts = [0] * 5
    for _ in range(6000):
        counts[select_best([2.0, 5.0, 1.0, 5.0, 5.0], rng)] += 1
    assert counts[0] == counts[2] == 0
    assert all(abs(c - 2000) < 150 for c in (counts[1], counts[3], counts[4])), counts
    assert select_best([0.0, 3.0, 1.0], rng) == 1


@pytest.mark.parametrize("override, key, message", [
    ("n=0", "n", "must be >= 1"),
    ("pool_size=2", "pool_size", "must be >= n=4"),
    ("sampling.temperature=0", "sampling.temperature", "greedy"),
    ("sampling.top_p=0", "sampling.top_p", "must be > 0"),
    ("reward=", "reward", "is required"),
    ("data.train=", "data.train", "is required"),
])
def test_bad_configs_are_rejected_before_any_work(setup, override, key, message):
    with pytest.raises(ConfigError) as e:
        _cfg(setup, "n=4", override)
    assert e.value.key == key and message in e.value.message
    assert not setup["out"].exists()


def test_bad_reward_spec_and_failing_reward_leave_no_finished_run(setup):
    with pytest.raises(ConfigError, match="reward: .*cannot import module 'nope'"):
        train(_cfg(setup, "reward=nope:f"))
    # A raising reward function is one line naming it and where it raised (rlhf.rewards.RewardError).
    with pytest.raises(RewardError, match=r"reward function bon_rewards:boom raised RuntimeError: reward failed"):
        train(_cfg(setup, "reward=bon_rewards:boom"))
    assert not (setup["out"] / "summary.json").exists()
    assert not (setup["out"] / "best.jsonl").exists()
    # ... so the same folder can be used again once the input is fixed.
    assert train(_cfg(setup, "n=2"))["num_prompts"] == 5
