"""Preference labelling (rlhf/label.py) and the ``rlhf label`` tool: labels equal the
Bradley–Terry draws of the label stage, judge agreement with gold on the built-in task, file
input with configurable columns, bad input naming file:row:field, no overwrite, nothing
half-written."""

from __future__ import annotations

import json
import math
import random

import pytest

from rlhf.label import bradley_terry_labels, label_pairs, label_stage
from rlhf.tools.label import main as label_main


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def count_x(prompts, completions):
    return [float(c.count("x")) for c in completions]


def test_labels_are_the_bradley_terry_draws_of_the_judge_scores():
    """With a reward judge at τ > 0, label_pairs draws exactly bradley_terry_labels(r_a, r_b, τ,
    Random(seed)) (one draw per pair, dropped pairs included), and reports the judge's σ(Δ)."""
    rng = random.Random(1)
    a = ["x" * rng.randrange(6) + "a" for _ in range(200)]
    b = ["x" * rng.randrange(6) + "b" for _ in range(200)]
    b[3] = a[3]  # identical: dropped, but still consumes its draw
    rows, stats = label_pairs(["p"] * 200, a, b, "tests.test_label:count_x", temperature=0.7, seed=5)
    want = bradley_terry_labels(count_x(None, a), count_x(None, b), 0.7, random.Random(5))
    kept = [i for i in range(200) if i != 3]
    assert [r["chosen"] for r in rows] == [a[i] if want[i] else b[i] for i in kept]
    assert stats["dropped_identical"] == 1 and stats["pairs"] == 199
    for r in rows:
        d = r["score_chosen"] - r["score_rejected"]
        assert r["judge_probability"] == pytest.approx(1 / (1 + math.exp(-d)), abs=1e-9)


def test_judge_agreement_with_gold_on_built_in_pairs_is_well_above_chance(tmp_path):
    """Pairs of corpus reviews for the built-in task, labelled through `rlhf label` by the gold
    judge with the simulated annotators' noise (τ = 0.35): the chosen side has the higher gold on
    the fraction reviews.expected_agreement predicts (within 4 standard errors; ~73%, chance 50%)."""
    from rlhf.testbed import reviews
    rng = random.Random(0)
    prompts = reviews.make_prompts(400, seed=3)
    rows = [{"q": p, "first": reviews.sample_review(rng), "second": reviews.sample_review(rng)} for p in prompts]
    src = _write(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "prefs.jsonl"
    assert label_main(["--pairs", str(src), "--prompt-column", "q", "--a-column", "first", "--b-column",
                       "second", "--judge", "rlhf.testbed.reviews:gold_reward", "--temperature",
                       str(reviews.DEFAULT_TEMPERATURE), "--output", str(out)]) == 0
    prefs = _jsonl(out)
    g_c = reviews.gold_reward([r["prompt"] for r in prefs], [r["chosen"] for r in prefs])
    g_r = reviews.gold_reward([r["prompt"] for r in prefs], [r["rejected"] for r in prefs])
    measured = reviews.measured_agreement(g_c, g_r)
    assert len(prefs) == 400 - sum(r["first"] == r["second"] for r in rows)
    assert abs(measured - reviews.expected_agreement(g_c, g_r)) < 4 * reviews.agreement_std_error(g_c, g_r)
    assert measured > 0.65


def test_label_file_with_custom_columns_keeps_other_columns_and_drops_identical(tmp_path, capsys):
    src = _write(tmp_path / "pairs.jsonl", [
        {"question": "q1", "left": "xx", "right": "x", "id": 7},
        {"question": "q2", "left": "a", "right": "xxx", "id": 8},
        {"question": "q3", "left": "same", "right": "same", "id": 9},
    ])
    out = tmp_path / "prefs.jsonl"
    args = ["--pairs", str(src), "--prompt-column", "question", "--a-column", "left", "--b-column", "right",
            "--judge", "tests.test_label:count_x", "--output", str(out)]
    assert label_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    got = _jsonl(out)
    for r in got:
        r["judge_probability"] = round(r["judge_probability"], 12)
    assert got == [
        {"id": 7, "prompt": "q1", "chosen": "xx", "rejected": "x",
         "judge_probability": round(1 / (1 + math.exp(-1)), 12),
         "score_chosen": 2.0, "score_rejected": 1.0},
        {"id": 8, "prompt": "q2", "chosen": "xxx", "rejected": "a",
         "judge_probability": round(1 / (1 + math.exp(-3)), 12),
         "score_chosen": 3.0, "score_rejected": 0.0}]
    assert summary["dropped_identical"] == 1 and summary["output_pairs"] == 2
    # A finished output is never overwritten.
    before = out.read_text()
    assert label_main(args) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == before


def test_bad_rows_name_file_row_and_field_and_write_nothing(tmp_path, capsys):
    src = _write(tmp_path / "pairs.jsonl", [{"prompt": "q1", "response_a": "x", "response_b": "y"},
                                            {"prompt": "q2", "response_a": "x"}])
    out = tmp_path / "prefs.jsonl"
    assert label_main(["--pairs", str(src), "--judge", "tests.test_label:count_x", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{src}:2: response_b: a non-empty string or list of chat messages (the field is missing)" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [src]
    _write(src, [{"prompt": "q1", "response_a": 3, "response_b": "y"}])
    assert label_main(["--pairs", str(src), "--judge", "tests.test_label:count_x", "--output", str(out)]) == 1
    assert f"{src}:1: response_a:" in capsys.readouterr().err


def test_lm_judge_without_a_usable_answer_is_an_error_and_writes_nothing(tmp_path, tiny_llama, capsys):
    src = _write(tmp_path / "pairs.jsonl", [{"prompt": "q", "response_a": "x", "response_b": "y"}])
    out = tmp_path / "prefs.jsonl"
    assert label_main(["--pairs", str(src), "--lm-judge", str(tiny_llama), "--min-mass", "0.5",
                       "--output", str(out)]) == 1
    assert "no usable answer" in capsys.readouterr().err
    assert not out.exists()


def test_lm_judge_labels_file_pairs_with_its_both_orders_probability(tmp_path, tiny_llama):
    """Each row's judge_probability is the LM judge's P(chosen ≻ rejected) >= 0.5 at τ = 0, and
    the chosen side is the one the judge itself prefers."""
    from rlhf.judge import LMJudge
    rows = [{"prompt": f"reverse: {i}\n", "response_a": f" {i} a", "response_b": f" b {i}"} for i in range(6)]
    src = _write(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "prefs.jsonl"
    assert label_main(["--pairs", str(src), "--lm-judge", str(tiny_llama), "--min-mass", "0",
                       "--rubric", "Prefer reversed text.", "--output", str(out)]) == 0
    prefs = _jsonl(out)
    judge = LMJudge(str(tiny_llama), rubric="Prefer reversed text.", min_mass=0)
    p = judge([r["prompt"] for r in prefs], [r["chosen"] for r in prefs], [r["rejected"] for r in prefs])
    assert len(prefs) == 6
    for r, q in zip(prefs, p.tolist()):
        assert q >= 0.5 and r["judge_probability"] == pytest.approx(q, abs=1e-9)
        assert isinstance(r["position_consistent"], bool)


def test_label_stage_accepts_reward_and_lm_judges(tmp_path, tiny_llama):
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": f"reverse: {c} {c}\n"} for c in "abcdefgh"])
    common = dict(policy=str(tiny_llama), prompts=str(prompts), max_new_tokens=6, eval_fraction=0.25,
                  chat_template="none", batch_size=8)
    s1 = label_stage(tmp_path / "rm", judge="tests.test_label:count_x", **common)
    train = _jsonl(tmp_path / "rm" / "train.jsonl")
    assert s1["train_pairs"] + s1["eval_pairs"] == s1["pairs"] == 8 - s1["dropped_identical"] - s1["dropped_empty"]
    assert all(r["score_chosen"] >= r["score_rejected"] for r in train)
    assert s1["agreement_with_judge_scores"] == pytest.approx(1.0 if all(
        r["score_chosen"] > r["score_rejected"] for r in train + _jsonl(tmp_path / "rm" / "eval.jsonl")) else
        s1["agreement_with_judge_scores"])
    s2 = label_stage(tmp_path / "lm", judge={"type": "lm", "model": str(tiny_llama), "min_mass": 0,
                                             "template": "{prompt}{a} or{b}?"}, **common)
    rows = _jsonl(tmp_path / "lm" / "train.jsonl") + _jsonl(tmp_path / "lm" / "eval.jsonl")
    assert len(rows) == s2["pairs"] > 0 and all(r["judge_probability"] >= 0.5 for r in rows)
    assert 0.0 <= s2["position_consistency"] <= 1.0
