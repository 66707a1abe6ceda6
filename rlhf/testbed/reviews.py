"""The built-in RLHF task: short reviews in a small generated language, a hidden gold reward
that plays the human, and simulated annotators that label preference pairs with it.

A tiny model learns the language in about a minute of SFT; the gold reward then measures what
RLHF is meant to improve (how positive the review is, or how well it matches an asked
polarity), and what reward over-optimisation destroys (well-formed text).

The language
============

A prompt names a subject; the completion is one review, words separated by single spaces::

    review of the pizza place:  the food was very good but the price was not great . never again .
    positive review of the pub: the staff was extremely amazing .
    negative review of the cafe: the view was terrible and the music was somewhat bad .

Grammar (over words)::

    review  := clause (conj clause){0,2} "." [closing "."]
    clause  := "the" ASPECT "was" ["not"] [INTENSIFIER] SENTIMENT
    conj    := "and" | "but"                     at most one "but" per review
    closing := one of the phrases in CLOSINGS    e.g. "would come back", "never again"

plus: at most 3 clauses, no aspect twice, nothing after the end, single spaces (an optional
single leading space; no trailing whitespace). Every text the generator writes obeys it, and
:func:`parse` accepts exactly these texts (``Parse.valid``).

Semantics
=========

Sentiment words have a valence v in {-2, -1, 0, +1, +2} (:data:`SENTIMENT_WORDS`);
intensifiers a multiplier m (:data:`INTENSIFIERS`; none = 1). A clause's value is::

    c = m * n(v),     n(v) = v         without "not"
                      n(v) = -v / 2    with "not" and v != 0   ("not great" = -1, "not bad" = +0.5)
                      n(0) = -1 / 2    with "not"              ("not okay" is mildly negative)

so negation flips the sign and halves the strength ("not great" is weaker than "bad"), and
"not very good" = 1.5 * (-0.5) = -0.75. |c| <= 4 ("extremely amazing").

A closing phrase has its own value on the same scale (:data:`CLOSINGS`, -3..+3).

Contrast: the clause right after "but" has weight 2, every other clause and the closing
weight 1 ("the food was great but the service was bad" leans negative). The review's
sentiment is the weighted mean, normalised by the largest clause value::

    sentiment = sum_i w_i c_i / (4 * sum_i w_i)        in [-1, 1]

Gold reward
===========

``gold_reward(prompts, completions)`` is the hidden human. With t the task score of the
completion's sentiment s (t = s for ``review of ...:`` and ``positive review of ...:``
prompts, t = -s for ``negative review of ...:``)::

    valid text:    gold = t                                          in [-1, 1]
    otherwise:     gold = -2 + 0.5 * coverage + 0.1 * t_prefix       in [-2.1, -1.4]

``coverage`` = (words before the first error) / (all words): partial credit for the longest
valid prefix, so the reward still says "closer to well-formed" while any invalid text
(unknown words, missing ending, repeated aspect, more than 3 clauses, text after the end,
irregular spacing) scores below every valid review. ``t_prefix`` is the task score of the
clauses parsed before the error. Word stacking ("amazing amazing great") has coverage 0 and
scores about -2; repeating a clause ("the food was amazing and the food was amazing .") stops
at the repeated aspect and scores about -1.8. The constants are :data:`INVALID_FLOOR`,
:data:`PREFIX_CREDIT`, :data:`PREFIX_SENTIMENT_CREDIT`; :data:`INVALID_MAX` = -1.4 is the
highest score any invalid text can get.

Simulated annotators
====================

:func:`annotate` labels pairs by Bradley-Terry on gold: P(a preferred to b) =
sigmoid((g_a - g_b) / temperature), a coin flip when g_a == g_b. At
:data:`DEFAULT_TEMPERATURE` the annotators agree with the gold ordering on about 73% of pairs
of corpus reviews (docs/testbed.md). :func:`expected_agreement` is the agreement they should
reach on given pairs, :func:`agreement_std_error` its standard error.

Everything is seeded: the same ``seed`` gives the same data and labels.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf.label import bradley_terry_labels
from rlhf.label import preference_probability as _bt_probability
from rlhf.testbed.instructions import write_jsonl

__all__ = [
    "SUBJECTS", "ASPECTS", "SENTIMENT_WORDS", "INTENSIFIERS", "CLOSINGS", "CONJUNCTIONS",
    "VOCABULARY", "MAX_CLAUSES", "MAX_VALUE", "BUT_WEIGHT",
    "INVALID_FLOOR", "PREFIX_CREDIT", "PREFIX_SENTIMENT_CREDIT", "INVALID_MAX",
    "DEFAULT_TEMPERATURE", "ERROR_KINDS",
    "Clause", "Review", "Parse", "Task",
    "clause_value", "combine", "generate_review", "sample_review", "make_sft_records",
    "make_prompts", "make_prompt", "parse_prompt", "parse", "gold", "gold_reward", "relabel",
    "preference_probability", "annotate", "expected_agreement", "agreement_std_error",
    "measured_agreement", "summarize", "write_jsonl",
]

# --------------------------------------------------------------------------- the lexicon

SUBJECTS: tuple[str, ...] = (
    "the pizza place", "the hotel", "the cafe", "the bakery", "the diner",
    "the sushi bar", "the taco truck", "the noodle bar", "the pub", "the bistro",
)
ASPECTS: tuple[str, ...] = ("food", "service", "staff", "price", "music", "decor", "view")
SENTIMENT_WORDS: dict[str, int] = {
    "terrible": -2, "awful": -2, "bad": -1, "poor": -1, "okay": 0, "fine": 0,
    "good": 1, "nice": 1, "great": 2, "amazing": 2,
}
INTENSIFIERS: dict[str, float] = {"somewhat": 0.5, "fairly": 0.75, "very": 1.5, "extremely": 2.0}
CLOSINGS: dict[str, float] = {
    "highly recommended": 3.0, "would come back": 2.0, "might come back": 0.0,
    "would not come back": -2.0, "never again": -3.0,
}
CONJUNCTIONS: tuple[str, ...] = ("and", "but")

MAX_CLAUSES = 3
MAX_VALUE = 4.0  # the largest |clause value|: "extremely" (x2) times a valence of 2
BUT_WEIGHT = 2.0  # weight of the clause right after "but"; every other clause and the closing: 1
NOT_NEUTRAL = -0.5  # value of "not" + a neutral word before intensifying ("not okay")

_CLOSING_WORDS = tuple(tuple(c.split()) for c in CLOSINGS)
_COMPLETION_WORDS = frozenset(
    ["the", "was", "not", ".", *CONJUNCTIONS, *ASPECTS, *SENTIMENT_WORDS, *INTENSIFIERS]
    + [w for c in _CLOSING_WORDS for w in c])
_PROMPT_WORDS = frozenset(["positive", "negative", "review", "of"]
                          + [w for s in SUBJECTS for w in s.split()])
VOCABULARY: frozenset[str] = _COMPLETION_WORDS | _PROMPT_WORDS  # every word prompts and reviews use

# --------------------------------------------------------------------------- gold constants

INVALID_FLOOR = -2.0
PREFIX_CREDIT = 0.5
PREFIX_SENTIMENT_CREDIT = 0.1
INVALID_MAX = INVALID_FLOOR + PREFIX_CREDIT + PREFIX_SENTIMENT_CREDIT  # -1.4 < -1 <= any valid

# Annotator noise: agreement with the gold ordering ~73% on pairs of corpus reviews
# (make_sft_records; measured in docs/testbed.md and checked by tests/testbed).
DEFAULT_TEMPERATURE = 0.35

ERROR_KINDS: dict[str, str] = {
    "empty": "the completion has no words",
    "unknown_word": "a word outside the vocabulary",
    "unexpected_word": "a known word where the grammar allows another",
    "incomplete": "the text stops before the review's final '.'",
    "repeated_aspect": "an aspect reviewed twice",
    "too_many_clauses": f"more than {MAX_CLAUSES} clauses",
    "second_but": "more than one 'but'",
    "text_after_end": "words after the review's end",
    "spacing": "not single spaces between words (or leading/trailing whitespace)",
}

# --------------------------------------------------------------------------- semantics


@dataclass(frozen=True)
class Clause:
    """``the <aspect> was [not] [intensifier] <word>``, joined to the previous one by ``conj``."""

    aspect: str
    word: str
    negated: bool = False
    intensifier: str | None = None
    conj: str | None = None  # None for the first clause

    @property
    def value(self) -> float:
        return clause_value(self.word, self.negated, self.intensifier)

    @property
    def weight(self) -> float:
        return BUT_WEIGHT if self.conj == "but" else 1.0

    def words(self) -> list[str]:
        return ([self.conj] if self.conj else []) + (
            ["the", self.aspect, "was"] + (["not"] if self.negated else [])
            + ([self.intensifier] if self.intensifier else []) + [self.word])


def clause_value(word: str, negated: bool = False, intensifier: str | None = None) -> float:
    """c = m * n(v) (module docstring): valence, flipped and halved by "not", then intensified."""
    v = float(SENTIMENT_WORDS[word])
    if negated:
        v = -v / 2 if v != 0 else NOT_NEUTRAL
    return INTENSIFIERS[intensifier] * v if intensifier else v


def combine(clauses: Sequence[Clause], closing: str | None = None) -> float:
    """Normalised sentiment sum_i w_i c_i / (4 sum_i w_i) of clauses (+ closing, weight 1).

    No clause and no closing: 0 (nothing was said).
    """
    terms = [(c.weight, c.value) for c in clauses]
    if closing is not None:
        terms.append((1.0, CLOSINGS[closing]))
    total = sum(w for w, _ in terms)
    return sum(w * c for w, c in terms) / (MAX_VALUE * total) if total else 0.0


# --------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class Review:
    """A generated review: its plan, its text and the sentiment the generator meant."""

    clauses: tuple[Clause, ...]
    closing: str | None
    sentiment: float

    @property
    def text(self) -> str:
        words = [w for c in self.clauses for w in c.words()] + ["."]
        if self.closing:
            words += self.closing.split() + ["."]
        return " " + " ".join(words)  # leading space: the prompt ends with ":" and no space


def _pick(rng: random.Random, table: Mapping[str, float], bias: float, sharpness: float) -> str:
    """A key of ``table`` with probability proportional to exp(sharpness * bias * value)."""
    keys = list(table)
    return rng.choices(keys, weights=[math.exp(sharpness * bias * table[k]) for k in keys])[0]


def generate_review(rng: random.Random, sentiment_bias: float | None = None) -> Review:
    """One random review and its intended sentiment.

    ``sentiment_bias`` in [-1, 1] tilts word choice (positive: favourable words); None draws
    it uniformly per review, which makes the corpus span the whole range: consistently
    positive, consistently negative and mixed reviews. With probability 0.35 a review of 2+
    clauses turns around at a "but": the clauses from there on use the opposite bias. Negated
    clauses pick their word with the opposite bias ("not bad" for a positive review). Aspects
    appear in the order of :data:`ASPECTS` (a style; any order parses).
    """
    if sentiment_bias is None:
        bias = rng.uniform(-1.0, 1.0)
    elif -1.0 <= sentiment_bias <= 1.0:
        bias = float(sentiment_bias)
    else:
        raise ValueError(f"sentiment_bias must be in [-1, 1] or None (got {sentiment_bias!r})")
    n = rng.choices((1, 2, 3), weights=(0.3, 0.4, 0.3))[0]
    # Aspects come in the fixed order of ASPECTS (food before service before ...): a house
    # style that makes "no aspect twice" a local pattern a tiny model learns quickly. The
    # grammar itself accepts any order.
    aspects = sorted(rng.sample(ASPECTS, n), key=ASPECTS.index)
    turn = rng.randrange(1, n) if n >= 2 and rng.random() < 0.35 else None
    clauses = []
    for i, aspect in enumerate(aspects):
        b = -bias if turn is not None and i >= turn else bias
        negated = rng.random() < 0.2
        word = _pick(rng, SENTIMENT_WORDS, -b if negated else b, 1.2)
        intensifier = rng.choice(sorted(INTENSIFIERS)) if rng.random() < 0.45 else None
        conj = None if i == 0 else ("but" if i == turn else "and")
        clauses.append(Clause(aspect, word, negated, intensifier, conj))
    last_bias = -bias if turn is not None else bias
    closing = _pick(rng, CLOSINGS, last_bias, 0.8) if rng.random() < 0.5 else None
    return Review(tuple(clauses), closing, combine(clauses, closing))


def sample_review(rng: random.Random, sentiment_bias: float | None = None) -> str:
    """The text of one random review (a completion: it starts with a space)."""
    return generate_review(rng, sentiment_bias).text


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Task:
    """A parsed prompt: the subject and the asked polarity (None: a plain review)."""

    subject: str
    polarity: str | None  # None | "positive" | "negative"

    @property
    def prompt(self) -> str:
        return make_prompt(self.subject, self.polarity)


_PROMPT_RE = re.compile(r"(?:(positive|negative) )?review of (\S(?:.*\S)?):")


def make_prompt(subject: str, polarity: str | None = None) -> str:
    """``review of <subject>:`` or ``<polarity> review of <subject>:``."""
    if polarity not in (None, "positive", "negative"):
        raise ValueError(f"polarity must be None, 'positive' or 'negative' (got {polarity!r})")
    return f"{polarity + ' ' if polarity else ''}review of {subject}:"


def parse_prompt(prompt: Any) -> Task:
    """The task a prompt asks for. A chat prompt (message list) is read from its last user turn.

    Raises ValueError for anything but ``[positive |negative ]review of <subject>:``.
    """
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        users = [m.get("content") for m in prompt if m.get("role") == "user"]
        prompt = users[-1] if users else None
    m = _PROMPT_RE.fullmatch(prompt.strip()) if isinstance(prompt, str) else None
    if m is None:
        raise ValueError(f"expected a prompt '[positive |negative ]review of <subject>:' (got {prompt!r})")
    return Task(subject=m.group(2), polarity=m.group(1))


def make_prompts(n: int, seed: int = 0, *, instruct: bool = False) -> list[str]:
    """``n`` prompts over :data:`SUBJECTS`; ``instruct``: each asks for a random polarity."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        subject = rng.choice(SUBJECTS)
        out.append(make_prompt(subject, rng.choice(("positive", "negative")) if instruct else None))
    return out


def make_sft_records(n: int, seed: int = 0, *, instruct_fraction: float = 0.0) -> list[dict[str, str]]:
    """``n`` SFT records ``{"prompt", "completion"}`` of generated reviews (broad sentiment).

    With ``instruct_fraction`` > 0 that fraction of the prompts asks for the polarity the
    review actually has (``relabel``), so an SFT model also learns the instruction format.
    """
    if not 0.0 <= instruct_fraction <= 1.0:
        raise ValueError(f"instruct_fraction must be in [0, 1] (got {instruct_fraction!r})")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        subject = rng.choice(SUBJECTS)
        review = generate_review(rng)
        polarity = None
        if instruct_fraction and rng.random() < instruct_fraction:
            polarity = "positive" if review.sentiment > 0 else "negative"
        out.append({"prompt": make_prompt(subject, polarity), "completion": review.text})
    return out


# --------------------------------------------------------------------------- parser


@dataclass(frozen=True)
class Parse:
    """What :func:`parse` read. ``valid``: the text is a review of the grammar, exactly.

    For an invalid text, ``error_kind`` (a key of :data:`ERROR_KINDS`), ``error`` (a message)
    and ``error_at`` (index of the first word outside the longest valid prefix; ``len(words)``
    when the text stops too early or has trailing whitespace) say what went wrong, and
    ``clauses``/``closing``/``sentiment`` describe the complete clauses read before it.
    """

    words: tuple[str, ...]
    clauses: tuple[Clause, ...]
    closing: str | None
    sentiment: float
    error_kind: str | None = None
    error: str | None = None
    error_at: int | None = None

    @property
    def valid(self) -> bool:
        return self.error_kind is None

    @property
    def prefix_words(self) -> int:
        """Words in the longest valid prefix (all of them for a valid text)."""
        return len(self.words) if self.error_at is None else self.error_at

    @property
    def coverage(self) -> float:
        """prefix_words / len(words): 1 for a valid text, 0 for an empty one."""
        return self.prefix_words / len(self.words) if self.words else 0.0


class _Fail(Exception):
    def __init__(self, kind: str, at: int, message: str):
        super().__init__(message)
        self.kind, self.at, self.message = kind, at, message


def _quote(options: Sequence[str]) -> str:
    opts = [f"'{o}'" for o in options]
    return opts[0] if len(opts) == 1 else ", ".join(opts[:-1]) + " or " + opts[-1]


class _Reader:
    """A left-to-right recursive-descent reader over the words; raises _Fail at the first error."""

    def __init__(self, words: Sequence[str]):
        self.words, self.i = words, 0
        self.clauses: list[Clause] = []
        self.closing: str | None = None

    def peek(self) -> str | None:
        return self.words[self.i] if self.i < len(self.words) else None

    def expect(self, options: Sequence[str], what: str) -> str:
        w = self.peek()
        if w is None:
            raise _Fail("incomplete", self.i, f"the text ends where {what} ({_quote(options)}) should follow")
        if w not in options:
            kind = "unexpected_word" if w in _COMPLETION_WORDS else "unknown_word"
            raise _Fail(kind, self.i, f"word {self.i} ({w!r}): expected {what} ({_quote(options)})")
        self.i += 1
        return w

    def clause(self, conj: str | None) -> None:
        self.expect(["the"], "a clause")
        at = self.i
        aspect = self.expect(ASPECTS, "an aspect")
        if any(c.aspect == aspect for c in self.clauses):
            raise _Fail("repeated_aspect", at, f"word {at} ({aspect!r}): the {aspect} was already reviewed")
        self.expect(["was"], "'was'")
        negated = self.peek() == "not"
        self.i += negated
        intensifier = self.peek() if self.peek() in INTENSIFIERS else None
        self.i += intensifier is not None
        opts = list(SENTIMENT_WORDS) if intensifier or negated else list(INTENSIFIERS) + list(SENTIMENT_WORDS)
        if not negated and intensifier is None:
            opts = ["not"] + opts
        word = self.expect(opts, "a sentiment word")
        self.clauses.append(Clause(aspect, word, negated, intensifier, conj))

    def closing_phrase(self) -> None:
        # Match the longest prefix of any closing phrase, so the error points at the first
        # word that no closing allows (partial credit counts the words matched so far).
        best, matched = None, 0
        for phrase in _CLOSING_WORDS:
            k = 0
            while k < len(phrase) and self.i + k < len(self.words) and self.words[self.i + k] == phrase[k]:
                k += 1
            if k == len(phrase):
                best = phrase
                break
            matched = max(matched, k)
        if best is None:
            at = self.i + matched
            done = tuple(self.words[self.i:at])
            options = sorted({p[matched] for p in _CLOSING_WORDS if p[:matched] == done})
            self.i = at
            # raises: no closing phrase continues here (nor does the end, after the first '.')
            self.expect(options, "a closing phrase" if matched else "the end of the text or a closing phrase")
        assert best is not None  # expect() raised above otherwise
        self.i += len(best)
        self.closing = " ".join(best)

    def review(self) -> None:
        if not self.words:
            raise _Fail("empty", 0, "the completion is empty")
        self.clause(None)
        buts = 0
        while True:
            w = self.peek()
            if w in CONJUNCTIONS:
                if len(self.clauses) == MAX_CLAUSES:
                    raise _Fail("too_many_clauses", self.i,
                                f"word {self.i} ({w!r}): a review has at most {MAX_CLAUSES} clauses")
                if w == "but" and buts:
                    raise _Fail("second_but", self.i, f"word {self.i} ('but'): a review has at most one 'but'")
                buts += w == "but"
                self.i += 1
                self.clause(w)
                continue
            self.expect(["."] + (list(CONJUNCTIONS) if len(self.clauses) < MAX_CLAUSES else []),
                        "the end of the clause")
            break
        if self.peek() is None:
            return
        self.closing_phrase()
        self.expect(["."], "the final '.'")
        if self.peek() is not None:
            raise _Fail("text_after_end", self.i,
                        f"word {self.i} ({self.peek()!r}): text after the end of the review")


_SPACE_RE = re.compile(r"(\s*)(\S+)")


def _spacing_error(text: str, n_words: int) -> int | None:
    """Index of the first word preceded by irregular whitespace (n_words: trailing whitespace)."""
    for k, m in enumerate(_SPACE_RE.finditer(text)):
        if m.group(1) != " " and not (k == 0 and m.group(1) == ""):
            return k
    return n_words if text != text.rstrip() else None


def parse(completion: str) -> Parse:
    """Read a completion under the grammar. Any string gives a Parse (never an exception)."""
    if not isinstance(completion, str):
        raise TypeError(f"parse: expected a string completion (got {type(completion).__name__})")
    words = tuple(completion.split())
    space_at = _spacing_error(completion, len(words))
    limit = len(words) if space_at is None else space_at
    reader = _Reader(words[:limit])
    fail = None
    try:
        reader.review()
    except _Fail as f:
        fail = f
    if space_at is not None and (fail is None or fail.at >= limit):
        where = f"before word {space_at} ({words[space_at]!r})" if space_at < len(words) else "at the end"
        fail = _Fail("spacing", space_at, f"irregular whitespace {where}: expected single spaces")
    clauses = tuple(reader.clauses)
    # Like a clause, a closing phrase counts once it is complete, even if an error follows.
    closing = reader.closing
    sentiment = combine(clauses, closing)
    if fail is None:
        return Parse(words, clauses, closing, sentiment)
    return Parse(words, clauses, closing, sentiment, fail.kind, fail.message, fail.at)


# --------------------------------------------------------------------------- gold reward


def gold(prompt: Any, completion: str) -> float:
    """The gold reward of one (prompt, completion); formula in the module docstring."""
    task = parse_prompt(prompt)
    p = parse(completion)
    t = -p.sentiment if task.polarity == "negative" else p.sentiment
    if p.valid:
        return t
    return INVALID_FLOOR + PREFIX_CREDIT * p.coverage + PREFIX_SENTIMENT_CREDIT * t


def gold_reward(prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """Gold rewards, one per pair: usable as ``rlhf.testbed.reviews:gold_reward`` (CallableReward)."""
    if len(prompts) != len(completions):
        raise ValueError(f"gold_reward: {len(prompts)} prompts but {len(completions)} completions")
    out = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        try:
            out.append(gold(p, c))
        except (ValueError, TypeError) as e:
            raise ValueError(f"gold_reward: pair {i}: {e} (this is the demo's hidden gold reward: it scores the "
                             f"built-in review task's prompts only; on your own prompts remove it, e.g. "
                             f"track={{}} or rlhf.ppo(..., track={{}}))") from None
    return out


def relabel(prompt: Any, completion: str) -> str:
    """The instruction prompt ``completion`` satisfies: ``positive review of <subject>:`` when
    its sentiment is > 0, else ``negative review of <subject>:`` (hindsight relabeling).

    The subject is kept from ``prompt`` (plain or instruction). An invalid completion is judged
    by the sentiment of the clauses before its first error (0, hence "negative", if none).
    """
    task = parse_prompt(prompt)
    return make_prompt(task.subject, "positive" if parse(completion).sentiment > 0 else "negative")


# --------------------------------------------------------------------------- annotators


def preference_probability(g_a: float, g_b: float, temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Bradley-Terry: P(a preferred to b) = sigmoid((g_a - g_b) / temperature) (rlhf.label's)."""
    return _bt_probability(g_a, g_b, temperature)


def annotate(prompts: Sequence[Any], completions_a: Sequence[str], completions_b: Sequence[str], *,
             temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> list[dict[str, Any]]:
    """Simulated human labels: one ``{"prompt", "chosen", "rejected"}`` record per pair, in order.

    a is chosen with probability sigmoid((g_a - g_b) / temperature) (gold of each under its
    prompt); equal gold is a fair coin flip. Identical completions give chosen == rejected
    (the data loader skips such rows). Deterministic given ``seed``.
    """
    if not (len(prompts) == len(completions_a) == len(completions_b)):
        raise ValueError(f"annotate: {len(prompts)} prompts, {len(completions_a)} completions_a and "
                         f"{len(completions_b)} completions_b: expected the same number of each")
    g_a = gold_reward(prompts, completions_a)
    g_b = gold_reward(prompts, completions_b)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature!r})")
    wins = bradley_terry_labels(g_a, g_b, temperature, random.Random(seed))
    return [{"prompt": p, "chosen": a if w else b, "rejected": b if w else a}
            for p, a, b, w in zip(prompts, completions_a, completions_b, wins)]


def _pair_probs(g_a: Sequence[float], g_b: Sequence[float], temperature: float) -> list[float]:
    if len(g_a) != len(g_b) or not g_a:
        raise ValueError(f"expected two equally long, non-empty lists of gold (got {len(g_a)} and {len(g_b)})")
    return [preference_probability(abs(a - b), 0.0, temperature) for a, b in zip(g_a, g_b)]


def expected_agreement(g_a: Sequence[float], g_b: Sequence[float],
                       temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Mean over pairs of sigmoid(|g_a - g_b| / temperature): the annotators' expected agreement
    with the gold ordering (a tied pair counts 0.5, as :func:`measured_agreement` counts it)."""
    probs = _pair_probs(g_a, g_b, temperature)
    return sum(probs) / len(probs)


def agreement_std_error(g_a: Sequence[float], g_b: Sequence[float],
                        temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Standard error of the measured agreement: sqrt(sum_i p_i (1 - p_i)) / n over untied pairs
    (a tied pair always counts exactly 0.5, so it adds no variance)."""
    probs = _pair_probs(g_a, g_b, temperature)
    var = sum(p * (1 - p) for p, a, b in zip(probs, g_a, g_b) if a != b)
    return math.sqrt(var) / len(probs)


def measured_agreement(g_chosen: Sequence[float], g_rejected: Sequence[float]) -> float:
    """Fraction of labelled pairs whose chosen side has the higher gold (ties count 0.5)."""
    if len(g_chosen) != len(g_rejected) or not g_chosen:
        raise ValueError(f"expected two equally long, non-empty lists of gold "
                         f"(got {len(g_chosen)} and {len(g_rejected)})")
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(g_chosen, g_rejected)) / len(g_chosen)


# --------------------------------------------------------------------------- reports


def summarize(prompts: Sequence[Any], completions: Sequence[str]) -> dict[str, Any]:
    """Gold statistics of a set of samples: for evaluation tables and the demo's report.

    Keys: n, gold_mean, gold_std, valid_fraction, sentiment_mean (valid samples only; None if
    none), words_mean, errors ({error_kind: count}).
    """
    golds = gold_reward(prompts, completions)
    parses = [parse(c) for c in completions]
    n = len(golds)
    if n == 0:
        raise ValueError("summarize: no samples")
    mean = sum(golds) / n
    valid = [p for p in parses if p.valid]
    return {
        "n": n,
        "gold_mean": mean,
        "gold_std": math.sqrt(sum((g - mean) ** 2 for g in golds) / n),
        "valid_fraction": len(valid) / n,
        "sentiment_mean": sum(p.sentiment for p in valid) / len(valid) if valid else None,
        "words_mean": sum(len(p.words) for p in parses) / n,
        "errors": dict(Counter(p.error_kind for p in parses if not p.valid)),
    }
