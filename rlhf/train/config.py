"""Training options shared by every stage (optimizer, schedule, batching, checkpoints, logging)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.config import ConfigError, opt

# The packages a tracker can run on (the first is the one to install), as accelerate imports them.
_TRACKER_PACKAGES: dict[str, tuple[str, ...]] = {"tensorboard": ("tensorboard", "tensorboardX"),
                                                  "wandb": ("wandb",)}


@dataclass(frozen=True)
class FSDPConfig:
    """Options of ``train.distributed: fsdp`` (torch FSDP2, rlhf/train/sharding.py)."""
    param_dtype: Literal["model", "bf16", "fp32"] = opt(
        "model", "dtype the gathered parameters are computed in (FSDP2 MixedPrecisionPolicy.param_dtype); "
                 "model = the model's own dtype, no cast; the sharded copy the optimizer steps stays in the "
                 "model's dtype")
    reduce_dtype: Literal["model", "bf16", "fp32"] = opt(
        "fp32", "dtype gradients are reduce-scattered in (MixedPrecisionPolicy.reduce_dtype); model = the "
                "model's own dtype")
    frozen: Literal["replicate", "shard"] = opt(
        "replicate", "frozen models (a separate reference, reward models): replicate = a whole copy per process; "
                     "shard = sharded like the trained model (DPO with reference=online, PPO), gathered for "
                     "evaluation and for the reference's log-prob pass")
    reshard_after_forward: bool = opt(
        True, "free each layer's gathered parameters after its forward and gather again for the backward "
              "(ZeRO-3); false keeps them until the backward (ZeRO-2-like: more memory, less communication)")


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
    mixed_precision: Literal["no", "bf16"] = opt("no", "autocast the forward pass to bf16 (weights stay in "
                                                       "model.dtype)")
    distributed: Literal["ddp", "fsdp"] = opt(
        "ddp", "how several processes share the model: ddp = a full copy per process, gradients all-reduced "
               "(accelerate); fsdp = torch FSDP2, parameters, gradients and optimizer state sharded over the "
               "processes, each decoder layer gathered for its own forward and backward, sharded "
               "checkpoints (docs/distributed.md)")
    fsdp: FSDPConfig = opt(factory=FSDPConfig, help="options of distributed: fsdp")
    log_every: int = opt(1, "log metrics every N optimizer steps", gt=0)
    eval_every: int | None = opt(None, "evaluate every N steps (and always at the end); null = only at the end",
                                 gt=0)
    save_every: int | None = opt(None, "write checkpoint-<step>/ every N steps (and always at the end); "
                                       "null = only at the end", gt=0)
    save_total_limit: int | None = opt(2, "keep at most this many checkpoints (oldest removed first); "
                                          "null = keep all", gt=0)
    save_model_in_checkpoints: bool = opt(True, "also write a from_pretrained-loadable model in every checkpoint")
    resume_from: str = opt("auto", "'auto' = newest complete checkpoint in output_dir if any; 'none' = refuse an "
                                   "unfinished output_dir; or a checkpoint folder")
    resume_changed_config: bool = opt(False, "resume even though settings outside "
                                             "rlhf.train.guards.SAFE_TO_CHANGE differ from the run's config.yaml "
                                             "(experts; recorded in resume_overrides.jsonl)")
    max_skipped_steps: int = opt(3, "optimizer updates in a row that may be skipped for a non-finite loss or "
                                    "gradient norm; one more stops the run (0 = stop at the first); a run whose last "
                                    "updates were skipped publishes no final/", ge=0)
    report_to: str | list[str] = opt(factory=list, help="trackers through accelerate: tensorboard, wandb, or a list of "
                               "both; TensorBoard writes to <output_dir>/<stage>/ (tensorboard --logdir <output_dir>)")
    progress: bool = opt(True, "show a progress bar with the live loss")

    def __post_init__(self) -> None:
        # One tracker may be named without a list (report_to: tensorboard); stored as a list
        # either way, at construction, so the config is never changed afterwards.
        if isinstance(self.report_to, str):
            object.__setattr__(self, "report_to", [self.report_to])

    def validate(self) -> None:
        if self.batch_size % self.grad_accum:
            raise ConfigError("batch_size", f"must be divisible by train.grad_accum={self.grad_accum} "
                                            f"(got {self.batch_size})")
        for t in self.report_to:
            if t not in _TRACKER_PACKAGES:
                raise ConfigError("report_to", f"unknown tracker {t!r}; allowed: tensorboard, wandb")
            # Checked here, before any work: a missing tracker used to surface as one warning at
            # the top of the log of a run that then trained without it.
            import importlib.util
            if not any(importlib.util.find_spec(m) is not None for m in _TRACKER_PACKAGES[t]):
                raise ConfigError("report_to", f"{t} is not installed: pip install {_TRACKER_PACKAGES[t][0]} "
                                               f"(or remove it from train.report_to)")
