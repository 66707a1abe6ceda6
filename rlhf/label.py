"""Preference labels from a reward source: sample two completions per prompt from a policy and
let a judge pick one, giving a standard preference file (prompt / chosen / rejected) that
``rlhf rm`` and ``rlhf dpo`` read.

The judge is any reward source (rlhf/rewards.py): a reward model, a Python function, a sum.
With ``temperature`` τ > 0 it labels like a noisy human under the Bradley–Terry model,

    P(a ≻ b) = σ((r_a − r_b) / τ)

(τ → 0: always the higher-scored one; ties are a fair coin). This is how the built-in demo's
simulated annotators label pairs with the hidden gold reward, at a noise level where they agree
with the gold ordering about as often as human labelers agree with each other.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["preference_probability", "bradley_terry_labels", "label_stage"]


def preference_probability(r_a: float, r_b: float, temperature: float) -> float:
    """Bradley–Terry: P(a ≻ b) = σ((r_a − r_b)/τ), computed without overflow; τ > 0."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature!r})")
    z = (r_a - r_b) / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def bradley_terry_labels(scores_a: Sequence[float], scores_b: Sequence[float], temperature: float,
                         rng: random.Random) -> list[bool]:
    """True where a is preferred: drawn with P(a ≻ b) = σ((r_a − r_b)/τ); τ = 0 picks the higher
    score (a coin for ties). One ``rng.random()`` per pair, in order."""
    out = []
    for a, b in zip(scores_a, scores_b):
        p = preference_probability(a, b, temperature) if temperature > 0 else (0.5 if a == b else float(a > b))
        out.append(rng.random() < p)
    return out


def label_stage(output_dir: str | Path, *, policy: str, prompts: str, judge: str,
                temperature: float = 0.0, eval_fraction: float = 0.1, max_new_tokens: int = 32,
                sampling_temperature: float = 1.0, batch_size: int = 64, seed: int = 0,
                max_prompts: int | None = None, chat_template: str = "auto") -> dict[str, Any]:
    """Sample two completions per prompt from ``policy``, label each pair with ``judge``, and
    write ``train.jsonl`` / ``eval.jsonl`` (prompt, chosen, rejected, score_chosen,
    score_rejected) into ``output_dir``. Pairs with identical completions are dropped (a
    comparison of a text with itself says nothing). Returns the summary."""
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_prompts
    from rlhf.data.records import PromptRecord
    from rlhf.data.tokenize import encode_prompt
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.rewards import load_reward_source
    from rlhf.rollout import SamplingConfig, sample
    from rlhf.train.run import write_jsonl_atomic

    if temperature < 0:
        raise ValueError(f"label: temperature must be >= 0 (got {temperature})")
    out = Path(output_dir)
    texts = load_prompts(prompts, max_prompts)
    mcfg = ModelConfig(name_or_path=policy)
    tok = load_tokenizer(mcfg)
    model = load_causal_lm(mcfg, for_training=False)
    dcfg = DataConfig(chat_template=chat_template)
    ids = [encode_prompt(PromptRecord(prompt=p), tok, dcfg)["prompt_input_ids"] for p in texts]
    gen = torch.Generator().manual_seed(seed)
    scfg = SamplingConfig(num_samples=2, max_new_tokens=max_new_tokens, temperature=sampling_temperature,
                          batch_size=batch_size)
    from tqdm.auto import tqdm
    completions: list[str] = []
    step = max(1, batch_size // 2)
    for s in tqdm(range(0, len(texts), step), desc="label: sampling pairs", unit="batch"):
        completions += sample(model, tok, texts[s:s + step], ids[s:s + step], scfg, generator=gen).completions
    a, b = completions[0::2], completions[1::2]
    source = load_reward_source(judge)
    ra = source(texts, a).tolist()
    rb = source(texts, b).tolist()
    prefer_a = bradley_terry_labels(ra, rb, temperature, random.Random(seed))
    rows, identical, empty, agree = [], 0, 0, 0.0
    for p, x, y, sx, sy, pa in zip(texts, a, b, ra, rb, prefer_a):
        if x == y:
            identical += 1
            continue
        if not x.strip() or not y.strip():  # preference files need two non-empty completions
            empty += 1
            continue
        (c, sc), (r, sr) = ((x, sx), (y, sy)) if pa else ((y, sy), (x, sx))
        agree += 1.0 if sc > sr else 0.5 if sc == sr else 0.0
        rows.append({"prompt": p, "chosen": c, "rejected": r, "score_chosen": sc, "score_rejected": sr})
    if not rows:
        raise ValueError("label: every pair had two identical completions; raise the sampling temperature")
    order = random.Random(seed + 1).sample(range(len(rows)), len(rows))
    n_eval = int(round(eval_fraction * len(rows)))
    write_jsonl_atomic(out / "eval.jsonl", [rows[i] for i in order[:n_eval]])
    write_jsonl_atomic(out / "train.jsonl", [rows[i] for i in order[n_eval:]])
    return {"pairs": len(rows), "train_pairs": len(rows) - n_eval, "eval_pairs": n_eval,
            "dropped_identical": identical, "dropped_empty": empty, "judge": str(judge), "temperature": temperature,
            "agreement_with_judge_scores": agree / len(rows),
            "mean_score": (sum(ra) + sum(rb)) / (2 * len(ra))}
