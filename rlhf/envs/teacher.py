"""On-policy distillation's teacher: the environment side of a per-token reward.

A reward source (rlhf/envs/single_turn.py) grades a finished completion's text with one number. A
teacher grades every token the student sampled: it reads the episode's exact token ids (never
re-tokenized text: the same tokenizer is required) and answers, per action,
``log π_teacher(y_t | y_<t)``; with the student's own log-probs that is the reward
``log π_teacher - log π_student`` of :func:`rlhf.advantages.distillation_rewards` (a reverse-KL
reward: its expectation over the student's samples is -KL(π_student‖π_teacher)). The PPO loop
adds it where a KL penalty in the reward goes (per token; summed per completion for the group
estimators).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from rlhf.advantages import distillation_rewards
from rlhf.config import ConfigError
from rlhf.rollout.episode import Rollout

__all__ = ["Teacher"]


class Teacher:
    """A frozen causal LM with the policy's vocabulary, loaded like the policy (the ``model``
    config with another path; no LoRA, eval mode). ``coef`` scales its reward."""

    def __init__(self, path: str, model_cfg: Any, tokenizer: Any, coef: float = 1.0):
        from rlhf.models.load import load_causal_lm, load_tokenizer
        from rlhf.models.vocab import vocabulary_difference

        cfg = replace(model_cfg, name_or_path=path, tokenizer=None, lora=replace(model_cfg.lora, enabled=False))
        diff = vocabulary_difference(tokenizer, load_tokenizer(cfg, what="teacher"))
        if diff is not None:
            raise ConfigError("teacher", f"{path} has another vocabulary than the policy (policy vs teacher: "
                                         f"{diff}): its log-probs "
                                         f"would be those of other tokens; distillation needs the same tokenizer")
        self.module: nn.Module = load_causal_lm(cfg, for_training=False, what="teacher")
        self.path = path
        self.coef = coef

    def modules(self) -> list[nn.Module]:
        """The frozen model (for placement and offloading, as a reward model's)."""
        return [self.module]

    @torch.no_grad()
    def logps(self, rollout: Rollout, temperature: float, batch_size: int, engine: str = "auto",
              packed: bool = False) -> torch.Tensor:
        """(B, T) log-probs of the rollout's actions under the teacher at ``temperature`` (the
        sampling temperature, as every log-prob of the loop), 0 off the completion."""
        from rlhf.rollout.scoring import rollout_logps

        out = rollout_logps(self.module, rollout, temperature, batch_size, engine=engine, packed=packed)
        assert isinstance(out, torch.Tensor)
        return out

    def token_rewards(self, student_logps: torch.Tensor, teacher_logps: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ``coef · (log π_teacher - log π_student)`` on the actions, 0 elsewhere."""
        return self.coef * distillation_rewards(student_logps, teacher_logps, mask)
