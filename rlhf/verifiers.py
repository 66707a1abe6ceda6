"""Verifiable rewards for maths word problems (GSM8K-style): 1 when the final number is right.

RL with verifiable rewards (DeepSeekMath's GRPO, Tülu 3's RLVR) needs the reference answer of
each prompt. The reward interface sees only ``(prompts, completions)``, so the answers are
bound to the function by the reward spec, inline (the spec file then moves with its folder)
or as a jsonl file of ``{"prompt", "answer"}`` rows::

    {"type": "callable", "function": "rlhf.verifiers:math_answer",
     "kwargs": {"answers": {"<prompt>": "42", ...}}}

:func:`write_math_task` writes ``prompts.jsonl``, ``eval_prompts.jsonl``, ``answers.jsonl`` and
that spec as ``reward.json`` from a hub dataset (``openai/gsm8k``) or a local file with
``question`` and ``answer`` columns (GSM8K's layout: the answer's last line is ``#### 42``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["final_number", "math_answer", "write_math_task", "PROMPT_TEMPLATE"]

PROMPT_TEMPLATE = ("{question}\nSolve it step by step, then give the final answer on its own line "
                   "as '#### <number>'.")

# A number as people write it: sign, thousands separators, decimals ("-1,234.50").
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The answer a text gives: the number after the last ``####`` if there is one, else the
    last number in the text; commas dropped, trailing ``.0`` zeros dropped. None if no number."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    n = found[0] if "####" in text else found[-1]
    n = n.replace(",", "")
    if "." in n:
        n = n.rstrip("0").rstrip(".")
    return n


@lru_cache(maxsize=4)
def _answers_file(path: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if "prompt" not in row or "answer" not in row:
                raise ValueError(f"{path}:{i}: expected 'prompt' and 'answer' fields")
            table[row["prompt"]] = str(row["answer"])
    return table


def math_answer(prompts: Sequence[str], completions: Sequence[str], answers: dict[str, str] | str) -> list[float]:
    """1.0 when the completion's final number equals the prompt's reference answer, else 0.0.

    ``answers``: ``{prompt: answer}``, or a jsonl of ``{"prompt", "answer"}`` rows; a prompt is
    looked up as given or, when a chat template wrapped it, by the known prompt it contains.
    """
    table = answers if isinstance(answers, dict) else _answers_file(str(answers))
    out = []
    if len(prompts) != len(completions):
        raise ValueError(f"math_answer: {len(prompts)} prompts but {len(completions)} completions")
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ref = table.get(p)
        if ref is None:
            ref = next((a for q, a in table.items() if q in str(p)), None)
        if ref is None:
            raise ValueError(f"math_answer: prompt {i} ({str(p)[:60]!r}...) is not in {answers}")
        out.append(1.0 if final_number(str(c)) == final_number(ref) else 0.0)
    return out


def _read_rows(source: str, split: str, config: str | None) -> list[dict[str, Any]]:
    p = Path(source)
    if p.is_file():
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    import datasets
    return datasets.load_dataset(source, config, split=split).to_list()


def write_math_task(output_dir: str | Path, source: str = "openai/gsm8k", config: str | None = "main",
                    train_split: str = "train", eval_split: str = "test", max_train: int | None = None,
                    max_eval: int | None = 256) -> dict[str, Any]:
    """``rlhf pipeline`` stage (type: call): prompts, held-out prompts, answers and reward.json."""
    from rlhf.train.run import write_jsonl_atomic

    out = Path(output_dir)
    rows = {"prompts": _read_rows(source, train_split, config)[:max_train],
            "eval_prompts": _read_rows(source, eval_split, config)[:max_eval]}
    answers: list[dict[str, Any]] = []
    for name, part in rows.items():
        prompts = []
        for i, r in enumerate(part, 1):
            if "question" not in r or "answer" not in r:
                raise ValueError(f"{source} ({name}) row {i}: expected 'question' and 'answer' columns")
            prompt = PROMPT_TEMPLATE.format(question=r["question"].strip())
            prompts.append({"prompt": prompt})
            answers.append({"prompt": prompt, "answer": final_number(str(r["answer"]))})
        write_jsonl_atomic(out / f"{name}.jsonl", prompts)
    write_jsonl_atomic(out / "answers.jsonl", answers)
    # Answers inline: a pipeline writes this folder under a temporary name, so no path into it
    # would stay valid; JSON, not YAML, because a YAML parser takes seconds on thousands of rows.
    spec = {"type": "callable", "function": "rlhf.verifiers:math_answer",
            "kwargs": {"answers": {a["prompt"]: a["answer"] for a in answers}}}
    (out / "reward.json").write_text(json.dumps(spec) + "\n")
    return {"prompts": len(rows["prompts"]), "eval_prompts": len(rows["eval_prompts"])}
