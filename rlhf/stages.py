"""The training stages: one typed config class and one recipe each, by CLI name.

A table of names (no import of a recipe until :meth:`Stage.load`), read by the CLI
(rlhf/cli.py), the Python API (rlhf/api.py) and the docs generator (rlhf/docs.py), so that none
of those needs another of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["Stage", "STAGES"]


@dataclass(frozen=True)
class Stage:
    config: str  # "module:Class"
    run: str  # "module:function"
    summary: str

    def load(self, ref: str) -> Any:
        mod, name = ref.split(":")
        return getattr(importlib.import_module(mod), name)


# Training stages: one typed config class and one recipe each.
STAGES: dict[str, Stage] = {
    "sft": Stage("rlhf.recipes.sft:SFTConfig", "rlhf.recipes.sft:train",
                 "supervised (instruction) fine-tuning of a causal LM"),
    "rm": Stage("rlhf.recipes.rm:RMConfig", "rlhf.recipes.rm:train",
                "reward model from pairwise or ranked preferences (Bradley-Terry, margin)"),
    "dpo": Stage("rlhf.recipes.dpo:DPOConfig", "rlhf.recipes.dpo:train",
                 "offline preference optimisation: DPO, IPO, hinge, SimPO, ORPO, KTO"),
    "ppo": Stage("rlhf.recipes.ppo:PPOConfig", "rlhf.recipes.ppo:train",
                 "online RL against a reward source: PPO (GAE + critic), GRPO, Dr. GRPO, RLOO, REINFORCE++, ReMax"),
    "best-of-n": Stage("rlhf.recipes.best_of_n:BestOfNConfig", "rlhf.recipes.best_of_n:train",
                       "best-of-n sampling: keep the highest-reward of n completions per prompt; reward curve and KL"),
    "raft": Stage("rlhf.recipes.rejection:RAFTConfig", "rlhf.recipes.rejection:train",
                  "rejection-sampling fine-tuning (RAFT / Llama 2): sample K, keep the best, SFT; R rounds"),
    "rest": Stage("rlhf.recipes.rejection:ReSTConfig", "rlhf.recipes.rejection:train_rest",
                  "ReST: Grow (sample from the policy) then Improve (SFT above rising reward thresholds)"),
    "iterative-dpo": Stage("rlhf.recipes.iterative_dpo:IterativeDPOConfig", "rlhf.recipes.iterative_dpo:train",
                           "iterative / online DPO: sample pairs from the current policy, label, DPO; per round"),
    "constitutional": Stage("rlhf.recipes.constitutional:ConstitutionalConfig", "rlhf.recipes.constitutional:train",
                            "Constitutional AI (supervised): critique and revise against principles, "
                            "SFT on the revisions"),
    "hindsight": Stage("rlhf.recipes.hindsight:HindsightConfig", "rlhf.recipes.hindsight:train",
                       "hindsight instruction relabeling: sample, relabel with an instruction it satisfies, "
                       "SFT; rounds"),
}
