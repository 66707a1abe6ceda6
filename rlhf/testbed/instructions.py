"""A tiny instruction-following task the project generates itself (no download).

Each example is an instruction over a short list of letters or digits, with one correct
answer computed by a rule, so a model that learns the task is measurably better than one that
only learns the answer's vocabulary:

    reverse: c a t          ->  t a c
    sort: 3 1 2             ->  1 2 3
    first: q w e            ->  q
    last: q w e             ->  e
    count: a b c d          ->  4
    double: x y             ->  x x y y

It feeds the tests (a fast, fully known SFT task); the demo runs the review testbed (reviews.py).
The generator is seeded: the same ``seed`` gives the same examples.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

__all__ = ["TASKS", "make_example", "make_examples", "write_jsonl"]

_LETTERS = "abcdefghij"
_DIGITS = "0123456789"

TASKS: dict[str, Callable[[list[str]], list[str]]] = {
    "reverse": lambda xs: list(reversed(xs)),
    "sort": sorted,
    "first": lambda xs: xs[:1],
    "last": lambda xs: xs[-1:],
    "count": lambda xs: [str(len(xs))],
    "double": lambda xs: [x for x in xs for _ in range(2)],
}


def make_example(rng: random.Random, min_len: int = 2, max_len: int = 5) -> dict[str, str]:
    task = rng.choice(sorted(TASKS))
    alphabet = _DIGITS if task == "sort" else _LETTERS
    xs = [rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len))]
    return {"prompt": f"{task}: {' '.join(xs)}\n", "completion": " ".join(TASKS[task](xs))}


def make_examples(n: int, seed: int = 0, **kw) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [make_example(rng, **kw) for _ in range(n)]


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    from rlhf.train.run import write_jsonl_atomic
    return write_jsonl_atomic(path, rows)
