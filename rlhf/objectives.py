"""The PPO loop's pieces for the objectives that followed GRPO, kept out of the recipe: DAPO's
dynamic sampling over a rollout engine and DAPO's overlong reward shaping. (On-policy
distillation's teacher is an environment-side reward: rlhf/envs/teacher.py.) The math is in
rlhf/losses/policy.py (gspo_loss, cispo_loss, overlong_penalty) and rlhf/advantages.py
(dynamic_sample, distillation_rewards); this module only applies it to rollouts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.advantages import DynamicSample, dynamic_sample
from rlhf.losses.policy import overlong_penalty
from rlhf.rewards import RewardSource
from rlhf.rollout.episode import Rollout

__all__ = ["ZeroReward", "shaped_scores", "concat_rollouts", "DynamicRollout", "dynamic_rollout"]


class ZeroReward(RewardSource):
    """Every completion scores 0: the reward source of a run whose only reward is the teacher's
    (on-policy distillation with ``reward`` left empty)."""

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: list[Any]) -> torch.Tensor:
        return torch.zeros(len(completions))


def shaped_scores(raw: torch.Tensor, ended: torch.Tensor, lengths: torch.Tensor, *, missing_eos_penalty: float | None,
                  overlong_cache: int | None, overlong_coef: float, max_len: int) -> torch.Tensor:
    """The score the advantage sees: the reward source's, minus the EOS trick's penalty for a
    completion cut at the length limit, plus ``overlong_coef`` times DAPO's overlong penalty
    (0 up to ``max_len - overlong_cache`` tokens, linear to -1 at ``max_len``)."""
    scores = raw.clone()
    if missing_eos_penalty is not None:
        scores = torch.where(ended.to(scores.device), scores, scores - missing_eos_penalty)
    if overlong_cache is not None:
        scores = scores + overlong_coef * overlong_penalty(lengths.to(scores.device), max_len, overlong_cache)
    return scores


def concat_rollouts(parts: Sequence[tuple[Rollout, Sequence[int]]], pad_id: int, group_size: int) -> Rollout:
    """One :class:`rlhf.rollout.Rollout` of the rows ``rows`` of each ``(rollout, rows)`` in
    ``parts``, in that order. Each part's (B, T) tensors are padded to the common layout (prompt
    region on the left to the widest prompt, completion region on the right to the widest), so
    every row keeps its exact token ids, masks (the loss mask's holes included), sampler
    log-probs and policy versions; positions are recounted over the real tokens as every engine
    lays them out, and the width is the widest picked row's (the layout
    :func:`rlhf.rollout.assemble_rollout` gives the same rows). A field that some part lacks
    (None) is None in the result."""
    P = max(ro.prompt_width for ro, _ in parts)
    L = max(ro.input_ids.shape[1] - ro.prompt_width for ro, _ in parts)

    def cat(get: Callable[[Rollout], torch.Tensor | None], fill: float) -> torch.Tensor | None:
        pieces = []
        for ro, rows in parts:
            x = get(ro)
            if x is None:
                return None
            idx = torch.as_tensor(list(rows), dtype=torch.long, device=x.device)
            left, right = P - ro.prompt_width, L - (x.shape[1] - ro.prompt_width)
            pieces.append(torch.nn.functional.pad(x[idx], (left, right), value=fill))
        return torch.cat(pieces)

    input_ids, attention = cat(lambda r: r.input_ids, pad_id), cat(lambda r: r.attention_mask, 0)
    completion = cat(lambda r: r.completion_mask, 0)
    assert input_ids is not None and attention is not None and completion is not None
    # The widest picked row sets the width: columns that only the rows left out used are cut.
    used = attention.bool().any(0).nonzero().flatten()
    width = max(int(used[-1]) + 1 if len(used) else 0, P + 1)

    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[:, :width]

    attention = attention[:, :width]
    return Rollout(
        input_ids=input_ids[:, :width], attention_mask=attention,
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0), completion_mask=completion[:, :width],
        ended=torch.cat([ro.ended[list(rows)] for ro, rows in parts]), prompt_width=P,
        prompts=[ro.prompts[i] for ro, rows in parts for i in rows],
        completions=[ro.completions[i] for ro, rows in parts for i in rows], group_size=group_size,
        logps=cut(cat(lambda r: r.logps, 0.0)), entropy=cut(cat(lambda r: r.entropy, 0.0)),
        policy_mask=(cut(cat(lambda r: r.loss_mask, 0)) if any(ro.policy_mask is not None for ro, _ in parts)
                     else None),
        policy_version=cut(cat(lambda r: r.policy_version, -1)))


@dataclass(frozen=True)
class DynamicRollout:
    """A batch gathered by :func:`dynamic_rollout`: the rollout (``len(examples)`` groups of K
    consecutive rows), the examples (prompt rows) it came from, the raw and shaped scores (B,),
    ``informative`` (B,) bool per row (False on the degenerate groups that completed the batch
    when the retries ran out), and ``metrics`` (``dynamic/*``)."""

    rollout: Rollout
    examples: list[dict[str, Any]]
    raw_scores: torch.Tensor
    scores: torch.Tensor
    informative: torch.Tensor
    metrics: dict[str, float]


def dynamic_rollout(
    examples: list[dict[str, Any]],
    pool: Sequence[dict[str, Any]],
    sample: Callable[[list[dict[str, Any]]], Rollout],
    score: Callable[[Rollout, list[dict[str, Any]]], tuple[torch.Tensor, torch.Tensor]],
    pad_id: int,
    group_size: int,
    max_retries: int,
    seed: int,
) -> DynamicRollout:
    """DAPO's dynamic sampling over the PPO loop's engine: the step's ``examples`` are sampled
    and scored, then prompts drawn at random from ``pool`` (a ``random.Random(seed)``: the same
    draws on a resumed run) replace the groups whose scores are all equal, at most
    ``max_retries`` times (rlhf.advantages.dynamic_sample). ``sample(examples) -> Rollout`` with
    K rows per example; ``score(rollout, examples) -> (raw, shaped)`` scores (B,)."""
    rng = random.Random(seed)
    draws: list[tuple[Rollout, torch.Tensor]] = []  # (rollout, raw scores) of each call

    def sample_groups(n: int) -> tuple[list[tuple[int, int, dict[str, Any]]], torch.Tensor]:
        batch = examples if not draws else [pool[rng.randrange(len(pool))] for _ in range(n)]
        ro = sample(batch)
        raw, shaped = score(ro, batch)
        draws.append((ro, raw))
        return [(len(draws) - 1, g, ex) for g, ex in enumerate(batch)], shaped

    out: DynamicSample[tuple[int, int, dict[str, Any]]] = dynamic_sample(
        sample_groups, len(examples), group_size, max_retries)
    K = group_size
    parts = [(draws[d][0], list(range(g * K, (g + 1) * K))) for d, g, _ in out.groups]
    unchanged = out.draws == 1 and [g for _, g, _ in out.groups] == list(range(len(examples)))
    rollout = draws[0][0] if unchanged else concat_rollouts(parts, pad_id, K)
    raw = torch.cat([draws[d][1][g * K:(g + 1) * K] for d, g, _ in out.groups])
    metrics = {"dynamic/retries": float(out.retries), "dynamic/sampled_groups": float(out.sampled),
               "dynamic/replaced_groups": float(out.replaced),
               "dynamic/degenerate_kept": float(out.informative.count(False))}
    return DynamicRollout(rollout=rollout, examples=[ex for _, _, ex in out.groups], raw_scores=raw,
                          scores=torch.cat(out.scores),
                          informative=torch.tensor(out.informative, device=raw.device).repeat_interleave(K),
                          metrics=metrics)
