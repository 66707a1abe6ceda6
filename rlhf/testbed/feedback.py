"""The built-in task's side of the feedback recipes: a rule-based critic and reviser for
Constitutional AI (rlhf/recipes/constitutional.py), the hindsight relabeling function and the
instruction data (rlhf/recipes/hindsight.py). They know the review language's rules
(rlhf/testbed/reviews.py), which lets the recipes be shown working on a laptop where no model
is capable enough to critique or revise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf.train.run import write_jsonl_atomic

__all__ = ["REVIEW_PRINCIPLES", "reviews_critic", "reviews_reviser", "reviews_relabel", "write_instruction_data"]


REVIEW_PRINCIPLES: list[str] = [
    "The response must be one well-formed review in the task's language.",
    "The review must have the asked polarity: positive unless a negative review is asked for.",
]

_FLIP = {"positive": ("great", "would come back"), "negative": ("terrible", "would not come back")}


def _target(prompt: Any) -> str:
    from rlhf.testbed.reviews import parse_prompt
    return "negative" if parse_prompt(prompt).polarity == "negative" else "positive"


def _rebuild(clauses: Sequence[Any], closing: str | None) -> str:
    from rlhf.testbed.reviews import Review, combine
    if not clauses:
        from rlhf.testbed.reviews import Clause
        clauses = (Clause("food", "okay"),)
    return Review(tuple(clauses), closing, combine(clauses, closing)).text


def reviews_critic(prompts: Sequence[Any], responses: Sequence[str], principle: str) -> list[str]:
    """Rule-based critiques for the built-in task: what breaks the grammar, or which clauses go
    against the asked polarity (by the task's parser, rlhf/testbed/reviews.py)."""
    from rlhf.testbed.reviews import CLOSINGS, parse
    out = []
    for p, r in zip(prompts, responses):
        parsed = parse(r)
        if "well-formed" in principle:
            out.append("no problem" if parsed.valid else f"not well-formed: {parsed.error}")
            continue
        sign = 1 if _target(p) == "positive" else -1
        bad = [" ".join(c.words()) for c in parsed.clauses if sign * c.value <= 0]
        if parsed.closing and sign * CLOSINGS[parsed.closing] <= 0:
            bad.append(parsed.closing)
        out.append("no problem" if not bad else f"against the asked {_target(p)} polarity: " + "; ".join(bad))
    return out


def reviews_reviser(prompts: Sequence[Any], responses: Sequence[str], principle: str,
                    critiques: Sequence[str]) -> list[str]:
    """Rule-based revisions for the built-in task (critiques are not needed: the rules are known).

    "well-formed" principles: an invalid review is cut to the clauses read before its first error
    (and its closing, if complete), ended with "." (``the food was okay .`` when nothing is left).
    Polarity principles: every clause or closing against the asked polarity (positive for a
    plain prompt) is replaced by a plain "great" / "terrible" clause on the same aspect (and
    "would come back" / "would not come back"), which also makes the text well-formed.
    Anything else: the response unchanged.
    """
    from rlhf.testbed.reviews import CLOSINGS, Clause, parse
    out = []
    for p, r in zip(prompts, responses):
        parsed = parse(r)
        if "well-formed" in principle:
            out.append(r if parsed.valid else _rebuild(parsed.clauses, parsed.closing))
        elif "polarity" in principle:
            target = _target(p)
            sign = 1 if target == "positive" else -1
            word, closing = _FLIP[target]
            clauses = [c if sign * c.value > 0 else Clause(c.aspect, word, False, c.intensifier, c.conj)
                       for c in parsed.clauses]
            close = parsed.closing
            if close is not None and sign * CLOSINGS[close] <= 0:
                close = closing
            new = _rebuild(clauses, close)
            out.append(r if parsed.valid and new == _rebuild(parsed.clauses, parsed.closing) else new)
        else:
            out.append(r)
    return out



def reviews_relabel(prompt: Any, completion: str) -> str | None:
    """The built-in task's relabeling (rlhf/testbed/reviews.py): "positive review of X:" or
    "negative review of X:" by the review's actual sentiment (``reviews.relabel``), and None
    (drop) for a text that is not a well-formed review, since it satisfies no instruction of
    the task; training on it would teach malformed text."""
    from rlhf.testbed.reviews import parse, relabel
    return relabel(prompt, completion) if parse(completion).valid else None


def write_instruction_data(output_dir: str | Path, n_sft: int = 3000, instruct_fraction: float = 0.3,
                           n_prompts: int = 128, n_eval: int = 128, seed: int = 0) -> dict[str, Any]:
    """The built-in task with instructions, for a hindsight demo (a pipeline ``call`` stage):
    ``sft.jsonl`` (reviews, ``instruct_fraction`` of them with the polarity they have asked for),
    ``prompts.jsonl`` and ``eval_prompts.jsonl`` (instruction prompts only)."""
    from rlhf.testbed import reviews

    out = Path(output_dir)
    write_jsonl_atomic(out / "sft.jsonl",
                       reviews.make_sft_records(n_sft, seed=seed, instruct_fraction=instruct_fraction))
    write_jsonl_atomic(out / "prompts.jsonl",
                       [{"prompt": p} for p in reviews.make_prompts(n_prompts, seed=seed + 1, instruct=True)])
    write_jsonl_atomic(out / "eval_prompts.jsonl",
                       [{"prompt": p} for p in reviews.make_prompts(n_eval, seed=seed + 2, instruct=True)])
    return {"sft_examples": n_sft, "instruct_fraction": instruct_fraction, "prompts": n_prompts, "eval_prompts": n_eval}
