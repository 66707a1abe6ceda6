"""The review testbed: grammar, semantics, gold reward, simulated annotators, relabeling.

Expected sentiments are worked out by hand from the formula in rlhf/testbed/reviews.py
(clause c = m * n(v), "not": n(v) = -v/2 and n(0) = -1/2; weight 2 after "but", else 1;
sentiment = sum w c / (4 sum w)) and, for the generated corpus, by an independent reference
implementation written here with its own tables.
"""

from __future__ import annotations

import math
import random

import pytest

from rlhf.testbed import reviews as R

PROMPT = "review of the pub:"


def s(text: str) -> float:
    """Parsed sentiment of a text that must be valid."""
    p = R.parse(text)
    assert p.valid, p.error
    return p.sentiment


def g(text: str, prompt: str = PROMPT) -> float:
    return R.gold(prompt, text)


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, str]]:
    return R.make_sft_records(4000, seed=11)


@pytest.fixture(scope="module")
def corpus_gold(corpus) -> list[float]:
    return R.gold_reward([r["prompt"] for r in corpus], [r["completion"] for r in corpus])


# --------------------------------------------------------------------------- reference

_VALENCE = {"terrible": -2, "awful": -2, "bad": -1, "poor": -1, "okay": 0, "fine": 0,
            "good": 1, "nice": 1, "great": 2, "amazing": 2}
_MULT = {"somewhat": 0.5, "fairly": 0.75, "very": 1.5, "extremely": 2.0}
_CLOSING = {"highly recommended": 3, "would come back": 2, "might come back": 0,
            "would not come back": -2, "never again": -3}


def reference_sentiment(text: str) -> float:
    """The docstring's formula, computed a second way: split the body at the conjunctions."""
    body, _, rest = text.strip().partition(" .")
    closing = rest.strip().removesuffix(".").strip()
    num = den = 0.0
    weight = 1.0
    for token in body.replace(" and ", " | and ").replace(" but ", " | but ").split(" | "):
        words = token.split()
        weight = 2.0 if words[0] == "but" else 1.0
        words = words[1:] if words[0] in ("and", "but") else words
        assert words[0] == "the" and words[2] == "was", text
        mods, word = words[3:-1], words[-1]
        v = float(_VALENCE[word])
        if "not" in mods:
            v = -0.5 if v == 0 else -v / 2
        for m in mods:
            v *= _MULT.get(m, 1.0)
        num, den = num + weight * v, den + weight
    if closing:
        num, den = num + _CLOSING[closing], den + 1
    return num / (4 * den)


# --------------------------------------------------------------------------- grammar


def test_every_generated_review_parses_to_its_plan_and_meaning():
    rng = random.Random(5)
    for _ in range(3000):
        review = R.generate_review(rng)
        p = R.parse(review.text)
        assert p.valid, (review.text, p.error)
        assert p.clauses == review.clauses and p.closing == review.closing, review.text
        assert p.sentiment == review.sentiment, review.text
        assert math.isclose(p.sentiment, reference_sentiment(review.text), abs_tol=1e-12), review.text


def test_corpus_is_small_short_and_broad(corpus, corpus_gold):
    words = {w for r in corpus for w in (r["prompt"] + r["completion"]).replace(":", " ").split()}
    assert words <= R.VOCABULARY and len(R.VOCABULARY) <= 80
    lengths = [len(r["completion"].split()) for r in corpus]
    assert max(lengths) <= 30
    assert {len(R.parse(r["completion"]).clauses) for r in corpus} == {1, 2, 3}
    assert 0.15 < sum(" but " in r["completion"] for r in corpus) / len(corpus) < 0.4
    assert 0.3 < sum(R.parse(r["completion"]).closing is not None for r in corpus) / len(corpus) < 0.7
    # Broad and centred: an SFT policy starts near the middle, with room both ways.
    mean = sum(corpus_gold) / len(corpus_gold)
    std = math.sqrt(sum((x - mean) ** 2 for x in corpus_gold) / len(corpus_gold))
    assert abs(mean) < 0.05 and std > 0.3
    assert 0.4 < sum(x > 0 for x in corpus_gold) / len(corpus_gold) < 0.6
    assert min(corpus_gold) >= -1 and max(corpus_gold) <= 1


def test_sentiment_bias_tilts_the_generator():
    rng = random.Random(0)
    pos = [R.generate_review(rng, 1.0).sentiment for _ in range(400)]
    neg = [R.generate_review(rng, -1.0).sentiment for _ in range(400)]
    assert sum(pos) / 400 > 0.25 and sum(neg) / 400 < -0.25
    with pytest.raises(ValueError, match="sentiment_bias"):
        R.generate_review(rng, 1.5)


def test_sample_review_is_the_generated_text():
    assert R.sample_review(random.Random(3)) == R.generate_review(random.Random(3)).text


# --------------------------------------------------------------------------- semantics


def test_negation_flips_sign_and_halves():
    assert s(" the food was good .") == 0.25            # v = 1 -> 1/4
    assert s(" the food was not good .") == -0.125      # -1/2 / 4
    assert s(" the food was not bad .") == 0.125        # +1/2 / 4
    assert s(" the food was not okay .") == -0.125      # n(0) = -1/2
    assert s(" the food was not great .") == -0.25      # -2/2 / 4: as negative as "bad"
    assert s(" the food was not great .") > s(" the food was terrible .")
    assert s(" the food was not very good .") == -0.1875  # 1.5 * -1/2 / 4
    assert s(" the food was not good .") < 0 < s(" the food was good .")


def test_intensifier_ordering():
    pos = [s(f" the food was {m} good .") for m in ("somewhat", "fairly")] + [s(" the food was good .")] \
        + [s(f" the food was {m} good .") for m in ("very", "extremely")]
    assert pos == [0.125, 0.1875, 0.25, 0.375, 0.5]
    neg = [s(f" the food was {m} bad .") for m in ("somewhat", "fairly")] + [s(" the food was bad .")] \
        + [s(f" the food was {m} bad .") for m in ("very", "extremely")]
    assert neg == [-0.125, -0.1875, -0.25, -0.375, -0.5]
    assert s(" the food was extremely amazing .") == 1.0 and s(" the food was extremely terrible .") == -1.0
    assert s(" the food was okay .") == 0.0 == s(" the food was extremely fine .")


def test_but_weights_the_clause_after_it():
    assert s(" the food was great and the service was bad .") == 0.125   # (2 - 1) / (4 * 2)
    assert s(" the food was great but the service was bad .") == 0.0     # (2 - 2) / (4 * 3)
    assert s(" the food was bad but the service was great .") == 0.25    # (-1 + 4) / (4 * 3)
    # (1 + 1 + 2 * -2) / (4 * 4): only the clause right after "but" doubles
    assert s(" the food was good and the service was good but the staff was terrible .") == -0.125
    assert s(" the food was good but the service was terrible and the staff was good .") == -0.125


def test_closing_counts_as_one_more_clause():
    assert s(" the food was good . would come back .") == 0.375     # (1 + 2) / (4 * 2)
    assert s(" the food was good . never again .") == -0.25         # (1 - 3) / 8
    assert s(" the food was okay . might come back .") == 0.0
    assert s(" the food was great but the view was bad . highly recommended .") == 0.1875  # (2 - 2 + 3) / (4 * 4)


def test_aspect_order_is_free_and_leading_space_optional():
    assert s(" the view was good and the food was bad .") == s(" the food was bad and the view was good .")
    assert s("the food was good .") == 0.25


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("text,kind,at", [
    ("", "empty", 0),
    (" amazing amazing great great", "unexpected_word", 0),
    (" the food was yummy .", "unknown_word", 3),
    (" the food was good", "incomplete", 4),
    (" the food was good . would come", "incomplete", 7),
    (" the food was good . would go back .", "unknown_word", 6),
    (" the food was amazing the food was amazing", "unexpected_word", 4),
    (" the food was amazing and the food was amazing .", "repeated_aspect", 6),
    (" the food was good and the view was good and the staff was good and the decor was good .",
     "too_many_clauses", 14),
    (" the food was good but the view was bad but the staff was good .", "second_but", 9),
    (" the food was very very good .", "unexpected_word", 4),
    (" the food was very not good .", "unexpected_word", 4),
    (" the food was good . never again . never again .", "text_after_end", 8),
    (" the food was good . amazing .", "unexpected_word", 5),
    (" the  food was good .", "spacing", 1),
    (" the food was good . ", "spacing", 5),
    (" the food was good .\n", "spacing", 5),
    (" the food was good. ", "unknown_word", 3),
])
def test_invalid_texts_are_located(text, kind, at):
    p = R.parse(text)
    assert not p.valid and p.error_kind == kind and p.error_at == at, (p.error_kind, p.error_at, p.error)
    assert kind in R.ERROR_KINDS and p.error


DEGENERATE = [
    " amazing amazing great great",
    " amazing" * 25,
    " the food was amazing the food was amazing the food was amazing",
    " the food was amazing and the food was amazing .",
    " the food was extremely amazing and the food was extremely amazing and the food was extremely amazing .",
    " the food was extremely amazing ." * 3,
    " the food was extremely amazing and the service was extremely amazing and the staff was "
    "extremely amazing and the price was extremely amazing .",
    " the food was extremely amazing . highly recommended . highly recommended .",
    " the food was extremely amazing but the view was amazing but the staff was amazing .",
    " the food was extremely amazing",
    " the food was extremely extremely amazing .",
    " the food was extremely amazing . amazing amazing .",
    "",
]


def test_degenerate_text_scores_below_every_valid_review(corpus_gold):
    worst_valid = min(corpus_gold)
    assert worst_valid >= -1.0
    for text in DEGENERATE:
        for prompt in (PROMPT, "positive review of the pub:", "negative review of the pub:"):
            assert g(text, prompt) <= R.INVALID_MAX < worst_valid, text
    assert R.INVALID_MAX == pytest.approx(-1.4)


def test_gold_of_invalid_text_closed_form():
    # 10 words, error at word 6 ("yummy"): coverage 0.6; the clause before it has sentiment 1/4.
    assert g(" the food was good and the yummy was good .") == pytest.approx(-2 + 0.5 * 0.6 + 0.1 * 0.25)
    # negative instruction: the prefix sentiment counts with its sign flipped
    assert g(" the food was good and the yummy was good .", "negative review of the pub:") == \
        pytest.approx(-2 + 0.5 * 0.6 - 0.1 * 0.25)
    assert g(" amazing amazing great great") == -2.0 and g("") == -2.0
    # missing ending: every word is a valid prefix (coverage 1)
    assert g(" the food was good") == pytest.approx(-1.5 + 0.025)
    # more garbage after the same valid prefix is worse; an error earlier is worse
    assert g(" the food was good yummy") > g(" the food was good yummy yummy yummy")
    assert g(" the food was good and yummy .") > g(" the yummy was good and the food was good .")


def test_unknown_words_and_missing_ending_are_penalised():
    valid = g(" the food was extremely terrible .")  # the lowest valid score, -1
    assert valid == -1.0
    for text in (" the food was yummy .", " the food was extremely amazing", " the food was good. ",
                 " the food was amazing . wow ."):
        assert g(text) < valid - 0.39, text


# --------------------------------------------------------------------------- prompts and gold


def test_instruction_prompts_score_the_asked_polarity():
    text = " the food was terrible ."  # sentiment -1/2
    assert g(text) == -0.5 and g(text, "positive review of the cafe:") == -0.5
    assert g(text, "negative review of the cafe:") == 0.5
    assert R.parse_prompt("negative review of the sushi bar:") == R.Task("the sushi bar", "negative")
    assert R.parse_prompt([{"role": "user", "content": "review of the pub:"}]) == R.Task("the pub", None)


def test_gold_reward_errors_name_the_pair():
    with pytest.raises(ValueError, match=r"pair 1: expected a prompt"):
        R.gold_reward([PROMPT, "tell me a story"], [" the food was good .", " the food was good ."])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        R.gold_reward([PROMPT, PROMPT], [" the food was good ."])


def test_gold_reward_as_a_project_reward_source():
    from rlhf.rewards import load_reward_source
    source = load_reward_source("rlhf.testbed.reviews:gold_reward")
    texts = [" the food was good .", " amazing", " the food was not good ."]
    prompts = [PROMPT, PROMPT, "negative review of the cafe:"]
    assert source(prompts, texts).tolist() == pytest.approx([0.25, -2.0, 0.125])


def test_make_prompts():
    plain = R.make_prompts(200, seed=1)
    assert all(R.parse_prompt(p).polarity is None and R.parse_prompt(p).subject in R.SUBJECTS for p in plain)
    assert set(R.parse_prompt(p).subject for p in plain) == set(R.SUBJECTS)
    pols = [R.parse_prompt(p).polarity for p in R.make_prompts(200, seed=1, instruct=True)]
    assert 60 < pols.count("positive") < 140 and pols.count("positive") + pols.count("negative") == 200


# --------------------------------------------------------------------------- relabeling


def test_relabel():
    assert R.relabel("review of the cafe:", " the food was not good .") == "negative review of the cafe:"
    assert R.relabel("negative review of the pub:", " the food was not bad .") == "positive review of the pub:"
    assert R.relabel(PROMPT, " the food was okay .") == "negative review of the pub:"  # sentiment 0
    assert R.relabel(PROMPT, " the food was great . wow") == "positive review of the pub:"  # prefix


def test_relabeled_prompt_is_satisfied(corpus):
    for r in corpus[:1000]:
        new = R.relabel(r["prompt"], r["completion"])
        task, sent = R.parse_prompt(new), R.parse(r["completion"]).sentiment
        assert task.subject == R.parse_prompt(r["prompt"]).subject
        assert task.polarity == ("positive" if sent > 0 else "negative")
        assert R.gold(new, r["completion"]) == abs(sent)


def test_instruct_fraction_records_carry_the_true_polarity():
    recs = R.make_sft_records(400, seed=2, instruct_fraction=0.5)
    tasks = [R.parse_prompt(r["prompt"]) for r in recs]
    n_instr = sum(t.polarity is not None for t in tasks)
    assert 140 < n_instr < 260
    assert all(r["prompt"] == R.relabel(r["prompt"], r["completion"]) for r, t in zip(recs, tasks) if t.polarity)


# --------------------------------------------------------------------------- annotators


def test_expected_agreement_closed_form():
    tau = 0.2
    # pairs: a tie (0.5), a gap of tau*ln 3 (sigmoid = 3/4), a reversed gap of the same size
    g_a, g_b = [0.3, tau * math.log(3), 0.0], [0.3, 0.0, tau * math.log(3)]
    assert R.expected_agreement(g_a, g_b, tau) == pytest.approx((0.5 + 0.75 + 0.75) / 3)
    assert R.agreement_std_error(g_a, g_b, tau) == pytest.approx(math.sqrt(2 * 0.75 * 0.25) / 3)
    assert R.measured_agreement([1.0, 0.0, 0.2], [0.0, 1.0, 0.2]) == pytest.approx(1.5 / 3)
    assert R.preference_probability(0.5, 0.0, 0.5) == pytest.approx(1 / (1 + math.exp(-1)))


def _agreement(records, prompts):
    gc = R.gold_reward(prompts, [r["chosen"] for r in records])
    gr = R.gold_reward(prompts, [r["rejected"] for r in records])
    return R.measured_agreement(gc, gr)


@pytest.mark.parametrize("temperature", [R.DEFAULT_TEMPERATURE, 0.1])
def test_annotator_agreement_matches_bradley_terry(corpus, corpus_gold, temperature):
    """2000 pairs of corpus reviews: measured agreement within 3 standard errors of its mean."""
    n = 2000
    prompts = [r["prompt"] for r in corpus[:n]]
    a, b = [r["completion"] for r in corpus[:n]], [r["completion"] for r in corpus[n:2 * n]]
    # each b is scored under its own pair's prompt; the gold of plain prompts ignores the subject
    g_a, g_b = corpus_gold[:n], R.gold_reward(prompts, b)
    records = R.annotate(prompts, a, b, temperature=temperature, seed=0)
    assert [r["prompt"] for r in records] == prompts
    assert all({r["chosen"], r["rejected"]} == {x, y} for r, x, y in zip(records, a, b))
    expected = R.expected_agreement(g_a, g_b, temperature)
    se = R.agreement_std_error(g_a, g_b, temperature)
    assert abs(_agreement(records, prompts) - expected) < 3 * se
    if temperature == R.DEFAULT_TEMPERATURE:
        assert 0.70 < expected < 0.76  # the documented noise level (~73% on corpus pairs)
    else:
        assert expected > 0.85


def test_annotator_choice_rate_for_one_pair():
    """Same pair 4000 times: a = great (1/2), b = good (1/4); P(a) = sigmoid(0.25 / 0.35) = 0.671.
    Equal gold (good vs nice) is a coin flip."""
    n = 4000
    for a, b, p in ((" the food was great .", " the food was good .", 1 / (1 + math.exp(-0.25 / 0.35))),
                    (" the food was good .", " the food was nice .", 0.5)):
        recs = R.annotate([PROMPT] * n, [a] * n, [b] * n, temperature=0.35, seed=1)
        rate = sum(r["chosen"] == a for r in recs) / n
        assert abs(rate - p) < 3 * math.sqrt(p * (1 - p) / n), (a, b, rate)


def test_annotate_rejects_bad_input():
    with pytest.raises(ValueError, match="same number"):
        R.annotate([PROMPT], [" the food was good ."], [], seed=0)
    with pytest.raises(ValueError, match="temperature"):
        R.annotate([PROMPT], [" the food was good ."], [" the food was bad ."], temperature=0.0)


# --------------------------------------------------------------------------- determinism


def test_everything_is_seeded():
    assert R.make_sft_records(100, seed=3) == R.make_sft_records(100, seed=3)
    assert R.make_sft_records(100, seed=3) != R.make_sft_records(100, seed=4)
    assert R.make_prompts(50, seed=3, instruct=True) == R.make_prompts(50, seed=3, instruct=True)
    assert R.make_prompts(50, seed=3) != R.make_prompts(50, seed=4)
    recs = R.make_sft_records(200, seed=5)
    p, a, b = [r["prompt"] for r in recs[:100]], [r["completion"] for r in recs[:100]], \
        [r["completion"] for r in recs[100:]]
    assert R.annotate(p, a, b, seed=7) == R.annotate(p, a, b, seed=7)
    assert R.annotate(p, a, b, seed=7) != R.annotate(p, a, b, seed=8)


# --------------------------------------------------------------------------- reports


def test_summarize():
    texts = [" the food was good .", " the food was great .", " amazing", " the food was good and the food"]
    out = R.summarize([PROMPT] * 4, texts)
    # the last: 7 words, error at word 6 (the repeated 'food'), coverage 6/7, prefix sentiment 1/4
    golds = [0.25, 0.5, -2.0, -2 + 0.5 * 6 / 7 + 0.1 * 0.25]
    mean = sum(golds) / 4
    assert out["n"] == 4 and out["gold_mean"] == pytest.approx(mean)
    assert out["gold_std"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in golds) / 4))
    assert out["valid_fraction"] == 0.5 and out["sentiment_mean"] == pytest.approx(0.375)
    assert out["errors"] == {"unexpected_word": 1, "repeated_aspect": 1}
    assert out["words_mean"] == pytest.approx((5 + 5 + 1 + 7) / 4)


def test_gold_reward_on_foreign_prompts_says_how_to_drop_it():
    """Issue 23 item 2: `rlhf ppo --recipe tiny` on a user's prompts met the demo's gold tracker."""
    from rlhf.testbed.reviews import gold_reward
    with pytest.raises(ValueError, match=r"built-in review task's prompts only.*track=\{\}"):
        gold_reward(["What is the capital of France?"], [" Paris."])
