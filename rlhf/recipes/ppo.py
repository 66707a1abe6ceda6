"""Online RLHF: PPO with a critic, and the critic-free estimators (GRPO, Dr. GRPO, RLOO,
REINFORCE++, ReMax), in one loop.

The RL framing (docs/ppo.md): a prompt is the state, each sampled token an action, the episode
ends at EOS or the length limit, and the reward arrives at the end:

    r_t = -β·KL_t                    on every completion token (when the KL is in the reward)
    r_T = r_T + score(prompt, completion)    on the last one

Named objects in the loop: the **policy** π (trained), the frozen **reference** π_ref (the
policy's starting point; with LoRA, the policy with adapters disabled), the **reward** source
(a reward model, a Python function or a combination: rlhf/rewards.py) and, for
``advantage=gae``, the **value model** V (the critic, trained with the policy).

Each training step is one iteration of:

    1. rollout      sample K completions per prompt with the rollout engine (rlhf/engines:
                    the built-in sampler of rlhf/rollout.py, or vLLM synced after each update)
    2. score        the reward source scores each completion; the EOS trick penalises
                    completions cut at the length limit
    3. evaluate     log-probs of the sampled tokens under π (the "old" policy) and π_ref, and
                    V(s_t), at the sampling temperature, without gradient
    4. rewards      per-token KL (k1/k2/k3) and the per-token rewards above
    5. advantages   one pure function chosen by name (rlhf/advantages.py)
    6. update       ``ppo.epochs`` passes over the batch in ``ppo.num_minibatches`` minibatches,
                    each one optimizer step on the clipped surrogate (+ clipped value loss,
                    + KL in the loss for GRPO, + entropy bonus), exact gradient accumulation
    7. β            the KL controller (fixed, or Ziegler et al.'s adaptive one) sees the KL

The math lives in rlhf/losses/policy.py, rlhf/advantages.py, rlhf/kl.py and rlhf/masking.py;
this file only wires it. Run it with ``rlhf ppo --recipe tiny [key=value ...]``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rlhf.advantages import CRITIC_ESTIMATORS, compute_advantages, informative_groups, token_rewards
from rlhf.config import ConfigError, opt
from rlhf.data.collate import PackedLayout
from rlhf.data.config import DataConfig
from rlhf.data.errors import ENCODING, DataError
from rlhf.data.load import load_records
from rlhf.data.tokenize import encode_prompt
from rlhf.engines import forward_engine, is_builtin, rollout_engine
from rlhf.kl import AdaptiveKLController, FixedKLController, kl_estimate, kl_k1
from rlhf.logprobs import entropy_from_logits, shifted_token_logps
from rlhf.losses.policy import entropy_bonus, kl_loss, ppo_clip_loss, truncated_importance_weights, value_loss
from rlhf.masking import count_units, masked_mean, masked_sum, masked_var, masked_whiten
from rlhf.models.config import ModelConfig
from rlhf.models.load import (
    count_parameters,
    load_causal_lm,
    load_reference,
    load_scalar_model,
    load_tokenizer,
    position_limit,
    score_tokens,
)
from rlhf.models.packing import use_packed
from rlhf.models.vocab import reward_model_tokenizers, vocabulary_difference
from rlhf.rewards import call_reward, load_reward_source, row_columns
from rlhf.rollout import Rollout, SamplingConfig, rollout_logps, rollout_values, shift_values
from rlhf.train.config import TrainConfig
from rlhf.train.trainer import Trainer

__all__ = ["shared_value_head", "visiting", "PPOConfig", "KLConfig", "PolicyLossConfig", "PolicyAndValue", "train"]

AdvantageName = Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "remax"]
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")  # need K >= 2 samples per prompt


@dataclass(frozen=True)
class KLConfig:
    beta: float = opt(0.05, "weight β of the KL penalty to the reference (the initial β when "
                            "target is set); 0 = no penalty", ge=0)
    estimator: Literal["auto", "k1", "k2", "k3"] = opt(
        "auto", "per-token KL estimator (Schulman 2020); auto = k1 in the reward (PPO, "
                "InstructGPT), k3 in the loss (GRPO)")
    placement: Literal["auto", "reward", "loss"] = opt(
        "auto", "reward: r_t -= β·KL_t (PPO); loss: β·KL added to the policy loss (GRPO); "
                "auto = loss for grpo/dr_grpo, reward otherwise")
    target: float | None = opt(None, "adaptive β (Ziegler et al. 2019): the KL per completion "
                                     "(nats) to steer towards; null = fixed β", gt=0)
    horizon: float = opt(10000.0, "adaptive β: horizon in completions (larger = slower changes)", gt=0)

    def resolved(self, advantage: str) -> tuple[str, str]:
        """(placement, estimator) with the autos filled in."""
        placement = self.placement
        if placement == "auto":
            placement = "loss" if advantage in ("grpo", "dr_grpo") else "reward"
        estimator = self.estimator
        if estimator == "auto":
            estimator = "k3" if placement == "loss" else "k1"
        return placement, estimator


@dataclass(frozen=True)
class PolicyLossConfig:
    epochs: int = opt(2, "passes over each rollout batch (PPO epochs)", gt=0)
    num_minibatches: int = opt(1, "optimizer steps per epoch: the rollout batch is cut into this "
                                  "many minibatches", gt=0)
    clip: float = opt(0.2, "ε of the clipped surrogate: the ratio is clipped to [1-ε, 1+ε_high]", gt=0, lt=1)
    clip_high: float | None = opt(None, "ε_high (DAPO's clip-higher); null = clip", gt=0)
    vf_coef: float = opt(0.1, "weight of the value loss (advantage=gae)", ge=0)
    vf_clip: float | None = opt(0.2, "clip the value update to ±this around the rollout value; "
                                     "null = unclipped squared error", gt=0)
    gamma: float = opt(1.0, "discount γ (GAE, REINFORCE++)", ge=0, le=1)
    lam: float = opt(0.95, "GAE λ", ge=0, le=1)
    whiten_rewards: bool = opt(False, "scale the per-token rewards of a batch to unit variance "
                                      "(not shifted) before GAE")
    whiten_advantages: bool = opt(True, "normalise GAE advantages over the batch to mean 0, std 1 "
                                        "(the group estimators normalise their own way)")
    entropy_coef: float = opt(0.0, "weight of the entropy bonus (0 = off)", ge=0)
    target_kl: float | None = opt(None, "stop a step's updates early when the approximate KL "
                                        "between the old and the updated policy passes this", gt=0)
    aggregation: Literal["auto", "token_mean", "sequence_mean", "constant"] = opt(
        "auto", "how per-token losses are reduced: token_mean (DAPO), sequence_mean (GRPO paper), "
                "constant (Dr. GRPO: sum / max_new_tokens); auto = constant for dr_grpo, else token_mean")
    missing_eos_penalty: float | None = opt(None, "the EOS trick: subtract this from the score of a "
                                                  "completion cut at max_new_tokens; null = off", ge=0)
    drop_uninformative_groups: bool = opt(False, "leave out of the loss the prompts whose K samples "
                                                 "all scored the same (DAPO dynamic sampling, simplified)")
    old_logps: Literal["auto", "sampler", "forward"] = opt(
        "auto", "where π_old's log-probs (the ratio's denominator, the KL) come from: sampler = the "
                "logits the sampler drew each token from (no extra forward pass; equal to a forward "
                "pass up to float rounding, ~1e-6 in fp32); forward = a separate no-grad pass over the "
                "rollout; auto = sampler in fp32 with the built-in engine, forward under bf16 (where the "
                "KV-cache and the full forward round differently) or with another engine (vllm)")
    tis: Literal["auto", "off", "token", "sequence"] = opt(
        "auto", "truncated importance sampling for the sampler/trainer mismatch (the tokens come from the "
                "engine, π_old from the trainer's forward): weights π_old/π_sampler per token or per "
                "completion (rlhf.losses.policy.truncated_importance_weights); auto = token when "
                "sampling.engine=vllm and π_old comes from the forward, else off")
    tis_cap: float = opt(2.0, "the importance weights' cap C (Yao et al. 2025 use 2)", gt=0)
    tis_mode: Literal["truncate", "mask"] = opt(
        "truncate", "truncate: w = min(ρ, C); mask: w = ρ, or 0 where ρ > C (drop the outliers)")
    packed: bool = opt(True, "run the update's forward and the no-grad passes over the rollout on packed "
                             "rows (sequences back to back, no padding after EOS): the same numbers up to "
                             "float rounding, less work when completion lengths differ; only where a "
                             "probe of the model class shows packing is exact (else padded rows, said "
                             "once: rlhf/models/packing.py)")


@dataclass(frozen=True)
class PPOConfig:
    output_dir: str = opt("runs/ppo", "folder for config.yaml, metrics.jsonl (with sample tables), "
                                      "checkpoints, final/ (the policy) and summary.json")
    model: ModelConfig = opt(factory=ModelConfig, help="the policy to train (usually the SFT model); "
                                                       "its initial weights are the reference")
    data: DataConfig = opt(factory=DataConfig, help="prompts: any file with a prompt column (or "
                                                    "preference/SFT data, whose prompts are used)")
    train: TrainConfig = opt(factory=TrainConfig, help="optimisation; batch_size = prompts per step, "
                                                       "max_steps / epochs count rollout steps")
    reward: str = opt("", "reward source: a reward-model folder, package.module:function, or a "
                          ".yaml/.json spec file (sums, safety gating): see docs/reward-models.md")
    advantage: AdvantageName = opt("gae", "gae (PPO with a critic), grpo, dr_grpo, rloo, "
                                          "reinforce_pp (REINFORCE++), remax")
    track: dict[str, str] = opt(factory=dict, help="extra reward sources scored on every rollout and "
                                                   "logged as track/<name> but not optimised, e.g. "
                                                   "{gold: my_pkg.gold:reward} to watch over-optimisation")
    value_model: str = opt("auto", "the critic (advantage=gae): 'reward' (a copy of the reward model; "
                                   "the default when the reward is one), 'policy' (a copy of the "
                                   "policy's trunk, new head), 'shared' (a value head on the policy's "
                                   "own trunk: no second model), or a checkpoint folder")
    sampling: SamplingConfig = opt(factory=SamplingConfig, help="rollout sampling")
    kl: KLConfig = opt(factory=KLConfig, help="KL penalty to the reference")
    ppo: PolicyLossConfig = opt(factory=PolicyLossConfig, help="the policy update")
    offload: bool = opt(False, "keep the frozen models (reference, reward models, tracked ones) in CPU "
                               "memory and move each to the accelerator only for its pass: less "
                               "accelerator memory, more transfer time; no effect on a CPU-only run")
    sample_every: int = opt(10, "log a table of sample prompts and completions every N steps", gt=0)
    num_log_samples: int = opt(4, "rows in that table", ge=0)

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train", "is required: a file or dataset with a prompt column")
        if not self.reward:
            raise ConfigError("reward", "is required: a reward-model folder, package.module:function "
                                        "or a .yaml/.json reward spec")
        if self.data.packing:
            raise ConfigError("data.packing", "does not apply to prompts (got true)")
        K = self.sampling.num_samples
        if self.advantage in GROUP_ESTIMATORS and K < 2:
            raise ConfigError("sampling.num_samples", f"must be >= 2 for advantage={self.advantage}: "
                                                      f"the baseline comes from the other samples of "
                                                      f"the same prompt (got {K})")
        if self.ppo.drop_uninformative_groups and K < 2:
            raise ConfigError("ppo.drop_uninformative_groups", f"needs sampling.num_samples >= 2 (got {K})")
        if self.ppo.tis in ("token", "sequence") and self.ppo.old_logps == "sampler":
            raise ConfigError("ppo.tis", f"{self.ppo.tis} needs π_old from the trainer's forward, but "
                                         f"ppo.old_logps=sampler takes it from the sampler (every weight "
                                         f"would be 1); set ppo.old_logps=forward or auto, or ppo.tis=off")
        rows = self.train.batch_size * K
        split = self.ppo.num_minibatches * self.train.grad_accum
        if rows % split:
            raise ConfigError("ppo.num_minibatches", f"train.batch_size x sampling.num_samples = {rows} "
                                                     f"completions per step must divide into "
                                                     f"num_minibatches x train.grad_accum = {split} "
                                                     f"equal micro-batches")


# --------------------------------------------------------------------------- models


class PolicyAndValue(nn.Module):
    """The trained modules of the loop in one container, so one optimizer, one checkpoint and
    one distributed wrapper cover both: ``policy`` (a causal LM) and the critic, either
    ``value`` (a separate scalar model) or ``value_head`` (a linear head on the policy's own
    final hidden states: ``value_model: shared``), or neither (the critic-free estimators).
    ``forward`` returns logits (B, T, V) and the critic's values aligned with actions (B, T)
    (rlhf.rollout.shift_values) or None."""

    def __init__(self, policy: nn.Module, value: nn.Module | None = None, value_head: nn.Module | None = None,
                 packed: bool = False):
        super().__init__()
        if value is not None and value_head is not None:
            raise ValueError("a separate value model or a shared value head, not both")
        self.policy = policy
        self.value = value
        self.value_head = value_head
        self.packed = packed

    def forward(self, input_ids, attention_mask, position_ids):
        """With ``packed`` the models run on the batch's packed layout (rlhf.data.collate.
        PackedLayout: sequences back to back, no padding) and the outputs are unpacked to the
        padded (B, T) layout (logits 0 on padding; values are read at t - 1, see shift_values):
        the same numbers up to float rounding."""
        layout = None
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if use_packed(self.packed, self.policy, self.value):
            layout = PackedLayout(attention_mask)
            inputs = {"input_ids": layout.pack_ids(input_ids), "attention_mask": None,
                      "position_ids": layout.position_ids}

        def unpacked(x: torch.Tensor) -> torch.Tensor:
            return x if layout is None else layout.unpack(x)

        shared = self.value_head is not None
        out = self.policy(**inputs, use_cache=False, output_hidden_states=shared)
        values = None
        if self.value_head is not None:  # the last entry of hidden_states is the final (normed) one the LM head reads
            values = shift_values(unpacked(self.value_head(out.hidden_states[-1]).squeeze(-1).float()))
        elif self.value is not None:
            values = shift_values(unpacked(score_tokens(self.value, **inputs).float()))
        return unpacked(out.logits), values

    @torch.no_grad()
    def rollout_values(self, rollout: Rollout, batch_size: int) -> torch.Tensor | None:
        """The critic's V(s_t) for every action of a rollout (B, T), without gradient."""
        if self.value is not None:
            return rollout_values(self.value, rollout, batch_size, packed=self.packed)
        if self.value_head is None:
            return None
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self(**rollout.model_inputs(slice(s, s + batch_size)))[1]
                              for s in range(0, len(rollout), batch_size)])
        finally:
            self.train(was_training)


def shared_value_head(policy: nn.Module) -> nn.Linear:
    """A scalar head for the policy's final hidden states, initialised as the reward model's
    (N(0, 1/sqrt(d_model + 1)), bias 0), in the policy's dtype and on its device."""
    from rlhf.models.load import unwrap_model

    p = next(policy.parameters())
    d = unwrap_model(policy).config.hidden_size
    head = nn.Linear(d, 1)
    nn.init.normal_(head.weight, std=1.0 / (d + 1) ** 0.5)
    nn.init.zeros_(head.bias)
    return head.to(device=p.device, dtype=p.dtype)


@contextlib.contextmanager
def visiting(modules: list[nn.Module], device: torch.device, home: torch.device):
    """Model offloading: ``modules`` move to ``device`` for the block and back ``home`` after
    it (even if it raises). Nothing moves when the two are the same device."""
    if device == home or not modules:
        yield
        return
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to(home)


def _value_source(cfg: PPOConfig) -> str:
    if cfg.value_model == "shared":
        return "shared"
    if cfg.value_model not in ("auto", "reward"):
        return "policy" if cfg.value_model == "policy" else cfg.value_model
    from rlhf.models.load import is_hub_id

    reward_is_model = Path(cfg.reward).is_dir() or (":" not in cfg.reward and is_hub_id(cfg.reward))
    if cfg.value_model == "reward" and not reward_is_model:
        raise ConfigError("value_model", f"'reward' needs the reward to be a reward-model folder "
                                         f"(got reward={cfg.reward!r}); use 'policy' or a folder")
    return cfg.reward if reward_is_model else "policy"


def _check_tokenizers(cfg: PPOConfig, tokenizer: Any, sources: list[Any], trainer: Trainer) -> None:
    """Reward models with another vocabulary than the policy score text (rlhf/models/vocab.py):
    say so once each. A critic that would start from one is refused: it would read the policy's
    token ids as other tokens (an IndexError, or silently wrong values)."""
    for name, rm_tok in {n: t for src in sources for n, t in reward_model_tokenizers(src)}.items():
        diff = vocabulary_difference(tokenizer, rm_tok)
        if diff is not None:
            trainer.print(f"[ppo] reward model {name} has another vocabulary than the policy ({diff}): it scores "
                          f"the decoded completion, re-encoded with its own tokenizer and chat template")
    if cfg.advantage not in CRITIC_ESTIMATORS or _value_source(cfg) in ("shared", "policy"):
        return
    src = _value_source(cfg)
    diff = vocabulary_difference(tokenizer, load_tokenizer(replace(cfg.model, name_or_path=src, tokenizer=None)))
    if diff is not None:
        raise ConfigError("value_model", f"the critic would start from {src}, whose vocabulary differs from the "
                                         f"policy's ({diff}), so it would read the policy's token ids as other "
                                         f"tokens; set value_model=shared (a value head on the policy's trunk) or "
                                         f"value_model=policy (a copy of the policy's trunk)")


def _load_value_model(cfg: PPOConfig, tokenizer: Any) -> tuple[nn.Module, str]:
    """The critic: same dtype / LoRA / checkpointing settings as the policy."""
    src = _value_source(cfg)
    path = cfg.model.name_or_path if src == "policy" else src
    # A reward model keeps its trained head (the critic starts out predicting the final score,
    # InstructGPT); the policy's trunk gets a fresh head.
    model = load_scalar_model(replace(cfg.model, name_or_path=path), tokenizer=tokenizer,
                              init_head=True if src == "policy" else None)
    return model, src


# --------------------------------------------------------------------------- the reward signal


def _explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over completion tokens: 1 = the critic predicts returns exactly."""
    var_r = masked_var(returns, mask)
    return float(1 - masked_var(returns - values, mask) / var_r) if float(var_r) > 0 else float("nan")


# --------------------------------------------------------------------------- the loop


def _prompts(cfg: PPOConfig, tokenizer: Any, trainer: Trainer) -> list[dict]:
    records, report = load_records(cfg.data, "prompt")
    out = []
    for rec in records:
        try:
            # columns: the row's other fields (e.g. a ground-truth answer) for reward functions
            out.append({"prompt": rec.prompt, "columns": rec.columns,
                        "prompt_input_ids": encode_prompt(rec, tokenizer, cfg.data, report)["prompt_input_ids"]})
        except DataError as e:  # counted like every other bad row (or fatal with data.strict)
            if cfg.data.strict:
                raise
            report.skip(e.reason or ENCODING, e.file, e.row, str(e))
    n_failed = len(records) - len(out)
    if records and n_failed / len(records) > cfg.data.max_skip_fraction:
        raise DataError(cfg.data.train, None, "prompts", f"at most {cfg.data.max_skip_fraction:.1%} of the "
                        f"prompts to be skipped at tokenization (data.max_skip_fraction), but {n_failed} of "
                        f"{len(records)} were\n{report.summary()}")
    if report.skipped_rows or report.truncated:
        trainer.print(f"[ppo] {report.summary()}")
    from rlhf.data.tokenize import rendering_summary
    trainer.print(f"[ppo] {rendering_summary(records, tokenizer, cfg.data)}")
    if not out:
        raise ConfigError("data.train", f"no usable prompts in {cfg.data.train}")
    return out


def _check_episode_length(cfg: PPOConfig, longest_prompt: int) -> None:
    """Stop before sampling when prompt + completion can pass the policy's position limit."""
    limit, n = position_limit(cfg.model), cfg.sampling.max_new_tokens
    if limit is not None and longest_prompt + n > limit:
        raise ConfigError("sampling.max_new_tokens", f"the longest prompt ({longest_prompt} tokens) + max_new_tokens "
                          f"({n}) = {longest_prompt + n} is above the position limit of {cfg.model.name_or_path}: "
                          f"{limit} (max_position_embeddings); lower max_new_tokens to at most "
                          f"{max(limit - longest_prompt, 0)} or shorten prompts with data.max_prompt_length")


def train(cfg: PPOConfig) -> dict[str, Any]:
    # Step 1. Open the run: output folder checks, resolved config.yaml, accelerator, seed.
    trainer = Trainer(cfg.train, cfg.output_dir, cfg, stage="ppo")
    device = trainer.device
    placement, estimator = cfg.kl.resolved(cfg.advantage)
    aggregation = cfg.ppo.aggregation
    if aggregation == "auto":
        aggregation = "constant" if cfg.advantage == "dr_grpo" else "token_mean"
    temperature = cfg.sampling.temperature
    K = cfg.sampling.num_samples

    # Step 2. Prompts (the states), and the reward source.
    tokenizer = load_tokenizer(cfg.model)
    prompts = _prompts(cfg, tokenizer, trainer)
    _check_episode_length(cfg, max(len(p["prompt_input_ids"]) for p in prompts))
    reward = load_reward_source(cfg.reward, device=str(device))
    tracked = {name: load_reward_source(spec, device=str(device)) for name, spec in cfg.track.items()}
    _check_tokenizers(cfg, tokenizer, [reward, *tracked.values()], trainer)

    # Step 3. Policy, frozen reference (a copy of the starting policy, or the LoRA policy with
    # adapters off), and the critic for GAE.
    policy = load_causal_lm(cfg.model)
    reference = load_reference(cfg.model, policy)
    # Offloading: the frozen models live on the CPU and visit the accelerator for their pass.
    offload = cfg.offload and device.type != "cpu" and not (trainer.sharded and cfg.train.fsdp.frozen == "shard")
    home = torch.device("cpu") if offload else device
    ref_modules = [] if reference.shares_policy_weights else [reference.module]
    for m in ref_modules + reward.modules() + [m for src in tracked.values() for m in src.modules()]:
        if offload:
            m.to(home)
        else:
            trainer.place_frozen(m)
    value = value_head = None
    if cfg.advantage in CRITIC_ESTIMATORS and _value_source(cfg) == "shared":
        value_head = shared_value_head(policy)
        trainer.print("[ppo] critic: a value head on the policy's trunk (shared)")
    elif cfg.advantage in CRITIC_ESTIMATORS:
        value, value_src = _load_value_model(cfg, tokenizer)
        trainer.print(f"[ppo] value model initialised from {value_src}")
    n = count_parameters(policy)
    trainer.print(f"[ppo] policy {cfg.model.name_or_path}: {n['total']:,} parameters, {n['trainable']:,} "
                  f"trainable; advantage={cfg.advantage}, KL in the {placement} ({estimator}), "
                  f"{K} sample(s) per prompt")

    # Step 4. Optimizer over policy (+ critic), schedule over every minibatch update, resume.
    updates = cfg.ppo.epochs * cfg.ppo.num_minibatches
    model = trainer.setup(PolicyAndValue(policy, value, value_head, packed=cfg.ppo.packed), num_examples=len(prompts),
                          updates_per_step=updates)
    trainer.export = lambda m: m.policy  # type: ignore[assignment,return-value]  # final/ holds the policy only
    inner = trainer.accelerator.unwrap_model(model)
    kl_ctl = (AdaptiveKLController(cfg.kl.beta, cfg.kl.target, cfg.kl.horizon) if cfg.kl.target
              else FixedKLController(cfg.kl.beta))
    extra = getattr(trainer, "resume_extra", {}) or {}
    if "kl_controller" in extra:
        kl_ctl.load_state_dict(extra["kl_controller"])
    history: list[dict[str, float]] = list(extra.get("history", []))

    # Batch statistics (whitening, REINFORCE++'s normalisation) over every process's rollouts.
    global_sum = trainer.reduce_sum if trainer.accelerator.num_processes > 1 else None

    # The rollout engine (rlhf/engines): the built-in sampler over the policy's own weights, or
    # vLLM with a copy of them, synced after every update (5.6).
    if not is_builtin(cfg.sampling.engine) and trainer.accelerator.num_processes > 1:
        raise ConfigError("sampling.engine", f"{cfg.sampling.engine} with more than one training process is not "
                                             f"supported yet (each process would start its own engine)")
    engine = rollout_engine(inner.policy, tokenizer, cfg.sampling)
    builtin = is_builtin(cfg.sampling.engine)
    scoring = forward_engine(cfg.sampling.engine)

    # π_old's log-probs from the sampler's logits unless rounding would make them differ (bf16)
    # or another engine drew the tokens: then the trainer recomputes them, and truncated
    # importance sampling corrects for the engine's distribution (ppo.tis).
    fp32 = cfg.model.dtype == "fp32" and cfg.train.mixed_precision == "no"
    sampler_logps = cfg.ppo.old_logps == "sampler" or (cfg.ppo.old_logps == "auto" and fp32 and builtin)
    tis = cfg.ppo.tis
    if tis == "auto":
        tis = "token" if not builtin and not sampler_logps else "off"
    keep_engine_logps = sampler_logps or not builtin or tis != "off"

    def evaluate_batch(ro: Rollout) -> dict[str, torch.Tensor]:
        """Step 3: old log-probs (+ entropy), reference log-probs and values, no gradient."""
        bs = cfg.train.eval_batch_size
        with trainer.accelerator.autocast(), trainer.gathered():
            if sampler_logps:  # kept by the sampler (ppo.old_logps)
                old_logps, entropy = ro.logps, ro.entropy
            else:
                old_logps, entropy = rollout_logps(inner.policy, ro, temperature, bs, with_entropy=True,
                                                   engine=scoring, packed=cfg.ppo.packed)
            values = inner.rollout_values(ro, bs)
        # (the reference is gathered for its own pass: the policy itself with LoRA, else its copy)
        with trainer.accelerator.autocast(), trainer.gathered(*ref_modules):
            with visiting(ref_modules, device, home):
                ref_logps = rollout_logps(reference, ro, temperature, bs, engine=scoring,
                                          packed=cfg.ppo.packed)
        return {"old_logps": old_logps, "entropy": entropy, "ref_logps": ref_logps, "values": values}

    def loss_fn(m: nn.Module, mb: dict[str, torch.Tensor], denom: torch.Tensor):
        logits, values = m(mb["input_ids"], mb["attention_mask"], mb["position_ids"])
        logps = shifted_token_logps(logits, mb["input_ids"], temperature)  # (b, T)
        mask = mb["mask"]
        agg: dict[str, Any] = {"aggregation": aggregation, "denominator": denom, "max_len": cfg.sampling.max_new_tokens}
        loss, pm = ppo_clip_loss(logps, mb["old_logps"], mb["advantages"], mask, cfg.ppo.clip,
                                 cfg.ppo.clip_high, **agg, is_weights=mb.get("is_weights"))
        ntok = mask.sum().double()
        out = {"pg_loss": loss.detach(), "ntok": ntok, "w_clip_fraction": pm["clip_fraction"] * ntok,
               "w_approx_kl": pm["approx_kl"] * ntok}
        if placement == "loss" and kl_ctl.value > 0:
            kl_term, _ = kl_loss(logps, mb["ref_logps"], mask, kl_ctl.value, estimator, **agg)
            loss = loss + kl_term
        if cfg.ppo.entropy_coef > 0:
            ent = torch.zeros_like(logps)
            ent[:, 1:] = entropy_from_logits(logits[:, :-1], temperature)
            bonus, _ = entropy_bonus(ent, mask, cfg.ppo.entropy_coef, **agg)
            loss = loss + bonus
        if values is not None:
            vl, vm = value_loss(values, mb["old_values"], mb["returns"], mask, cfg.ppo.vf_clip, **agg)
            loss = loss + cfg.ppo.vf_coef * vl
            out.update(value_loss=vl.detach(), w_value_clip_fraction=vm["clip_fraction"] * ntok)
        return loss, out

    def units_fn(mb: dict[str, torch.Tensor]) -> torch.Tensor:
        return count_units(mb["mask"], aggregation)

    # Step 5. The loop: one rollout and its updates per step.
    last: dict[str, Any] = {}
    for step, micro in trainer.steps(prompts, lambda xs: {"examples": xs}):
        examples = [e for mb in micro for e in mb["examples"]]
        t0 = time.perf_counter()

        # 5.1 rollout: K completions per prompt, consecutive (the group layout of rlhf.advantages).
        # (trainer.gathered: under FSDP the policy is gathered once for generation, whose
        # number of forward passes differs between processes; a no-op otherwise.)
        with trainer.accelerator.autocast(), trainer.gathered():
            ro = engine.sample(tokenizer, [e["prompt"] for e in examples],
                               [e["prompt_input_ids"] for e in examples], cfg.sampling, with_logps=keep_engine_logps)
        t_gen = time.perf_counter()

        # 5.2 scores (the environment's reward at the end of the episode) and the EOS trick. The
        # prompts' other row columns go along, K times each like the prompts (rlhf.rewards).
        columns = row_columns([e["columns"] for e in examples], repeat=K)
        with visiting(reward.modules(), device, home):
            raw_scores = call_reward(reward, ro.prompts, ro.completions, **columns).to(device).float()  # (B,)
        scores = raw_scores.clone()
        if cfg.ppo.missing_eos_penalty is not None:
            scores = torch.where(ro.ended, scores, scores - cfg.ppo.missing_eos_penalty)
        track_scores = {}
        for k, src in tracked.items():
            with visiting(src.modules(), device, home):
                track_scores[f"track/{k}"] = call_reward(src, ro.prompts, ro.completions, **columns).float()
        greedy_scores = None
        if cfg.advantage == "remax":  # the baseline: the score of the greedy completion
            with trainer.accelerator.autocast(), trainer.gathered():
                greedy = engine.sample(tokenizer, [e["prompt"] for e in examples],
                                       [e["prompt_input_ids"] for e in examples], cfg.sampling, greedy=True,
                                       num_samples=1)
            with visiting(reward.modules(), device, home):
                greedy_scores = call_reward(reward, greedy.prompts, greedy.completions,
                                            **row_columns([e["columns"] for e in examples])).to(device).float()
            if cfg.ppo.missing_eos_penalty is not None:
                greedy_scores = torch.where(greedy.ended, greedy_scores, greedy_scores - cfg.ppo.missing_eos_penalty)
        t_score = time.perf_counter()

        # 5.3 log-probs of the sampled tokens under π and π_ref; values.
        ev = evaluate_batch(ro)
        mask = ro.completion_mask.float()  # (B, T)
        engine_metrics: dict[str, float] = {}
        is_weights = None
        if ro.logps is not None and not sampler_logps:  # the engine's and the trainer's log-probs
            w, tm = truncated_importance_weights(ev["old_logps"], ro.logps, mask, cfg.ppo.tis_cap,
                                                 "sequence" if tis == "sequence" else "token", cfg.ppo.tis_mode)
            is_weights = w if tis != "off" else None
            engine_metrics = {"engine/mismatch_kl": float(tm["mismatch_kl"]),
                              "engine/mismatch_k1": float(tm["mismatch_k1"])}
            if is_weights is not None:
                engine_metrics.update({"engine/capped_fraction": float(tm["capped_fraction"]),
                                       "engine/is_weight": float(tm["weight"])})

        # 5.4 per-token KL and rewards.
        beta = kl_ctl.value
        kl_tok = kl_estimate(ev["old_logps"], ev["ref_logps"], estimator, mask)  # (B, T)
        seq_kl = masked_sum(kl_k1(ev["old_logps"], ev["ref_logps"], mask), mask, dim=-1)  # (B,) log π/π_ref
        in_reward = placement == "reward" and beta > 0
        rewards = token_rewards(scores, kl_tok if in_reward else torch.zeros_like(kl_tok), mask, beta)
        if cfg.ppo.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=global_sum)
        # Per-completion estimators see the score minus the completion's total KL penalty.
        seq_scores = scores - beta * masked_sum(kl_tok, mask, dim=-1) if in_reward else scores

        # 5.5 advantages (and returns for the critic, taken before whitening).
        advantages, returns = compute_advantages(
            cfg.advantage, rewards=rewards, values=ev["values"], mask=mask, scores=seq_scores,
            greedy_scores=greedy_scores, group_size=K, gamma=cfg.ppo.gamma, lam=cfg.ppo.lam, reduce=global_sum)
        if cfg.advantage == "gae" and cfg.ppo.whiten_advantages:
            advantages = masked_whiten(advantages, mask, reduce=global_sum)
        loss_mask = mask
        if cfg.ppo.drop_uninformative_groups:
            keep = informative_groups(scores, K).repeat_interleave(K).float()  # (B,)
            loss_mask = mask * keep[:, None]

        # 5.6 the update: epochs x minibatches optimizer steps.
        batch = {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask,
                 "position_ids": ro.position_ids, "mask": loss_mask, "old_logps": ev["old_logps"],
                 "ref_logps": ev["ref_logps"], "advantages": advantages}
        if ev["values"] is not None:
            batch.update(old_values=ev["values"], returns=returns)
        if is_weights is not None:
            batch["is_weights"] = is_weights
        upd = _update(trainer, batch, loss_fn, units_fn, cfg)
        # The engine samples the next step from the updated policy (checked, or an error).
        engine_metrics.update({f"engine/{k}": v for k, v in engine.sync(inner.policy).items()})
        t_update = time.perf_counter()

        # 5.7 β for the next step.
        n_completions = float(trainer.reduce_sum(torch.tensor(float(len(ro)))))
        mean_kl = float(trainer.reduce_sum(seq_kl.sum())) / n_completions
        kl_ctl.update(mean_kl, int(n_completions))

        # Metrics (over all processes).
        def mean(x: torch.Tensor, n: float = n_completions) -> float:
            return float(trainer.reduce_sum(x.float().sum())) / n

        metrics = {
            "score": mean(raw_scores), "score_std": float(raw_scores.std()) if len(ro) > 1 else 0.0,
            "kl": mean_kl, "beta": beta,
            "entropy": float(masked_mean(ev["entropy"], mask)),
            "response_length": mean(ro.lengths), "eos_fraction": mean(ro.ended),
            **upd, **engine_metrics,
            "time_generate_s": round(t_gen - t0, 3), "time_score_s": round(t_score - t_gen, 3),
            "time_update_s": round(t_update - t_score, 3),
            "episodes_per_s": round(n_completions / max(t_update - t0, 1e-9), 3),
        }
        norm = (getattr(reward, "mean", None), getattr(reward, "std", None))
        if norm[0] is not None and norm[1]:
            metrics["score_normalized"] = (metrics["score"] - norm[0]) / norm[1]
        if ev["values"] is not None:
            assert returns is not None  # the critic's estimator returns them
            metrics["explained_variance"] = _explained_variance(ev["values"], returns, mask)
        if greedy_scores is not None:
            metrics["greedy_score"] = mean(greedy_scores) * len(ro) / len(greedy_scores)
        for k, v in track_scores.items():
            metrics[k] = mean(v.to(device))
        history.append({"step": step, "score": metrics["score"], "kl": mean_kl,
                        **{k: metrics[k] for k in track_scores}})
        trainer.log(step, metrics)
        if trainer.is_main and (step % cfg.sample_every == 0 or step == 1) and cfg.num_log_samples:
            _log_samples(trainer, step, ro, raw_scores, track_scores, cfg.num_log_samples)
        last = metrics
        trainer.maybe_checkpoint(step, tokenizer, extra_state={"kl_controller": kl_ctl.state_dict(),
                                                               "history": history})

    engine.close()

    # Step 6. The policy goes to final/; the summary compares the first and last steps.
    tail = history[-max(1, len(history) // 10):]
    summary = {
        "prompts": len(prompts), "advantage": cfg.advantage, "kl_placement": placement,
        "kl_estimator": estimator, "samples_per_prompt": K,
        "initial_score": history[0]["score"] if history else None,
        "final_score": sum(h["score"] for h in tail) / len(tail) if tail else None,
        "final_kl": sum(h["kl"] for h in tail) / len(tail) if tail else None,
        **{f"final_{k}": sum(h[k] for h in tail) / len(tail) for k in (tail[0] if tail else {})
           if k.startswith("track/")},
        "final_beta": kl_ctl.value,
        "last_step": {k: v for k, v in last.items() if isinstance(v, (int, float))},
    }
    return trainer.finish(tokenizer, summary)


def _update(trainer: Trainer, batch: dict[str, torch.Tensor], loss_fn, units_fn, cfg: PPOConfig) -> dict[str, float]:
    """``ppo.epochs`` passes over the rollout batch, ``ppo.num_minibatches`` optimizer steps each;
    a minibatch is split into ``train.grad_accum`` micro-batches with the exact global denominator.
    Returns the metrics averaged over the updates that ran."""
    B = batch["input_ids"].shape[0]
    mb_size = B // cfg.ppo.num_minibatches
    micro_size = mb_size // cfg.train.grad_accum
    totals: dict[str, float] = {}
    n_updates, planned = 0, cfg.ppo.epochs * cfg.ppo.num_minibatches
    stop = False
    for _epoch in range(cfg.ppo.epochs):
        order = torch.randperm(B, device=batch["input_ids"].device)
        for k in range(cfg.ppo.num_minibatches):
            rows = order[k * mb_size:(k + 1) * mb_size]
            micro = [_slice(batch, rows[j:j + micro_size]) for j in range(0, mb_size, micro_size)]
            m = trainer.accumulate(micro, units_fn, loss_fn)
            m.update(trainer.optimizer_step())
            ntok = max(m.pop("ntok"), 1.0)
            for key in [k_ for k_ in m if k_.startswith("w_")]:
                m[key[2:]] = m.pop(key) / ntok
            m.pop("units", None)
            for key, v in m.items():
                totals[key] = totals.get(key, 0.0) + v
            n_updates += 1
            if cfg.ppo.target_kl is not None and m["approx_kl"] > cfg.ppo.target_kl:
                stop = True
                break
        if stop:
            break
    for _ in range(planned - n_updates):  # keep the LR schedule aligned with the planned updates
        trainer.scheduler.step()
    out = {k: v / n_updates for k, v in totals.items()}
    out["updates"] = n_updates
    return out


def _slice(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of the rollout batch, with the columns no selected row uses cut away."""
    used = batch["attention_mask"][rows].bool().any(0).nonzero().flatten()
    cols = slice(int(used[0]), int(used[-1]) + 1)
    return {k: v[rows][:, cols] if v.dim() == 2 else v[rows] for k, v in batch.items()}


def _log_samples(trainer: Trainer, step: int, ro: Rollout, scores: torch.Tensor,
                 track: dict[str, torch.Tensor], n: int) -> None:
    """A few prompts and completions with their scores, in the console and in metrics.jsonl."""
    from rlhf.data.records import readable  # chat prompts as "role: content" lines

    rows: list[dict[str, Any]] = [
        {"prompt": readable(ro.prompts[i]), "completion": ro.completions[i], "score": round(float(scores[i]), 4),
         **{k: round(float(v[i]), 4) for k, v in track.items()}}
        for i in range(0, len(ro), max(1, ro.group_size))][:n]
    if trainer.metrics is not None:
        trainer.metrics.write({"step": step, "samples": rows})
    lines = [f"[ppo] samples at step {step}:"]
    for r in rows:
        lines.append(f"  {r['score']:+.3f}  {r['prompt'][-40:]!r} -> {r['completion'][:80]!r}")
    trainer.print("\n".join(lines))
