"""A verifiable-reward task: single-digit additions, rewarded 1 for the exact answer.

    prompt      "7+5="
    completion  "12"            reward 1.0 (anything else: 0.0)

The supervised data is deliberately unreliable: each demonstration is correct with probability
``accuracy`` (default 0.5) and otherwise a plausible wrong sum, so the SFT policy answers
about half the questions right and RL with the exact-answer reward has something to fix. This
is the shape of RL with verifiable rewards (GRPO on maths, DeepSeekMath / R1): no reward model,
a checker instead.

    python -m rlhf.testbed.arithmetic --out runs/arithmetic     # writes sft.jsonl, prompts.jsonl
    rlhf pipeline --recipe arithmetic              # tiny model -> SFT -> GRPO -> eval

The prompt files also hold each question's ground-truth ``answer`` column, so the checker can
be written the way most verifiable-reward data is laid out (a question and its answer per row):
:func:`matches_answer` receives that column as a keyword argument (rlhf.rewards, "row
columns") instead of re-deriving the sum from the prompt::

    rlhf ppo ... advantage=grpo reward=rlhf.testbed.arithmetic:matches_answer
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["make_prompts", "make_sft_records", "exact_answer", "matches_answer", "write_task", "write_task_stage",
           "chat_problems", "final_number_matches", "write_chat_task"]

_PROMPT = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=\s*$")


def _question(rng: random.Random) -> tuple[int, int]:
    return rng.randrange(10), rng.randrange(10)


def make_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{a}+{b}=" for a, b in (_question(rng) for _ in range(n))]


def make_sft_records(n: int, seed: int = 0, accuracy: float = 0.5) -> list[dict[str, str]]:
    """Demonstrations that are right with probability ``accuracy``, else off by 1 to 3."""
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must be in [0, 1] (got {accuracy})")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = _question(rng)
        answer = a + b
        if rng.random() >= accuracy:
            answer = max(0, answer + rng.choice([-3, -2, -1, 1, 2, 3]))
            if answer == a + b:
                answer += 1
        out.append({"prompt": f"{a}+{b}=", "completion": str(answer)})
    return out


def exact_answer(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """1.0 when the completion (surrounding spaces ignored) is the sum asked for, else 0.0."""
    scores = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        m = _PROMPT.match(str(p))
        if m is None:
            raise ValueError(f"exact_answer: pair {i}: prompt {p!r} is not of the form 'a+b='")
        scores.append(1.0 if c.strip() == str(int(m.group(1)) + int(m.group(2))) else 0.0)
    return scores


def matches_answer(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str]) -> list[float]:
    """1.0 when the completion (surrounding spaces ignored) equals the row's ``answer`` column,
    else 0.0. ``answer`` comes batched, one entry per completion (GRPO's K samples of a prompt
    each get that prompt's answer)."""
    return [1.0 if str(c).strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def _answer(prompt: str) -> str:
    m = _PROMPT.match(prompt)
    assert m is not None, prompt
    return str(int(m.group(1)) + int(m.group(2)))


def write_task(out: str | Path, n_sft: int = 3000, n_prompts: int = 256, seed: int = 0,
               accuracy: float = 0.5) -> dict[str, Path]:
    """Write ``sft.jsonl`` and ``prompts.jsonl`` (+ ``eval_prompts.jsonl``; prompt and answer
    columns) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"sft": out / "sft.jsonl", "prompts": out / "prompts.jsonl", "eval_prompts": out / "eval_prompts.jsonl"}
    rows = {"sft": make_sft_records(n_sft, seed, accuracy),
            "prompts": [{"prompt": p, "answer": _answer(p)} for p in make_prompts(n_prompts, seed + 1)],
            "eval_prompts": [{"prompt": p, "answer": _answer(p)} for p in make_prompts(100, seed + 2)]}
    from rlhf.train.run import write_jsonl_atomic
    for k, path in files.items():
        write_jsonl_atomic(path, rows[k])
    return files


def write_task_stage(output_dir: str | Path, **kwargs) -> dict[str, int]:
    """``rlhf pipeline`` stage form of :func:`write_task` (type: call)."""
    files = write_task(output_dir, **kwargs)
    return {name: sum(1 for _ in open(path)) for name, path in files.items()}


# --------------------------------------------------------------------------- the instruct-model task

CHAT_PROMPT = "What is {a} {op} {b}? Answer with the number only."


def chat_problems() -> list[dict[str, str]]:
    """Every problem of the instruct-model task, in a fixed order: the 100 one-digit additions
    (0-9 + 0-9) and the 64 one-digit products (2-9 * 2-9), as plain-text questions (an instruct
    recipe renders them as a user message, ``data.text_as_chat``) with their ``answer``.

    The mix is chosen by measurement: SmolLM2-135M-Instruct answers about 63% of the additions and
    33% of the products right greedily (bench/real_grpo.py measures its held-out split), so GRPO
    starts in the range where the exact reward has signal."""
    rows = [{"prompt": CHAT_PROMPT.format(a=a, op="+", b=b), "answer": str(a + b)}
            for a in range(10) for b in range(10)]
    rows += [{"prompt": CHAT_PROMPT.format(a=a, op="*", b=b), "answer": str(a * b)}
             for a in range(2, 10) for b in range(2, 10)]
    return rows


def final_number_matches(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str]) -> list[float]:
    """1.0 when the last number a completion gives (rlhf.verifiers.final_number: "7 + 5 = 12."
    gives 12) equals the row's ``answer`` column, else 0.0: the checker for an instruct model,
    which answers in a sentence; a completion cut off before any number scores 0."""
    from rlhf.verifiers import final_number

    return [1.0 if final_number(str(c)) == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def write_chat_task(out: str | Path, n_heldout: int = 64, n_prompts: int = 1024, seed: int = 0) -> dict[str, Path]:
    """Split :func:`chat_problems` at random (``seed``) into ``n_heldout`` held-out problems
    (``eval_prompts.jsonl``, each once) and the rest for training (``prompts.jsonl``: ``n_prompts``
    rows drawn from the training problems, shuffled). No held-out question appears in training."""
    problems = chat_problems()
    if not 0 < n_heldout < len(problems):
        raise ValueError(f"n_heldout must be in 1..{len(problems) - 1} (got {n_heldout})")
    rng = random.Random(seed)
    order = list(range(len(problems)))
    rng.shuffle(order)
    heldout = [problems[i] for i in sorted(order[:n_heldout])]
    train = [problems[i] for i in order[n_heldout:]]
    rows = [train[rng.randrange(len(train))] for _ in range(n_prompts)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"prompts": out / "prompts.jsonl", "eval_prompts": out / "eval_prompts.jsonl"}
    from rlhf.train.run import write_jsonl_atomic
    write_jsonl_atomic(files["prompts"], rows)
    write_jsonl_atomic(files["eval_prompts"], heldout)
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accuracy", type=float, default=0.5, help="fraction of correct demonstrations")
    p.add_argument("--chat", action="store_true", help="the instruct-model task instead (write_chat_task: "
                                                       "one-digit sums and products, plain-text questions)")
    a = p.parse_args(argv)
    files = write_chat_task(a.out, seed=a.seed) if a.chat else write_task(a.out, seed=a.seed, accuracy=a.accuracy)
    for name, path in files.items():
        print(f"wrote {name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
