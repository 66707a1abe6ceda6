"""The PPO loop's pieces for the objectives that followed GRPO, kept out of the recipe:
DAPO's dynamic sampling over a rollout engine, DAPO's overlong reward shaping, and the teacher
of on-policy distillation. The math is in rlhf/losses/policy.py (gspo_loss, cispo_loss,
overlong_penalty) and rlhf/advantages.py (dynamic_sample, distillation_rewards); this module
only applies it to rollouts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from rlhf.advantages import DynamicSample, dynamic_sample
from rlhf.config import ConfigError
from rlhf.losses.policy import overlong_penalty
from rlhf.rewards import RewardSource

__all__ = ["ZeroReward", "shaped_scores", "concat_rollouts", "DynamicRollout", "dynamic_rollout", "Teacher"]


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


def concat_rollouts(tokenizer: Any, parts: Sequence[tuple[Any, Sequence[int]]], group_size: int) -> Any:
    """One :class:`rlhf.rollout.Rollout` of the rows ``rows`` of each ``(rollout, rows)`` in
    ``parts``, in that order, laid out afresh (prompt width and completion width of the result):
    each row keeps its exact prompt and completion token ids, its ``ended`` flag and its
    sampler log-probs / entropies where every part has them."""
    from rlhf.rollout import assemble_rollout

    prompts: list[Any] = []
    prompt_ids: list[list[int]] = []
    completions: list[list[int]] = []
    ended: list[bool] = []
    logps: list[torch.Tensor] = []
    entropy: list[torch.Tensor] = []
    keep_logps = all(ro.logps is not None and ro.entropy is not None for ro, _ in parts)
    device = parts[0][0].input_ids.device
    for ro, rows in parts:
        P = ro.prompt_width
        for i in rows:
            prompts.append(ro.prompts[i])
            prompt_ids.append(ro.input_ids[i, :P][ro.attention_mask[i, :P].bool()].tolist())
            comp = ro.completion_mask[i].bool()
            completions.append(ro.input_ids[i][comp].tolist())
            ended.append(bool(ro.ended[i]))
            if keep_logps:
                logps.append(ro.logps[i][comp])
                entropy.append(ro.entropy[i][comp])
    return assemble_rollout(tokenizer, prompts, prompt_ids, completions, ended, group_size, device,
                            logps=logps if keep_logps else None, entropy=entropy if keep_logps else None)


@dataclass(frozen=True)
class DynamicRollout:
    """A batch gathered by :func:`dynamic_rollout`: the rollout (``len(examples)`` groups of K
    consecutive rows), the examples (prompt rows) it came from, the raw and shaped scores (B,),
    ``informative`` (B,) bool per row (False on the degenerate groups that completed the batch
    when the retries ran out), and ``metrics`` (``dynamic/*``)."""

    rollout: Any
    examples: list[dict[str, Any]]
    raw_scores: torch.Tensor
    scores: torch.Tensor
    informative: torch.Tensor
    metrics: dict[str, float]


def dynamic_rollout(
    examples: list[dict[str, Any]],
    pool: Sequence[dict[str, Any]],
    sample: Callable[[list[dict[str, Any]]], Any],
    score: Callable[[Any, list[dict[str, Any]]], tuple[torch.Tensor, torch.Tensor]],
    tokenizer: Any,
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
    draws: list[tuple[Any, torch.Tensor]] = []  # (rollout, raw scores) of each call

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
    rollout = draws[0][0] if unchanged else concat_rollouts(tokenizer, parts, K)
    raw = torch.cat([draws[d][1][g * K:(g + 1) * K] for d, g, _ in out.groups])
    metrics = {"dynamic/retries": float(out.retries), "dynamic/sampled_groups": float(out.sampled),
               "dynamic/replaced_groups": float(out.replaced),
               "dynamic/degenerate_kept": float(out.informative.count(False))}
    return DynamicRollout(rollout=rollout, examples=[ex for _, _, ex in out.groups], raw_scores=raw,
                          scores=torch.cat(out.scores),
                          informative=torch.tensor(out.informative, device=raw.device).repeat_interleave(K),
                          metrics=metrics)


class Teacher:
    """On-policy distillation's teacher: a frozen causal LM with the policy's vocabulary whose
    per-token log-probs on the student's own samples give the reward
    (:func:`rlhf.advantages.distillation_rewards`). Loaded like the policy (``model`` config,
    another path), without LoRA, in eval mode."""

    def __init__(self, path: str, model_cfg: Any, tokenizer: Any):
        from rlhf.models.load import load_causal_lm, load_tokenizer
        from rlhf.models.vocab import vocabulary_difference

        cfg = replace(model_cfg, name_or_path=path, tokenizer=None, lora=replace(model_cfg.lora, enabled=False))
        diff = vocabulary_difference(tokenizer, load_tokenizer(cfg))
        if diff is not None:
            raise ConfigError("teacher", f"{path} has another vocabulary than the policy ({diff}): its log-probs "
                                         f"would be those of other tokens; distillation needs the same tokenizer")
        self.module = load_causal_lm(cfg, for_training=False)
        self.path = path

    def logps(self, rollout: Any, temperature: float, batch_size: int, engine: str, packed: bool) -> torch.Tensor:
        """(B, T) log-probs of the rollout's actions under the teacher, 0 off the completion."""
        from rlhf.rollout import rollout_logps

        out = rollout_logps(self.module, rollout, temperature, batch_size, engine=engine, packed=packed)
        assert isinstance(out, torch.Tensor)
        return out
