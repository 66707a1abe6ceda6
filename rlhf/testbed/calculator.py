"""A multi-turn task with a tool and a known optimum: products a model cannot do in its head.

    prompt       "37*4="
    turn 1       "[calculator: 37*4]"          the policy calls the tool (plain format)
    observation  " = 148\\n"                    the environment appends the result
    turn 2       " 148" EOS                     the answer: reward 1.0 when it is the product

The optimum is known: call the calculator on the question, then copy its result (success 1.0).
Answering without the tool is a guess that is almost never right: the supervised data answers
directly half of the time (``tool_rate``), with a plausible wrong number, and uses the tool the
other half, so the SFT policy succeeds about half of the time and GRPO, rewarded for the right
final answer, learns to call the tool every time (tests/testbed/test_calculator.py)::

    rlhf pipeline --recipe calculator          # tiny model -> SFT -> GRPO with the tool -> success rates

The prompt files hold each question's ``answer`` column; :func:`matches_answer` (the reward of
the final answer) reads it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["make_prompts", "make_sft_records", "matches_answer", "write_task", "write_task_stage", "success_rate",
           "eval_stage", "TOOL"]

TOOL = "rlhf.envs.tools:calculator"


def _question(rng: random.Random) -> tuple[int, int]:
    return rng.randrange(10, 100), rng.randrange(2, 10)


def make_prompts(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": f"{a}*{b}=", "answer": str(a * b)} for a, b in (_question(rng) for _ in range(n))]


def make_sft_records(n: int, seed: int = 0, tool_rate: float = 0.5) -> list[dict[str, str]]:
    """Transcripts: with probability ``tool_rate`` the tool call, its result and the copied
    answer; else a direct answer off by 1 to 30 (never right). Answers start with a space, like
    the number in the tool's result, so that copying it is copying the same tokens."""
    if not 0 <= tool_rate <= 1:
        raise ValueError(f"tool_rate must be in [0, 1] (got {tool_rate})")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = _question(rng)
        if rng.random() < tool_rate:
            completion = f"[calculator: {a}*{b}] = {a * b}\n {a * b}"
        else:
            completion = f" {max(0, a * b + rng.choice([-1, 1]) * rng.randrange(1, 31))}"
        out.append({"prompt": f"{a}*{b}=", "completion": completion})
    return out


def matches_answer(prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[str]) -> list[float]:
    """1.0 when the final answer (surrounding spaces ignored) is the row's ``answer``, else 0.0."""
    return [1.0 if str(c).strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer, strict=True)]


def write_task(out: str | Path, n_sft: int = 4000, n_prompts: int = 512, n_eval: int = 200, seed: int = 0,
               tool_rate: float = 0.5) -> dict[str, Path]:
    """``sft.jsonl`` (prompt/completion transcripts), ``prompts.jsonl`` and ``eval_prompts.jsonl``
    (prompt and answer columns) in ``out``."""
    from rlhf.train.run import write_jsonl_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"sft": out / "sft.jsonl", "prompts": out / "prompts.jsonl", "eval_prompts": out / "eval_prompts.jsonl"}
    rows = {"sft": make_sft_records(n_sft, seed, tool_rate), "prompts": make_prompts(n_prompts, seed + 1),
            "eval_prompts": make_prompts(n_eval, seed + 2)}
    for k, path in files.items():
        write_jsonl_atomic(path, rows[k])
    return files


def write_task_stage(output_dir: str | Path, **kwargs: Any) -> dict[str, int]:
    """``rlhf pipeline`` stage form of :func:`write_task` (type: call)."""
    files = write_task(output_dir, **kwargs)
    return {name: sum(1 for _ in open(path)) for name, path in files.items()}


def success_rate(policy: str | Path, prompts_file: str | Path, *, num_samples: int = 4, max_new_tokens: int = 12,
                 max_turns: int = 3, seed: int = 0) -> dict[str, float]:
    """Held-out episodes of ``policy`` with the calculator (sampled at temperature 1, seeded):
    the fraction answered right, and the fraction that called the tool."""
    import torch

    from rlhf.data.config import DataConfig
    from rlhf.data.records import PromptRecord
    from rlhf.data.tokenize import encode_prompt
    from rlhf.envs.episodes import ToolEnvironment, run_episodes
    from rlhf.envs.tools import FunctionTool, calculator
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.rollout import BuiltinEngine, SamplingConfig

    mc = ModelConfig(name_or_path=str(policy))
    tok = load_tokenizer(mc)
    model = load_causal_lm(mc, for_training=False)
    rows = [json.loads(line) for line in Path(prompts_file).read_text().splitlines() if line.strip()]
    rows = [{"prompt": r["prompt"], "columns": {"answer": r["answer"]}} for r in rows for _ in range(num_samples)]
    tools = {"calculator": FunctionTool(calculator)}
    envs = [ToolEnvironment(matches_answer, tools, "plain") for _ in rows]
    data = DataConfig(chat_template="none")  # as the recipe encodes its prompts
    ids = [encode_prompt(PromptRecord(prompt=r["prompt"]), tok, data)["prompt_input_ids"] for r in rows]
    eps = run_episodes(BuiltinEngine(model), tok, rows, ids, envs, SamplingConfig(max_new_tokens=max_new_tokens),
                       max_turns=max_turns, max_tokens=max_new_tokens * max_turns, turn_stop_strings=["]"],
                       generator=torch.Generator().manual_seed(seed))
    n = len(eps)
    return {"success": sum(e.reward for e in eps) / n, "tool_use": sum(e.tool_calls > 0 for e in eps) / n,
            "episodes": float(n)}


def eval_stage(output_dir: str | Path, policies: dict[str, str], prompts: str, **kwargs: Any) -> dict[str, Any]:
    """``rlhf pipeline`` stage (type: call): :func:`success_rate` of each policy, into results.json,
    and one line per policy on the console (the run's result, without opening a file)."""
    from rlhf.train.run import write_json_atomic

    results = {name: success_rate(path, prompts, **kwargs) for name, path in policies.items()}
    write_json_atomic(Path(output_dir) / "results.json", results)
    for name, r in results.items():
        print(f"[eval] {name}: success {r['success']:.2f}, tool use {r['tool_use']:.2f} "
              f"({int(r['episodes'])} held-out episodes)", flush=True)
    return results
