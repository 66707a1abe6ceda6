"""Preference labels from a judge: two responses per prompt, one judged better, written as a
standard preference file (prompt / chosen / rejected) that ``rlhf rm`` and ``rlhf dpo`` read.

The pairs come from a policy (two samples per prompt, :func:`sample_pairs`) or from a file
(``rlhf label --pairs``, rlhf/tools/label.py). The judge (rlhf/judge.py) is any reward source
(a reward model, a Python function, a sum) or a causal LM reading a rubric (AI feedback). With
``temperature`` τ > 0 the label is drawn like a noisy human's under the Bradley–Terry model,

    P(a ≻ b) = σ((r_a − r_b) / τ)         reward judge (scores r)
    P(a ≻ b) = σ(logit(p_judge) / τ)      LM judge (its letter probability p_judge; τ = 1: as is)

(τ → 0: always the judge's favourite; ties are a fair coin). This is how the built-in demo's
simulated annotators label pairs with the hidden gold reward, at a noise level where they agree
with the gold ordering about as often as human labelers agree with each other.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf.stats import preference_probability

__all__ = ["preference_probability", "bradley_terry_labels", "sample_pairs", "label_pairs", "split_rows",
           "label_stage"]


def bradley_terry_labels(scores_a: Sequence[float], scores_b: Sequence[float], temperature: float,
                         rng: random.Random) -> list[bool]:
    """True where a is preferred: drawn with P(a ≻ b) = σ((r_a − r_b)/τ); τ = 0 picks the higher
    score (a coin for ties). One ``rng.random()`` per pair, in order."""
    out = []
    for a, b in zip(scores_a, scores_b):
        p = preference_probability(a, b, temperature) if temperature > 0 else (0.5 if a == b else float(a > b))
        out.append(rng.random() < p)
    return out


def sample_pairs(policy: str, prompts: Sequence[Any], *, max_new_tokens: int = 32,
                 sampling_temperature: float = 1.0, batch_size: int = 64, seed: int = 0,
                 chat_template: str = "auto", engine: str = "auto") -> tuple[list[str], list[str]]:
    """Two sampled completions per prompt from ``policy`` (rlhf.rollout.sample, seeded):
    (completions_a, completions_b), aligned with ``prompts``."""
    from tqdm.auto import tqdm

    from rlhf.data.config import DataConfig
    from rlhf.data.records import PromptRecord
    from rlhf.data.tokenize import encode_prompt
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.rollout import SamplingConfig, sample

    texts = list(prompts)
    mcfg = ModelConfig(name_or_path=policy)
    tok = load_tokenizer(mcfg)
    model = load_causal_lm(mcfg, for_training=False)
    dcfg = DataConfig(chat_template=chat_template)  # type: ignore[arg-type]  # a str from the caller
    ids = [encode_prompt(PromptRecord(prompt=p), tok, dcfg)["prompt_input_ids"] for p in texts]
    gen = torch.Generator().manual_seed(seed)
    scfg = SamplingConfig(num_samples=2, max_new_tokens=max_new_tokens, temperature=sampling_temperature,
                          batch_size=batch_size, engine=engine)  # type: ignore[arg-type]  # a str from the caller
    completions: list[str] = []
    step = max(1, batch_size // 2)
    for s in tqdm(range(0, len(texts), step), desc="label: sampling pairs", unit="batch"):
        completions += sample(model, tok, texts[s:s + step], ids[s:s + step], scfg, generator=gen).completions
    return completions[0::2], completions[1::2]


def _nonempty(x: Any) -> bool:
    if isinstance(x, str):
        return bool(x.strip())
    return bool(x)


def label_pairs(prompts: Sequence[Any], completions_a: Sequence[Any], completions_b: Sequence[Any],
                judge: Any, *, temperature: float = 0.0, seed: int = 0, batch_size: int = 256,
                extra: Sequence[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Label every usable pair with ``judge`` (a :class:`~rlhf.judge.Judge` or a spec for
    :func:`~rlhf.judge.load_judge`). Returns (rows, stats).

    Each row: ``prompt, chosen, rejected, judge_probability`` (the judge's own probability that
    chosen is better: an LM judge's letter probability, a reward judge's σ(r_c − r_r)), plus
    ``score_chosen, score_rejected`` for a reward judge and ``position_consistent`` for an LM
    judge asked in both orders, plus the keys of ``extra[i]`` (e.g. the input row's other
    columns). Pairs with identical or empty responses are dropped (a comparison of a text with
    itself says nothing; a preference file needs two responses), as are pairs the judge gave no
    usable answer on; each is counted.
    One ``random.Random(seed)`` draw per input pair, in order, whether or not it is kept, so a
    pair's label does not depend on which other pairs were dropped.
    """
    from rlhf.judge import RewardJudge, load_judge

    if temperature < 0:
        raise ValueError(f"label: temperature must be >= 0 (got {temperature})")
    judge = load_judge(judge)
    n = len(prompts)
    if not (n == len(completions_a) == len(completions_b)):
        raise ValueError(f"label: {n} prompts, {len(completions_a)} completions_a, {len(completions_b)} "
                         "completions_b; expected the same number of each")
    identical = [completions_a[i] == completions_b[i] for i in range(n)]
    empty = [not identical[i] and not (_nonempty(completions_a[i]) and _nonempty(completions_b[i]))
             for i in range(n)]
    todo = [i for i in range(n) if not identical[i] and not empty[i]]
    if not todo:
        raise ValueError(f"label: none of the {n} pairs has two different, non-empty responses "
                         "(sampling: raise the sampling temperature)")
    # Judge the candidate pairs in chunks. logit[i]: the judge's preference for a in logits
    # (reward judge: r_a - r_b, whose σ(·/τ) is Bradley–Terry; LM judge: logit(p_judge)).
    logit: dict[int, float] = {}
    scores: dict[int, tuple[float, float]] = {}
    consistent: dict[int, bool] = {}
    unusable: dict[str, int] = {}
    is_reward = isinstance(judge, RewardJudge)
    for k in range(0, len(todo), batch_size):
        idx = todo[k:k + batch_size]
        args = ([prompts[i] for i in idx], [completions_a[i] for i in idx], [completions_b[i] for i in idx])
        if is_reward:
            ra, rb = judge.scores(*args)
            for i, x, y in zip(idx, ra, rb):
                scores[i] = (x, y)
                logit[i] = x - y
            continue
        j = judge.judge_pairs(*args, allow_unusable=True)  # counted here, over all chunks
        for pos, i in enumerate(idx):
            if not bool(j.usable[pos]):
                r = j.reasons[pos] or "unusable"
                unusable[r] = unusable.get(r, 0) + 1
                continue
            p = float(j.prob[pos])
            logit[i] = math.log(p) - math.log1p(-p) if 0 < p < 1 else (math.inf if p >= 1 else -math.inf)
            if j.consistent is not None:
                consistent[i] = bool(j.consistent[pos])
    if not logit:
        raise ValueError(f"label: the judge {judge.name} gave no usable answer on any of the {len(todo)} "
                         f"pairs ({unusable}); see rlhf/judge.py (min_mass, letters, template)")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    agree = 0.0
    for i in range(n):
        u = rng.random()  # one draw per input pair, in order
        if i not in logit:
            continue
        z = logit[i]
        p_a = preference_probability(z, 0.0, temperature) if temperature > 0 and math.isfinite(z) \
            else (0.5 if z == 0 else float(z > 0))
        prefer_a = u < p_a
        a, b = completions_a[i], completions_b[i]
        # The judge's own probability that chosen is better (τ = 1: reward judge σ(r_c − r_r)).
        p_judge = preference_probability(z, 0.0, 1.0) if math.isfinite(z) else float(z > 0)
        row = {"prompt": prompts[i], "chosen": a if prefer_a else b, "rejected": b if prefer_a else a,
               "judge_probability": p_judge if prefer_a else 1.0 - p_judge}
        if i in scores:
            sa, sb = scores[i]
            row["score_chosen"], row["score_rejected"] = (sa, sb) if prefer_a else (sb, sa)
        if i in consistent:
            row["position_consistent"] = consistent[i]
        if extra is not None:
            row = {**{k: v for k, v in extra[i].items() if k not in row}, **row}
        z_chosen = z if prefer_a else -z
        agree += 1.0 if z_chosen > 0 else 0.5 if z_chosen == 0 else 0.0
        rows.append(row)
    stats: dict[str, Any] = {
        "pairs": len(rows), "input_pairs": n, "dropped_identical": sum(identical), "dropped_empty": sum(empty),
        "dropped_unusable": unusable, "judge": judge.name, "temperature": temperature,
        "agreement_with_judge": agree / len(rows)}
    if is_reward:
        # (the key the label stage has always written)
        stats["agreement_with_judge_scores"] = stats["agreement_with_judge"]
        stats["mean_score"] = sum(x + y for x, y in scores.values()) / (2 * len(scores))
    if consistent:
        stats["position_consistency"] = sum(consistent[i] for i in logit if i in consistent) / len(consistent)
    return rows, stats


def split_rows(rows: list[dict[str, Any]], eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): ``eval_fraction`` of the rows, shuffled with ``seed + 1``, held out."""
    order = random.Random(seed + 1).sample(range(len(rows)), len(rows))
    n_eval = int(round(eval_fraction * len(rows)))
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def label_stage(output_dir: str | Path, *, policy: str, prompts: str, judge: Any,
                temperature: float = 0.0, eval_fraction: float = 0.1, max_new_tokens: int = 32,
                sampling_temperature: float = 1.0, batch_size: int = 64, seed: int = 0,
                max_prompts: int | None = None, chat_template: str = "auto") -> dict[str, Any]:
    """Sample two completions per prompt from ``policy``, label each pair with ``judge`` (a
    reward-source spec, an LM-judge spec ``{type: lm, model: ..., rubric: ...}`` or a
    :class:`~rlhf.judge.Judge`; see :func:`rlhf.judge.load_judge`), and write ``train.jsonl`` /
    ``eval.jsonl`` (prompt, chosen, rejected, judge_probability, and score_chosen /
    score_rejected for a reward judge) into ``output_dir``. Dropped pairs: see
    :func:`label_pairs`. Returns the summary."""
    from rlhf.data.load import load_prompts
    from rlhf.judge import load_judge
    from rlhf.train.run import write_jsonl_atomic

    if temperature < 0:
        raise ValueError(f"label: temperature must be >= 0 (got {temperature})")
    out = Path(output_dir)
    texts = load_prompts(prompts, max_prompts)
    the_judge = load_judge(judge)  # before sampling: a bad judge spec fails fast
    a, b = sample_pairs(policy, texts, max_new_tokens=max_new_tokens, sampling_temperature=sampling_temperature,
                        batch_size=batch_size, seed=seed, chat_template=chat_template)
    rows, stats = label_pairs(texts, a, b, the_judge, temperature=temperature, seed=seed)
    train, held_out = split_rows(rows, eval_fraction, seed)
    write_jsonl_atomic(out / "eval.jsonl", held_out)
    write_jsonl_atomic(out / "train.jsonl", train)
    return {**stats, "judge": judge if isinstance(judge, (str, dict)) else the_judge.name,
            "train_pairs": len(train), "eval_pairs": len(held_out)}
