"""Pairwise judges (rlhf/judge.py): the LM judge's letter log-probs against a naive per-example
forward, its both-orders average and mirror symmetry, position consistency and unusable
answers; the reward judge's Bradley–Terry probability; specs and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.judge import DEFAULT_TEMPLATE, JudgeError, Judgement, LMJudge, RewardJudge, format_prompt, load_judge

PROMPTS = ["reverse: a b c\n", "count: d e\n", "sort: 3 1 2\n", "first: q w e\n", "double: x y\n"]
A = [" c b a", " 2", " 1 2 3", " q", " x x y y"]
B = [" a b c", " 3", " 3 2 1", " w", " x y"]
RUBRIC = "Prefer the correct answer."


@pytest.fixture(scope="module")
def judge_parts(tiny_llama):
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    cfg = ModelConfig(name_or_path=str(tiny_llama))
    return load_causal_lm(cfg, for_training=False), load_tokenizer(cfg)


def _judge(parts, **kw):
    model, tok = parts
    kw.setdefault("min_mass", 0.0)
    return LMJudge(model, tok, rubric=RUBRIC, batch_size=2, **kw)


def _naive_letter_logp(model, tok, text: str, letter: str) -> float:
    """log P(letter | text): one unpadded forward per example, log_softmax, summed over the
    letter's tokens (teacher forcing), in float64."""
    ctx = tok(text, add_special_tokens=False)["input_ids"]
    lid = tok(letter, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + lid])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)  # (T, V)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(lid))


@pytest.mark.parametrize("letters", [("A", "B"), (" A", " B"), (" first", " second")])
def test_letter_logps_equal_a_naive_per_example_forward(judge_parts, letters):
    """Batched, right-padded scoring (one token per letter, or teacher-forced several) gives the
    log-probs of an unpadded forward of each example alone."""
    model, tok = judge_parts
    j = _judge(judge_parts, letters=letters)
    texts = [format_prompt(DEFAULT_TEMPLATE, RUBRIC, p, a, b) for p, a, b in zip(PROMPTS, A, B)]
    got = j.letter_logps([j.encode(t) for t in texts])  # (N, 2)
    want = torch.tensor([[_naive_letter_logp(model, tok, t, L) for L in letters] for t in texts],
                        dtype=torch.float64)
    assert got.shape == (5, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("letters", [("A", "B"), (" A", " B")])
def test_probability_is_the_both_orders_average_and_mirror_symmetric(judge_parts, letters):
    """P(a ≻ b) = (σ(lA − lB | a first) + σ(lB − lA | b first)) / 2 from naive forwards of the two
    filled templates; swapping a and b gives exactly 1 − P (up to float rounding)."""
    model, tok = judge_parts
    j = _judge(judge_parts, letters=letters)
    res = j.judge_pairs(PROMPTS, A, B)
    for i in range(5):
        t_ab = format_prompt(DEFAULT_TEMPLATE, RUBRIC, PROMPTS[i], A[i], B[i])
        t_ba = format_prompt(DEFAULT_TEMPLATE, RUBRIC, PROMPTS[i], B[i], A[i])
        l_ab = [_naive_letter_logp(model, tok, t_ab, L) for L in letters]
        l_ba = [_naive_letter_logp(model, tok, t_ba, L) for L in letters]
        p1 = 1 / (1 + math.exp(-(l_ab[0] - l_ab[1])))
        p2 = 1 / (1 + math.exp(-(l_ba[1] - l_ba[0])))
        assert float(res.prob[i]) == pytest.approx((p1 + p2) / 2, abs=1e-5)
        assert bool(res.consistent[i]) == ((p1 > 0.5) == (p2 > 0.5))
    swapped = j(PROMPTS, B, A)
    torch.testing.assert_close(swapped, 1 - res.prob, rtol=0, atol=1e-12)
    assert res.summary()["position_consistency"] == pytest.approx(float(res.consistent.double().mean()))


class ScriptedJudge(LMJudge):
    """An LM judge whose letter log-probs are given per context (keyed by the pair's text)."""

    def __init__(self, parts, table):
        super().__init__(parts[0], parts[1], rubric="r", template="{a}|{b}", letters=("A", "B"), min_mass=0.1)
        self.table = table  # "a|b" -> (log P(A), log P(B))

    def letter_logps(self, contexts):
        texts = [self.tokenizer.decode(c) for c in contexts]
        return torch.tensor([self.table[t] for t in texts], dtype=torch.float64)


def test_unusable_answers_are_counted_skipped_and_all_unusable_is_an_error(judge_parts):
    """Letter mass below min_mass (0.1) in either order makes a pair unusable (NaN, counted);
    consistency: pair x prefers x in both orders, pair y flips with the position."""
    ln = math.log
    table = {"x|o": (ln(0.6), ln(0.2)), "o|x": (ln(0.1), ln(0.7)),      # x preferred both ways
             "y|o": (ln(0.6), ln(0.2)), "o|y": (ln(0.6), ln(0.2)),      # always "A": position bias
             "z|o": (ln(0.01), ln(0.02)), "o|z": (ln(0.6), ln(0.3))}    # no answer in one order
    j = ScriptedJudge(judge_parts, table)
    res = j.judge_pairs(["p"] * 3, ["x", "y", "z"], ["o", "o", "o"])
    p_x = (0.6 / 0.8 + 0.7 / 0.8) / 2
    assert float(res.prob[0]) == pytest.approx(p_x, abs=1e-12)
    assert float(res.prob[1]) == pytest.approx((0.75 + 0.25) / 2, abs=1e-12)
    assert math.isnan(float(res.prob[2]))
    assert res.usable.tolist() == [True, True, False]
    assert res.reasons == [None, None, "no usable answer"]
    assert res.consistent.tolist() == [True, False, False]
    assert res.summary() == {"pairs": 3, "usable": 2, "unusable": {"no usable answer": 1},
                             "position_consistency": 0.5}
    with pytest.raises(JudgeError, match="no usable answer on any of the 1 pairs"):
        j.judge_pairs(["p"], ["z"], ["o"])


def test_random_model_with_default_min_mass_has_no_usable_answer(judge_parts):
    """A random 300-token model spreads its mass (~1/300 per token): below the default 0.01."""
    model, tok = judge_parts
    with pytest.raises(JudgeError, match="no usable answer"):
        LMJudge(model, tok, letters=("A", "B"))(PROMPTS, A, B)


def test_too_long_pairs_are_skipped(judge_parts):
    probe = _judge(judge_parts)
    n = max(len(probe.encode(format_prompt(DEFAULT_TEMPLATE, RUBRIC, "p", x, y)))
            for x, y in (("short", "b"), ("b", "short")))
    j = _judge(judge_parts, max_length=n + 2)  # + the two tokens of " A"
    res = j.judge_pairs(["p", "p"], ["short", "a much longer answer " * 10], ["b", "c"])
    assert res.reasons == [None, "too long"]


def test_bad_judge_specs(judge_parts, tiny_llama):
    model, tok = judge_parts
    with pytest.raises(JudgeError, match="tokenise identically"):
        LMJudge(model, tok, letters=("A", "A"))
    with pytest.raises(JudgeError, match=r"must contain \{b\}"):
        LMJudge(model, tok, template="{rubric} {prompt} {a}")
    with pytest.raises(JudgeError, match=r"unknown field\(s\) \{c\}"):
        LMJudge(model, tok, template="{a} {b} {c}")
    with pytest.raises(JudgeError, match="unknown key"):
        load_judge({"type": "lm", "model": str(tiny_llama), "rubrik": "x"})
    with pytest.raises(JudgeError, match="'model' is required"):
        load_judge({"type": "lm"})
    with pytest.raises(JudgeError, match="no such folder or file"):
        load_judge("no/such/rm")
    j = load_judge({"type": "lm", "model": str(tiny_llama), "letters": "A,B", "min_mass": 0})
    assert isinstance(j, LMJudge) and j.letters == ("A", "B") and j.min_mass == 0


def _length(prompts, completions):
    return [float(len(c)) for c in completions]


def test_reward_judge_is_bradley_terry_and_mirror_symmetric():
    """P = σ((r_a − r_b)/τ) with r = length; τ = 0: hard labels, ½ for ties."""
    j = RewardJudge(_length, temperature=2.0)
    a, b = ["xxx", "x", "xx"], ["x", "xxxx", "xx"]
    res = j.judge_pairs(["p"] * 3, a, b)
    want = [1 / (1 + math.exp(-(len(x) - len(y)) / 2.0)) for x, y in zip(a, b)]
    assert res.prob.tolist() == pytest.approx(want, abs=1e-15)
    torch.testing.assert_close(j(["p"] * 3, b, a), 1 - res.prob, rtol=0, atol=1e-15)
    assert RewardJudge(_length, temperature=0)(["p"] * 3, a, b).tolist() == [1.0, 0.0, 0.5]
    assert res.details["score_a"].tolist() == [3.0, 1.0, 2.0]
    assert isinstance(res, Judgement) and res.num_unusable == 0


def test_load_judge_reads_reward_and_lm_specs_from_files(tmp_path, tiny_llama):
    import yaml
    f = tmp_path / "judge.yaml"
    f.write_text(yaml.safe_dump({"type": "lm", "model": str(tiny_llama), "rubric": "Be brief.", "min_mass": 0}))
    j = load_judge(str(f))
    assert isinstance(j, LMJudge) and j.rubric == "Be brief."
    g = load_judge({"type": "reward", "source": "rlhf.testbed.reviews:gold_reward", "temperature": 0})
    assert isinstance(g, RewardJudge) and g.temperature == 0
    assert isinstance(load_judge("rlhf.testbed.reviews:gold_reward"), RewardJudge)
