"""Online RLHF: PPO with a critic, and the critic-free estimators (GRPO, Dr. GRPO, RLOO,
REINFORCE++, ReMax), in one loop.

The RL framing (docs/ppo.md): a prompt is the state, each sampled token an action, the episode
ends at EOS or the length limit, and the reward arrives at the end:

    r_t = -β·KL_t                    on every completion token (when the KL is in the reward)
    r_T = r_T + score(prompt, completion)    on the last one

Named objects in the loop: the **policy** π (trained), the frozen **reference** π_ref (the
policy's starting point; with LoRA, the policy with adapters disabled), the **environment**
(rlhf/envs: today the reward source, a reward model, a Python function or a combination
(rlhf/rewards.py), as an environment of one step) and, for ``advantage=gae``, the **value
model** V (the critic, trained with the policy).

Each training step is one iteration of:

    1. rollout      sample K completions per prompt with the rollout engine (rlhf/rollout: the
                    built-in sampler, or vLLM synced after each update)
    2. score        the environment scores each completion; the EOS trick penalises
                    completions cut at the length limit, DAPO's overlong penalty long ones
                    (with ppo.dynamic_sampling, prompts whose K scores are all equal are
                    replaced by fresh ones, sampled and scored: DAPO)
    3. evaluate     log-probs of the sampled tokens under π (the "old" policy) and π_ref, and
                    V(s_t), at the sampling temperature, without gradient; with a ``teacher``
                    (on-policy distillation), its log-probs give a per-token reward
    4. advantages   per-token KL (k1/k2/k3) and rewards, then one estimator chosen by name
                    (rlhf/advantages.py: its settings live beside it)
    5. update       ``ppo.epochs`` passes over the batch in ``ppo.num_minibatches`` minibatches,
                    each one optimizer step on the policy loss named by ``ppo.loss`` (+ clipped
                    value loss, + KL in the loss for GRPO, + entropy bonus), exact accumulation
    6. β            the KL controller named by ``kl.controller`` sees the KL

The math lives in rlhf/losses/policy.py, rlhf/advantages.py, rlhf/kl.py and rlhf/masking.py, the
update in rlhf/ppo_update.py; this file only wires it. Run it with
``rlhf ppo --recipe tiny [key=value ...]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf.advantages import CRITIC_ESTIMATORS, ESTIMATOR_SPECS
from rlhf.config import ConfigError, opt
from rlhf.data.config import DataConfig
from rlhf.data.errors import ENCODING, DataError
from rlhf.data.load import load_records
from rlhf.data.tokenize import encode_prompt
from rlhf.envs import EnvConfig, SingleTurn, Teacher, single_turn
from rlhf.envs.episodes import ToolEnvironment, episode_metrics, episodes_rollout, run_episodes, tool_format_for
from rlhf.envs.tools import load_tools
from rlhf.losses.policy import POLICY_LOSS_SPECS, truncated_importance_weights
from rlhf.masking import Aggregation, masked_mean
from rlhf.models.config import ModelConfig
from rlhf.models.load import (
    count_parameters,
    load_causal_lm,
    load_reference,
    load_scalar_model,
    load_tokenizer,
    position_limit,
)
from rlhf.models.vocab import reward_model_tokenizers, vocabulary_difference
from rlhf.objectives import DynamicRollout, ZeroReward, dynamic_rollout, shaped_scores
from rlhf.ppo_update import (
    KLConfig,
    PolicyAndValue,
    PolicyLossConfig,
    evaluate_rollout,
    explained_variance,
    kl_controller,
    needs_reference,
    policy_loss_fn,
    shape_advantages,
    shared_value_head,
    update,
    visiting,
)
from rlhf.rewards import import_callable, row_columns
from rlhf.rollout import Rollout, RolloutEngine, SamplingConfig, forward_engine, is_builtin, rollout_engine
from rlhf.train.config import TrainConfig
from rlhf.train.trainer import Trainer

__all__ = ["shared_value_head", "visiting", "PPOConfig", "KLConfig", "PolicyLossConfig", "PolicyAndValue", "train"]

# (kept for imports written before the estimators' settings moved to rlhf.advantages.ESTIMATOR_SPECS)
GROUP_ESTIMATORS = tuple(name for name, spec in ESTIMATOR_SPECS.items() if spec.min_group >= 2)


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
    advantage: str = opt("gae", "the advantage estimator, by name (rlhf.advantages.ESTIMATOR_SPECS, where each "
                                "one's settings live): gae = PPO with a critic, reinforce_pp = REINFORCE++",
                         choices=tuple(ESTIMATOR_SPECS))
    track: dict[str, str] = opt(factory=dict, help="extra reward sources scored on every rollout and "
                                                   "logged as track/<name> but not optimised, e.g. "
                                                   "{gold: my_pkg.gold:reward} to watch over-optimisation")
    teacher: str = opt("", "on-policy distillation: a model folder with the policy's tokenizer; on each "
                           "sampled token the policy gets teacher_coef·(log π_teacher - log π) as reward "
                           "(reverse KL to the teacher); with a teacher, reward may be left empty")
    teacher_coef: float = opt(1.0, "weight of the teacher's per-token reward", gt=0)
    value_model: str = opt("auto", "the critic (advantage=gae): 'reward' (a copy of the reward model; "
                                   "the default when the reward is one), 'policy' (a copy of the "
                                   "policy's trunk, new head), 'shared' (a value head on the policy's "
                                   "own trunk: no second model), or a checkpoint folder")
    sampling: SamplingConfig = opt(factory=SamplingConfig, help="rollout sampling (multi-turn: per policy turn)")
    env: EnvConfig = opt(factory=EnvConfig, help="the environment: one turn scored by the reward (default), or "
                                                 "multi-turn episodes with tools or a custom environment "
                                                 "(docs/environments.md)")
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
        if self.env.multi_turn and ESTIMATOR_SPECS[self.advantage].greedy_baseline:
            raise ConfigError("advantage", f"{self.advantage} needs a greedy completion's score, which multi-turn "
                                           f"episodes (env.tools / env.factory) do not give; use grpo or rloo")
        if self.env.multi_turn and self.ppo.dynamic_sampling:
            raise ConfigError("ppo.dynamic_sampling", "is not available with multi-turn episodes (env.tools / "
                                                      "env.factory) yet: set it to false")
        if not self.reward and not self.teacher and not self.env.factory:
            raise ConfigError("reward", "is required (unless a teacher or env.factory is set): a reward-model "
                                        "folder, package.module:function or a .yaml/.json reward spec")
        if self.data.packing:
            raise ConfigError("data.packing", "does not apply to prompts (got true)")
        K = self.sampling.num_samples
        if K < ESTIMATOR_SPECS[self.advantage].min_group:
            raise ConfigError("sampling.num_samples", f"must be >= {ESTIMATOR_SPECS[self.advantage].min_group} "
                                                      f"for advantage={self.advantage}: the baseline comes from "
                                                      f"the other samples of the same prompt (got {K})")
        if self.ppo.drop_uninformative_groups and K < 2:
            raise ConfigError("ppo.drop_uninformative_groups", f"needs sampling.num_samples >= 2 (got {K})")
        if self.ppo.dynamic_sampling and K < 2:
            raise ConfigError("ppo.dynamic_sampling", f"needs sampling.num_samples >= 2 (got {K})")
        if POLICY_LOSS_SPECS[self.ppo.loss].sequence_advantages and ESTIMATOR_SPECS[self.advantage].per_token:
            raise ConfigError("ppo.loss", f"{self.ppo.loss} needs one advantage per completion, but "
                                          f"advantage={self.advantage} gives one per token; use grpo, dr_grpo, "
                                          f"rloo or remax")
        if self.ppo.overlong_cache is not None and self.ppo.overlong_cache > self.sampling.max_new_tokens:
            raise ConfigError("ppo.overlong_cache", f"must be at most sampling.max_new_tokens = "
                                                    f"{self.sampling.max_new_tokens} (got {self.ppo.overlong_cache})")
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


def _value_source(cfg: PPOConfig) -> str:
    if cfg.value_model == "shared":
        return "shared"
    if cfg.value_model not in ("auto", "reward"):
        return "policy" if cfg.value_model == "policy" else cfg.value_model
    from rlhf.models.load import is_hub_id

    # reward='' (a teacher or env.factory alone): Path('') is the current folder, not a reward model
    reward_is_model = bool(cfg.reward) and (Path(cfg.reward).is_dir() or (":" not in cfg.reward
                                                                          and is_hub_id(cfg.reward)))
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


# --------------------------------------------------------------------------- prompts


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
    if cfg.env.multi_turn:  # every token of an episode after the prompt, policy and environment ones
        n = cfg.env.episode_tokens(n)
    if limit is not None and longest_prompt + n > limit:
        key, what = ("env.max_tokens", "the episode's tokens") if cfg.env.multi_turn else \
            ("sampling.max_new_tokens", "max_new_tokens")
        raise ConfigError(key, f"the longest prompt ({longest_prompt} tokens) + {what} ({n}) = {longest_prompt + n} "
                               f"is above the position limit of {cfg.model.name_or_path}: {limit} "
                               f"(max_position_embeddings); lower {key} to at most {max(limit - longest_prompt, 0)} "
                               f"or shorten prompts with data.max_prompt_length")


# --------------------------------------------------------------------------- the loop


def train(cfg: PPOConfig) -> dict[str, Any]:
    # Step 1. Open the run: output folder checks, resolved config.yaml, accelerator, seed; the
    # estimator's settings (rlhf.advantages.ESTIMATOR_SPECS) fill the autos.
    trainer = Trainer(cfg.train, cfg.output_dir, cfg, stage="ppo")
    device = trainer.device
    placement, estimator = cfg.kl.resolved(cfg.advantage)
    spec = ESTIMATOR_SPECS[cfg.advantage]
    loss_agg = POLICY_LOSS_SPECS[cfg.ppo.loss].aggregation  # auto: the loss's own (gspo), else the estimator's
    aggregation: Aggregation = (cfg.ppo.aggregation if cfg.ppo.aggregation != "auto"
                                else loss_agg if loss_agg != "token_mean" else spec.aggregation)
    K = cfg.sampling.num_samples

    # Step 2. Prompts (the states), and the environment: the reward source as one step (rlhf/envs).
    tokenizer = load_tokenizer(cfg.model)
    prompts = _prompts(cfg, tokenizer, trainer)
    _check_episode_length(cfg, max(len(p["prompt_input_ids"]) for p in prompts))
    env = single_turn(cfg.reward, device=str(device)) if cfg.reward else SingleTurn(ZeroReward())
    tracked = {name: single_turn(spec, device=str(device)) for name, spec in cfg.track.items()}
    _check_tokenizers(cfg, tokenizer, [s.reward for s in [env, *tracked.values()] if s.reward is not None], trainer)
    episodes = _multi_turn(cfg, tokenizer, env, device)  # None: one turn, scored by the reward

    # Step 3. Policy, frozen reference (a copy of the starting policy, or the LoRA policy with
    # adapters off), the critic for GAE; frozen models placed (or offloaded to the CPU).
    m = _load_models(cfg, trainer, tokenizer, [env, *tracked.values()])
    n = count_parameters(m["policy"])
    if m["reference"] is None:  # (with LoRA the reference is the policy itself: only its pass is saved)
        saved = "" if cfg.model.lora.enabled else f" ({n['total']:,} parameters not copied)"
        trainer.print(f"[ppo] kl.beta=0 with a fixed β and nothing tracked: no reference model loaded{saved}, no "
                      f"reference pass; the KL to it is not measured (no 'kl' metric, final_kl null; "
                      f"kl.measure=true keeps it)")
    trainer.print(f"[ppo] policy {cfg.model.name_or_path}: {n['total']:,} parameters, {n['trainable']:,} "
                  f"trainable; advantage={cfg.advantage}, KL in the {placement} ({estimator}), "
                  f"{K} sample(s) per prompt")

    # Step 4. Optimizer over policy (+ critic), schedule over every minibatch update, resume; the
    # β controller (restored too), the loss, and the rollout engine.
    model = trainer.setup(PolicyAndValue(m["policy"], m["value"], m["value_head"], packed=cfg.ppo.packed),
                          num_examples=len(prompts), updates_per_step=cfg.ppo.epochs * cfg.ppo.num_minibatches)
    trainer.export = lambda m: m.policy  # type: ignore[assignment,return-value]  # final/ holds the policy only
    inner = trainer.accelerator.unwrap_model(model)
    kl_ctl = kl_controller(cfg.kl)
    extra = getattr(trainer, "resume_extra", {}) or {}
    if "kl_controller" in extra:
        kl_ctl.load_state_dict(extra["kl_controller"])
    history: list[dict[str, Any]] = list(extra.get("history", []))
    loss_fn, units_fn = policy_loss_fn(cfg.ppo, aggregation=aggregation, placement=placement, estimator=estimator,
                                       kl_ctl=kl_ctl, temperature=cfg.sampling.temperature,
                                       max_len=cfg.sampling.max_new_tokens)
    engine, how = _engine(cfg, trainer, inner.policy, tokenizer)
    # Batch statistics (whitening, REINFORCE++'s normalisation) over every process's rollouts.
    global_sum = trainer.reduce_sum if trainer.accelerator.num_processes > 1 else None

    # Step 5. The loop: one rollout and its updates per step.
    last: dict[str, Any] = {}
    for step, micro in trainer.steps(prompts, lambda xs: {"examples": xs}):
        examples = [e for mb in micro for e in mb["examples"]]
        times = [time.perf_counter()]

        # 5.1 rollout: K completions per prompt, consecutive (the group layout of rlhf.advantages),
        # or multi-turn episodes where the environment answers each turn; with ppo.dynamic_sampling,
        # the groups whose K scores are all equal replaced (DAPO).
        ro, examples, dyn = _rollout(cfg, trainer, engine, tokenizer, examples, prompts, env, m["home"], how, step,
                                     episodes)
        times.append(time.perf_counter())

        # 5.2 scores (the environment's reward at the end of the episode), the EOS trick and the
        # overlong penalty, tracked rewards, and ReMax's greedy baseline.
        sc = _score(cfg, trainer, engine, tokenizer, examples, ro, env, tracked, m["home"],
                    raw=dyn.raw_scores if dyn is not None else None)
        times.append(time.perf_counter())

        # 5.3 log-probs of the sampled tokens under π and π_ref; values; the engine's mismatch.
        ev = evaluate_rollout(ro, policy=inner.policy, model=inner, reference=m["reference"],
                              ref_modules=m["ref_modules"], trainer=trainer, temperature=cfg.sampling.temperature,
                              batch_size=cfg.train.eval_batch_size, sampler_logps=how["sampler_logps"],
                              scoring=how["scoring"], packed=cfg.ppo.packed, device=device, home=m["home"])
        mask = ro.loss_mask.float()  # (B, T): the policy's own tokens
        is_weights, engine_metrics = _importance_weights(cfg, ro, ev, mask, how)
        engine_metrics.update(ro.extra.get("metrics", {}))  # multi-turn: turns, tool calls and errors
        bonus = _teacher_rewards(m["teacher"], trainer, ro, ev, mask, cfg, how, m["home"])  # distillation

        # 5.4 per-token KL and rewards, advantages (the estimator named), the loss mask.
        beta = kl_ctl.value
        adv = shape_advantages(cfg.advantage, ev, mask, sc["scores"], beta=beta, placement=placement,
                               estimator=estimator, cfg=cfg.ppo, group_size=K, greedy_scores=sc["greedy"],
                               reduce=global_sum, token_bonus=bonus,
                               in_loss=dyn.informative if dyn is not None else None)

        # 5.5 the update: epochs x minibatches optimizer steps; the engine then samples the next
        # step from the updated policy (checked, or an error).
        upd = update(trainer, _batch(ro, ev, adv, is_weights), loss_fn, units_fn, cfg.ppo, cfg.train.grad_accum)
        engine_metrics.update({f"engine/{k}": v for k, v in engine.sync(inner.policy).items()})
        times.append(time.perf_counter())

        # 5.6 β for the next step; metrics (over all processes), samples, checkpoint.
        n_completions = float(trainer.reduce_sum(torch.tensor(float(len(ro)))))
        # (None when there is no reference: not measured, and the fixed controller needs none)
        mean_kl = None if adv["seq_kl"] is None else float(trainer.reduce_sum(adv["seq_kl"].sum())) / n_completions
        if mean_kl is not None:
            kl_ctl.update(mean_kl, int(n_completions))
        metrics = _metrics(trainer, ro, sc, ev, adv, mask, upd, engine_metrics, times, n_completions,
                           mean_kl, beta, env)
        if dyn is not None:
            metrics.update(dyn.metrics)
        if bonus is not None:  # k1 estimate of KL(π‖π_teacher) per completion
            metrics["teacher_kl"] = -float(trainer.reduce_sum(bonus.sum())) / m["teacher"].coef / n_completions
        history.append({"step": step, "score": metrics["score"], "kl": mean_kl,
                        **{k: metrics[k] for k in sc["track"]}})
        trainer.log(step, metrics)
        if trainer.is_main and (step % cfg.sample_every == 0 or step == 1) and cfg.num_log_samples:
            _log_samples(trainer, step, ro, sc["raw"], sc["track"], cfg.num_log_samples)
        last = metrics
        trainer.maybe_checkpoint(step, tokenizer, extra_state={"kl_controller": kl_ctl.state_dict(),
                                                               "history": history})
    engine.close()

    # Step 6. The policy goes to final/; the summary compares the first and last steps.
    return trainer.finish(tokenizer, _summary(cfg, len(prompts), placement, estimator, history, kl_ctl.value, last))


# --------------------------------------------------------------------------- the steps' parts


def _load_models(cfg: PPOConfig, trainer: Trainer, tokenizer: Any, envs: list[SingleTurn]) -> dict[str, Any]:
    """Step 3: the policy, the reference (None when nothing needs it) and its own modules, the critic (a separate
    model or a head on the policy), and ``home``, where frozen models live between passes."""
    device = trainer.device
    policy = load_causal_lm(cfg.model)
    # No reference when nothing needs the KL (β = 0, fixed controller, nothing tracked): its
    # weights are never copied and its pass never runs.
    reference = load_reference(cfg.model, policy) if needs_reference(cfg.kl, bool(cfg.track)) else None
    # Offloading: the frozen models live on the CPU and visit the accelerator for their pass.
    offload = cfg.offload and device.type != "cpu" and not (trainer.sharded and cfg.train.fsdp.frozen == "shard")
    home = torch.device("cpu") if offload else device
    ref_modules = [] if reference is None or reference.shares_policy_weights else [reference.module]
    teacher = Teacher(cfg.teacher, cfg.model, tokenizer, cfg.teacher_coef) if cfg.teacher else None
    for mod in ref_modules + [mod for env in envs for mod in env.modules()] + (teacher.modules() if teacher else []):
        if offload:
            mod.to(home)
        else:
            trainer.place_frozen(mod)
    value = value_head = None
    if cfg.advantage in CRITIC_ESTIMATORS and _value_source(cfg) == "shared":
        value_head = shared_value_head(policy)
        trainer.print("[ppo] critic: a value head on the policy's trunk (shared)")
    elif cfg.advantage in CRITIC_ESTIMATORS:
        value, value_src = _load_value_model(cfg, tokenizer)
        trainer.print(f"[ppo] value model initialised from {value_src}")
    return {"policy": policy, "reference": reference, "ref_modules": ref_modules, "home": home,
            "value": value, "value_head": value_head, "teacher": teacher}


def _engine(cfg: PPOConfig, trainer: Trainer, policy: nn.Module, tokenizer: Any) -> tuple[RolloutEngine, dict]:
    """The rollout engine (rlhf/rollout: the built-in sampler over the policy's own weights, or
    vLLM with a copy, synced after every update) and where π_old's log-probs come from: the
    sampler's logits unless rounding would make them differ (bf16) or another engine drew the
    tokens; then the trainer recomputes them, and truncated importance sampling corrects for the
    engine's distribution (ppo.tis)."""
    if not is_builtin(cfg.sampling.engine) and trainer.accelerator.num_processes > 1:
        raise ConfigError("sampling.engine", f"{cfg.sampling.engine} with more than one training process is not "
                                             f"supported yet (each process would start its own engine)")
    if cfg.ppo.dynamic_sampling and trainer.accelerator.num_processes > 1:
        raise ConfigError("ppo.dynamic_sampling", "with more than one training process is not supported yet (the "
                                                  "processes would run different numbers of sampling rounds, and "
                                                  "their collective calls would not match)")
    engine = rollout_engine(policy, tokenizer, cfg.sampling)
    builtin = is_builtin(cfg.sampling.engine)
    fp32 = cfg.model.dtype == "fp32" and cfg.train.mixed_precision == "no"
    sampler_logps = cfg.ppo.old_logps == "sampler" or (cfg.ppo.old_logps == "auto" and fp32 and builtin)
    if builtin:  # the sampler's left-padded, cached layouts probed against the full forward
        from rlhf.models.layouts import check_rollout_layouts
        sampler_logps = check_rollout_layouts(policy, sampler_logps)
        sampler_logps = bool(trainer.reduce_sum(float(sampler_logps)) == trainer.accelerator.num_processes)
    tis = cfg.ppo.tis
    if tis == "auto":
        tis = "token" if not builtin and not sampler_logps else "off"
    return engine, {"sampler_logps": sampler_logps, "tis": tis, "scoring": forward_engine(cfg.sampling.engine),
                    "keep_engine_logps": sampler_logps or not builtin or tis != "off"}


def _rollout(cfg: PPOConfig, trainer: Trainer, engine: RolloutEngine, tokenizer: Any, examples: list[dict],
             pool: list[dict], env: SingleTurn, home: torch.device, how: dict[str, Any], step: int,
             episodes: Callable | None = None) -> tuple[Rollout, list[dict], DynamicRollout | None]:
    """Step 5.1: the step's episodes, K per prompt. With ``ppo.dynamic_sampling`` the groups
    whose K scores are all equal are replaced by groups for prompts drawn from ``pool``, scored
    as they come (rlhf.objectives.dynamic_rollout); the examples then follow the new rows.
    (trainer.gathered: under FSDP the policy is gathered once for generation, whose number of
    forward passes differs between processes; a no-op otherwise.)"""

    def sample(exs: list[dict]) -> Rollout:
        with trainer.accelerator.autocast(), trainer.gathered():
            if episodes is not None:  # multi-turn (rlhf/envs/episodes.py)
                return episodes(engine, exs, how["keep_engine_logps"])
            return engine.sample(tokenizer, [e["prompt"] for e in exs], [e["prompt_input_ids"] for e in exs],
                                 cfg.sampling, with_logps=how["keep_engine_logps"])

    if not cfg.ppo.dynamic_sampling:
        return sample(examples), examples, None

    def score(r: Rollout, exs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        with visiting(env.modules(), trainer.device, home):
            raw = env.score(r.prompts, r.completions, row_columns([e["columns"] for e in exs],
                                                                  repeat=cfg.sampling.num_samples))
        raw = raw.to(trainer.device).float()
        return raw, _shaped(cfg, raw, r)

    dyn = dynamic_rollout(examples, pool, sample, score, tokenizer.pad_token_id, cfg.sampling.num_samples,
                          cfg.ppo.dynamic_sampling_retries, seed=cfg.train.seed * 1_000_003 + step)
    return dyn.rollout, dyn.examples, dyn


def _shaped(cfg: PPOConfig, raw: torch.Tensor, ro: Rollout) -> torch.Tensor:
    """The score the advantage sees: the EOS trick and DAPO's overlong penalty applied."""
    return shaped_scores(raw, ro.ended, ro.lengths, missing_eos_penalty=cfg.ppo.missing_eos_penalty,
                         overlong_cache=cfg.ppo.overlong_cache, overlong_coef=cfg.ppo.overlong_coef,
                         max_len=cfg.sampling.max_new_tokens)


def _score(cfg: PPOConfig, trainer: Trainer, engine: RolloutEngine, tokenizer: Any, examples: list[dict],
           ro: Rollout, env: SingleTurn, tracked: dict[str, SingleTurn], home: torch.device,
           raw: torch.Tensor | None = None) -> dict[str, Any]:
    """Step 5.2: the environment's scores (raw, unless given: dynamic sampling scored them
    already; and shaped: the EOS trick, the overlong penalty), the tracked rewards and, for
    ReMax, the scores of greedy completions. The prompts' other row columns go along, K times
    each like the prompts (rlhf.rewards)."""
    device, K = trainer.device, cfg.sampling.num_samples
    columns = row_columns([e["columns"] for e in examples], repeat=K)
    if raw is None and "rewards" in ro.extra:  # multi-turn: what the environment gave each episode
        raw = ro.extra["rewards"].to(device).float()
    if raw is None:
        with visiting(env.modules(), device, home):
            raw = env.score(ro.prompts, ro.completions, columns).to(device).float()  # (B,)
    scores = _shaped(cfg, raw, ro)
    track = {}
    for k, src in tracked.items():
        with visiting(src.modules(), device, home):
            track[f"track/{k}"] = src.score(ro.prompts, ro.completions, columns).float()
    greedy = None
    if ESTIMATOR_SPECS[cfg.advantage].greedy_baseline:  # ReMax: the score of the greedy completion
        with trainer.accelerator.autocast(), trainer.gathered():
            g = engine.sample(tokenizer, [e["prompt"] for e in examples], [e["prompt_input_ids"] for e in examples],
                              cfg.sampling, greedy=True, num_samples=1)
        with visiting(env.modules(), device, home):
            greedy = env.score(g.prompts, g.completions, row_columns([e["columns"] for e in examples]))
            greedy = _shaped(cfg, greedy.to(device).float(), g)
    return {"raw": raw, "scores": scores, "track": track, "greedy": greedy}


def _teacher_rewards(teacher: Teacher | None, trainer: Trainer, ro: Rollout, ev: dict[str, Any], mask: torch.Tensor,
                     cfg: PPOConfig, how: dict[str, Any], home: torch.device) -> torch.Tensor | None:
    """On-policy distillation (``teacher``): the teacher's log-probs of the student's own
    actions, at the sampling temperature, make the per-token reward (rlhf/envs/teacher.py)."""
    if teacher is None:
        return None
    with trainer.accelerator.autocast(), trainer.gathered(*teacher.modules()), \
            visiting(teacher.modules(), trainer.device, home):
        teacher_logps = teacher.logps(ro, cfg.sampling.temperature, cfg.train.eval_batch_size, how["scoring"],
                                      cfg.ppo.packed)
    return teacher.token_rewards(ev["old_logps"], teacher_logps, mask)


def _multi_turn(cfg: PPOConfig, tokenizer: Any, env: SingleTurn, device: torch.device) -> Callable | None:
    """Multi-turn episodes (env.tools or env.factory): a function (engine, examples, with_logps) ->
    the Rollout of one episode per (prompt, sample), its loss mask on the policy's tokens only
    (rlhf/envs/episodes.py); None for one-turn episodes."""
    if not cfg.env.multi_turn:
        return None
    tools = load_tools(cfg.env.tools)
    fmt = tool_format_for(tokenizer, cfg.env.tool_format)
    factory = import_callable(cfg.env.factory, "environment factory (env.factory)") if cfg.env.factory else None
    K, stops = cfg.sampling.num_samples, ["]"] if tools and fmt == "plain" else []  # a plain call ends its turn

    def make(row: dict) -> Any:
        return factory(row) if factory else ToolEnvironment(env.reward, tools, fmt, cfg.env.tool_timeout_s, tokenizer)

    def rollout(engine: RolloutEngine, examples: list[dict], with_logps: bool) -> Rollout:
        rows = [{"prompt": e["prompt"], "columns": e["columns"]} for e in examples for _ in range(K)]
        ids = [e["prompt_input_ids"] for e in examples for _ in range(K)]
        eps = run_episodes(engine, tokenizer, rows, ids, [make(r) for r in rows], cfg.sampling,
                           max_turns=cfg.env.max_turns, max_tokens=cfg.env.episode_tokens(cfg.sampling.max_new_tokens),
                           turn_stop_strings=stops, with_logps=with_logps)
        ro = episodes_rollout(tokenizer, eps, K, device, with_logps=with_logps, version=engine.version)
        ro.extra["metrics"] = episode_metrics(eps)
        return ro

    return rollout


def _importance_weights(cfg: PPOConfig, ro: Rollout, ev: dict[str, Any], mask: torch.Tensor,
                        how: dict[str, Any]) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Truncated importance weights π_old / π_engine (ppo.tis) and the mismatch metrics, when the
    engine's log-probs were kept and π_old came from the trainer's forward."""
    if ro.logps is None or how["sampler_logps"]:
        return None, {}
    tis = how["tis"]
    w, tm = truncated_importance_weights(ev["old_logps"], ro.logps, mask, cfg.ppo.tis_cap,
                                         "sequence" if tis == "sequence" else "token", cfg.ppo.tis_mode)
    is_weights = w if tis != "off" else None
    metrics = {"engine/mismatch_kl": float(tm["mismatch_kl"]), "engine/mismatch_k1": float(tm["mismatch_k1"])}
    if is_weights is not None:
        metrics.update({"engine/capped_fraction": float(tm["capped_fraction"]),
                        "engine/is_weight": float(tm["weight"])})
    return is_weights, metrics


def _batch(ro: Rollout, ev: dict[str, Any], adv: dict[str, Any], is_weights: torch.Tensor | None
           ) -> dict[str, torch.Tensor]:
    """The update's batch: the rollout's tokens, the loss mask and the per-token targets."""
    batch = {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask,
             "position_ids": ro.position_ids, "mask": adv["loss_mask"], "old_logps": ev["old_logps"],
             "advantages": adv["advantages"]}
    if ev["ref_logps"] is not None:  # (absent without a reference: β = 0, the loss never reads it)
        batch["ref_logps"] = ev["ref_logps"]
    if ev["values"] is not None:
        batch.update(old_values=ev["values"], returns=adv["returns"])
    if is_weights is not None:
        batch["is_weights"] = is_weights
    return batch


def _metrics(trainer: Trainer, ro: Rollout, sc: dict[str, Any], ev: dict[str, Any], adv: dict[str, Any],
             mask: torch.Tensor, upd: dict[str, float], engine_metrics: dict[str, float], times: list[float],
             n_completions: float, mean_kl: float | None, beta: float, env: SingleTurn) -> dict[str, Any]:
    """One step's metrics, means over every process's completions (no ``kl`` when ``mean_kl``
    is None: not measured, without a reference)."""
    device, raw = trainer.device, sc["raw"]

    def mean(x: torch.Tensor, n: float = n_completions) -> float:
        return float(trainer.reduce_sum(x.float().sum())) / n

    t0, t_gen, t_score, t_update = times
    metrics = {
        "score": mean(raw), "score_std": float(raw.std()) if len(ro) > 1 else 0.0,
        **({"kl": mean_kl} if mean_kl is not None else {}), "beta": beta,
        "entropy": float(masked_mean(ev["entropy"], mask)),
        "response_length": mean(ro.lengths), "eos_fraction": mean(ro.ended),
        **upd, **engine_metrics,
        "time_generate_s": round(t_gen - t0, 3), "time_score_s": round(t_score - t_gen, 3),
        "time_update_s": round(t_update - t_score, 3),
        "episodes_per_s": round(n_completions / max(t_update - t0, 1e-9), 3),
    }
    if env.mean is not None and env.std:
        metrics["score_normalized"] = (metrics["score"] - env.mean) / env.std
    if ev["values"] is not None:
        assert adv["returns"] is not None  # the critic's estimator returns them
        metrics["explained_variance"] = explained_variance(ev["values"], adv["returns"], mask)
    if sc["greedy"] is not None:
        metrics["greedy_score"] = mean(sc["greedy"]) * len(ro) / len(sc["greedy"])
    for k, v in sc["track"].items():
        metrics[k] = mean(v.to(device))
    return metrics


def _summary(cfg: PPOConfig, n_prompts: int, placement: str, estimator: str, history: list[dict[str, Any]],
             beta: float, last: dict[str, Any]) -> dict[str, Any]:
    tail = history[-max(1, len(history) // 10):]
    return {
        "prompts": n_prompts, "advantage": cfg.advantage, "kl_placement": placement,
        "kl_estimator": estimator, "samples_per_prompt": cfg.sampling.num_samples,
        "initial_score": history[0]["score"] if history else None,
        "final_score": sum(h["score"] for h in tail) / len(tail) if tail else None,
        # (null when the KL was not measured: no reference at β = 0, or a step without it)
        "final_kl": (sum(h["kl"] for h in tail) / len(tail)
                     if tail and all(h.get("kl") is not None for h in tail) else None),
        **{f"final_{k}": sum(h[k] for h in tail) / len(tail) for k in (tail[0] if tail else {})
           if k.startswith("track/")},
        "final_beta": beta,
        "last_step": {k: v for k, v in last.items() if isinstance(v, (int, float))},
    }


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
