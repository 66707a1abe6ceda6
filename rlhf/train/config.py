"""Training options shared by every stage (optimizer, schedule, batching, checkpoints, logging)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.config import ConfigError, opt


@dataclass(frozen=True)
class TrainConfig:
    lr: float = opt(2e-5, "peak learning rate of AdamW", gt=0)
    weight_decay: float = opt(0.0, "AdamW decoupled weight decay (not applied to biases and norms)", ge=0)
    adam_beta1: float = opt(0.9, "AdamW beta1", ge=0, lt=1)
    adam_beta2: float = opt(0.999, "AdamW beta2", ge=0, lt=1)
    adam_eps: float = opt(1e-8, "AdamW epsilon", gt=0)
    scheduler: Literal["linear", "cosine", "constant"] = opt("linear", "learning-rate decay after warm-up")
    warmup_steps: int = opt(0, "linear warm-up steps (overrides warmup_ratio when > 0)", ge=0)
    warmup_ratio: float = opt(0.0, "fraction of all steps spent warming up", ge=0, le=1)
    epochs: float = opt(1.0, "passes over the training data (ignored when max_steps is set)", gt=0)
    max_steps: int | None = opt(None, "optimizer steps to run; null = derived from epochs", gt=0)
    batch_size: int = opt(8, "examples per optimizer step, over all processes and accumulation steps", gt=0)
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step (per process)", gt=0)
    eval_batch_size: int = opt(16, "examples per forward pass during evaluation", gt=0)
    max_grad_norm: float | None = opt(1.0, "clip the global gradient norm to this value; null = no clipping", gt=0)
    seed: int = opt(0, "seed for weights of new heads, data order and sampling")
    mixed_precision: Literal["no", "bf16"] = opt("no",
                                                 "autocast the forward pass to bf16 (weights stay in model.dtype)")
    log_every: int = opt(1, "log metrics every N optimizer steps", gt=0)
    eval_every: int | None = opt(None, "evaluate every N steps (and always at the end); null = only at the end", gt=0)
    save_every: int | None = opt(
        None, "write checkpoint-<step>/ every N steps (and always at the end); null = only at the end", gt=0)
    save_total_limit: int | None = opt(
        2, "keep at most this many checkpoints (oldest removed first); null = keep all", gt=0)
    save_model_in_checkpoints: bool = opt(True, "also write a from_pretrained-loadable model in every checkpoint")
    resume_from: str = opt("auto", "'auto' = newest complete checkpoint in output_dir if any; "
                                   "'none' = refuse an unfinished output_dir; or a checkpoint folder")
    report_to: list[str] = opt(factory=list, help="extra trackers through accelerate: tensorboard, wandb")
    progress: bool = opt(True, "show a progress bar with the live loss")

    def validate(self) -> None:
        if self.batch_size % self.grad_accum:
            raise ConfigError("batch_size", f"must be divisible by train.grad_accum={self.grad_accum} "
                                            f"(got {self.batch_size})")
        for t in self.report_to:
            if t not in ("tensorboard", "wandb"):
                raise ConfigError("report_to", f"unknown tracker {t!r}; allowed: tensorboard, wandb")
