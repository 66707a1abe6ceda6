"""The PPO family's update, between a rollout and the next: the pieces every estimator shares.

Given a :class:`rlhf.rollout.Rollout` and its scores, one training step of PPO / GRPO / Dr. GRPO /
RLOO / REINFORCE++ / ReMax (the recipe, rlhf/recipes/ppo.py, calls them in this order):

1. :func:`evaluate_rollout`  log-probs of the actions under π_old and π_ref, the critic's values,
                             without gradient
2. :func:`shape_advantages`  per-token KL and rewards, the advantages of the estimator named
                             (rlhf.advantages.ESTIMATOR_SPECS: its settings live beside it), the
                             loss mask (the rollout's policy tokens, less uninformative groups)
3. :func:`update`            ``ppo.epochs`` passes over the batch in ``ppo.num_minibatches``
                             optimizer steps on the loss of :func:`policy_loss_fn`: the policy loss
                             named by ``ppo.loss`` (rlhf.losses.policy.POLICY_LOSSES) + the clipped
                             value loss + KL in the loss + the entropy bonus, exact accumulation
4. the β controller named by ``kl.controller`` (:func:`kl_controller`, rlhf.kl.KL_CONTROLLERS)

Only tokens of the rollout's ``loss_mask`` (the policy's own) carry log-probs, KL, advantages
and loss: observation tokens of a multi-turn episode (rlhf/envs) are context only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from rlhf.advantages import ESTIMATOR_SPECS, compute_advantages, informative_groups, token_rewards
from rlhf.config import ConfigError, opt
from rlhf.data.collate import PackedLayout
from rlhf.kl import KL_CONTROLLERS, AdaptiveKLController, FixedKLController, kl_estimate, kl_k1
from rlhf.logprobs import entropy_from_logits, shifted_token_logps, target_logps
from rlhf.losses.policy import POLICY_LOSSES, entropy_bonus, kl_loss, resolve_clip, value_loss
from rlhf.masking import Aggregation, count_units, masked_sum, masked_var, masked_whiten
from rlhf.models.load import score_tokens
from rlhf.models.packing import use_packed
from rlhf.rollout import Rollout, rollout_logps, rollout_values, shift_values

__all__ = ["KLConfig", "PolicyLossConfig", "PolicyAndValue", "shared_value_head", "visiting", "kl_controller",
           "needs_reference", "evaluate_rollout", "shape_advantages", "policy_loss_fn", "update", "explained_variance"]


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
    controller: str = opt("auto", "the β controller, by name (rlhf.kl.KL_CONTROLLERS): fixed, adaptive (needs "
                                  "target); auto = adaptive when target is set, else fixed",
                          choices=("auto", *KL_CONTROLLERS))
    measure: bool = opt(False, "load the reference and log the KL to it even when nothing needs it; by default "
                               "β = 0 with a fixed β and no tracked reward skips the reference (no copy, no "
                               "pass) and the KL is not measured")

    def validate(self) -> None:
        if self.controller == "adaptive" and self.target is None:
            raise ConfigError("controller", "adaptive needs kl.target (the KL per completion to steer towards)")
        if self.controller == "fixed" and self.target is not None:
            raise ConfigError("target", f"is for the adaptive controller, but kl.controller=fixed (got {self.target}); "
                                        f"set kl.controller=auto or adaptive, or kl.target=null")

    def resolved(self, advantage: str) -> tuple[str, str]:
        """(placement, estimator) with the autos filled in (placement: the estimator's own,
        rlhf.advantages.ESTIMATOR_SPECS)."""
        placement = self.placement
        if placement == "auto":
            placement = ESTIMATOR_SPECS[advantage].kl_placement
        estimator = self.estimator
        if estimator == "auto":
            estimator = "k3" if placement == "loss" else "k1"
        return placement, estimator


@dataclass(frozen=True)
class PolicyLossConfig:
    loss: str = opt("ppo_clip", "the policy loss, by name (rlhf.losses.policy.POLICY_LOSSES): ppo_clip (PPO's "
                                "clipped surrogate), gspo (one length-normalised ratio per completion, clipped "
                                "per completion; needs a per-completion advantage), cispo (REINFORCE with a "
                                "clipped stop-gradient importance weight: no token loses its gradient)",
                    choices=tuple(POLICY_LOSSES))
    epochs: int = opt(2, "passes over each rollout batch (PPO epochs)", gt=0)
    num_minibatches: int = opt(1, "optimizer steps per epoch: the rollout batch is cut into this "
                                  "many minibatches", gt=0)
    clip: float | None = opt(None, "ε_low: the ratio is clipped to [1-ε_low, 1+ε_high]; null = the loss's own "
                                   "(ppo_clip 0.2, gspo 3e-4, cispo none: no lower bound)", gt=0, lt=1)
    clip_high: float | None = opt(None, "ε_high (DAPO's clip-higher when above clip); null = the loss's own "
                                        "(ppo_clip: = clip, gspo 4e-4, cispo 5)", gt=0)
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
                "constant (Dr. GRPO: sum / max_new_tokens); auto = the loss's own for gspo (sequence_mean), "
                "else the estimator's (constant for dr_grpo, else token_mean)")
    missing_eos_penalty: float | None = opt(None, "the EOS trick: subtract this from the score of a "
                                                  "completion cut at max_new_tokens; null = off", ge=0)
    drop_uninformative_groups: bool = opt(False, "leave out of the loss the prompts whose K samples "
                                                 "all scored the same (DAPO dynamic sampling, simplified)")
    dynamic_sampling: bool = opt(False, "DAPO's dynamic sampling: replace the prompts whose K samples all scored "
                                        "the same by fresh prompts drawn from data.train, sampled and scored, "
                                        "until the batch is full or dynamic_sampling_retries run out (then the "
                                        "rest stay, left out of the loss); retries logged as dynamic/*; "
                                        "one-turn episodes only (not with env.tools / env.factory yet)")
    dynamic_sampling_retries: int = opt(3, "dynamic sampling: extra sampling rounds per step at most", ge=0)
    overlong_cache: int | None = opt(None, "DAPO's overlong penalty: a completion longer than max_new_tokens - "
                                           "this many tokens loses up to overlong_coef, linearly (the full "
                                           "amount at max_new_tokens); null = off", ge=0)
    overlong_coef: float = opt(1.0, "the overlong penalty at max_new_tokens", ge=0)
    old_logps: Literal["auto", "sampler", "forward"] = opt(
        "auto", "where π_old's log-probs (the ratio's denominator, the KL) come from: sampler = the "
                "logits the sampler drew each token from (no extra forward pass; equal to a forward "
                "pass up to float rounding, ~1e-6 in fp32); forward = a separate no-grad pass over the "
                "rollout; auto = sampler in fp32 with the built-in engine, forward under bf16 (where the "
                "KV-cache and the full forward round differently) or with another engine (vllm); "
                "sampler and auto become forward, said once, where a probe finds the model's cached "
                "decoding is not its forward (rlhf/models/layouts.py)")
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

def needs_reference(cfg: KLConfig, tracked: bool = False) -> bool:
    """Whether the loop needs π_ref: for the KL penalty (β > 0), for the adaptive controller
    (which steers the measured KL, starting from any β), and for the tracked rewards (``tracked``:
    the over-optimisation plot of ``rlhf report`` sets them against the KL), and when asked
    (``kl.measure``). Otherwise (β = 0 with a fixed controller) no reference is loaded and none
    of its passes run: the KL is then not measured (not 0)."""
    name = cfg.controller if cfg.controller != "auto" else ("adaptive" if cfg.target else "fixed")
    return cfg.measure or cfg.beta > 0 or name != "fixed" or tracked


def kl_controller(cfg: KLConfig) -> FixedKLController | AdaptiveKLController:
    """The β controller ``kl.controller`` names (auto: adaptive when ``kl.target`` is set)."""
    name = cfg.controller if cfg.controller != "auto" else ("adaptive" if cfg.target else "fixed")
    return KL_CONTROLLERS[name].build(cfg.beta, cfg.target, cfg.horizon)


# --------------------------------------------------------------------------- models


class PolicyAndValue(nn.Module):
    """The trained modules of the loop in one container, so one optimizer, one checkpoint and
    one distributed wrapper cover both: ``policy`` (a causal LM) and the critic, either
    ``value`` (a separate scalar model) or ``value_head`` (a linear head on the policy's own
    final hidden states: ``value_model: shared``), or neither (the critic-free estimators).
    ``forward`` returns logits (B, T, V), or with ``targets`` only the log-probs (B, T) of the
    tokens there, and the critic's values aligned with actions (B, T) (rlhf.rollout.shift_values)
    or None."""

    def __init__(self, policy: nn.Module, value: nn.Module | None = None, value_head: nn.Module | None = None,
                 packed: bool = False):
        super().__init__()
        if value is not None and value_head is not None:
            raise ValueError("a separate value model or a shared value head, not both")
        self.policy = policy
        self.value = value
        self.value_head = value_head
        self.packed = packed

    def forward(self, input_ids, attention_mask, position_ids, targets=None, temperature=1.0):
        """With ``packed`` the models run on the batch's packed layout (rlhf.data.collate.
        PackedLayout: sequences back to back, no padding) and the outputs are unpacked to the
        padded (B, T) layout (logits 0 on padding; values are read at t - 1, see shift_values):
        the same numbers up to float rounding.

        ``targets`` (B, T) bool: return, in place of the logits, the log-probs (B, T) float32 at
        ``temperature`` of the tokens there (0 elsewhere; position 0 is never a target). The LM
        head then runs only where a target is predicted, in slices at a large vocabulary
        (rlhf.logprobs.chunked_head_logps), so the (B, T, V) logits and their gradient are never
        made: the policy loss reads nothing else. With a shared value head (it reads the final
        hidden states of every position) or no target at all, the logits are made as without and
        the log-probs of every position are read from them."""
        layout = None
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if use_packed(self.packed, self.policy, self.value):
            layout = PackedLayout(attention_mask)
            inputs = {"input_ids": layout.pack_ids(input_ids), "attention_mask": None,
                      "position_ids": layout.position_ids}

        def unpacked(x: torch.Tensor) -> torch.Tensor:
            return x if layout is None else layout.unpack(x)

        # a separate critic reads the same inputs whichever way the policy runs
        separate = None if self.value is None else shift_values(unpacked(score_tokens(self.value, **inputs).float()))
        want_logps = targets is not None
        if targets is not None and self.value_head is None:
            t = targets.bool().clone()
            t[:, 0] = False  # nothing predicts the first token
            if layout is not None:
                t = layout.pack(t, False) & ~layout.starts
            if bool(t.any()):
                ids = inputs["input_ids"]
                lp = target_logps(self.policy, ids, inputs["position_ids"], t, temperature,
                                  inputs["attention_mask"])  # (n,) float32
                logps = unpacked(torch.zeros(t.shape, dtype=lp.dtype, device=lp.device).masked_scatter(t, lp))
                return logps, separate
            # no target at all (every group of the micro-batch dropped): the full pass below

        shared = self.value_head is not None
        out = self.policy(**inputs, use_cache=False, output_hidden_states=shared)
        values = separate
        if self.value_head is not None:  # the last entry of hidden_states is the final (normed) one the LM head reads
            values = shift_values(unpacked(self.value_head(out.hidden_states[-1]).squeeze(-1).float()))
        if want_logps:  # (the shared value head, or no target: log-probs from the whole logits)
            return shifted_token_logps(unpacked(out.logits), input_ids, temperature), values
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


# --------------------------------------------------------------------------- one step


def evaluate_rollout(ro: Rollout, *, policy: nn.Module, model: PolicyAndValue, reference: Any,
                     ref_modules: list[nn.Module], trainer: Any, temperature: float, batch_size: int,
                     sampler_logps: bool, scoring: str, packed: bool, device: torch.device,
                     home: torch.device) -> dict[str, Any]:
    """Old log-probs (+ entropy), reference log-probs and values of the rollout's actions, no
    gradient. ``sampler_logps``: π_old's come from the sampler's own logits (``ro.logps``).
    ``reference=None`` (the KL is not needed: :func:`needs_reference`): no reference pass, and
    ``ref_logps`` is None."""
    with trainer.accelerator.autocast(), trainer.gathered():
        if sampler_logps:  # kept by the sampler (ppo.old_logps)
            old_logps, entropy = ro.logps, ro.entropy
        else:
            old_logps, entropy = rollout_logps(policy, ro, temperature, batch_size, with_entropy=True,
                                               engine=scoring, packed=packed)
        values = model.rollout_values(ro, batch_size)
    if reference is None:
        return {"old_logps": old_logps, "entropy": entropy, "ref_logps": None, "values": values}
    # (the reference is gathered for its own pass: the policy itself with LoRA, else its copy)
    with trainer.accelerator.autocast(), trainer.gathered(*ref_modules):
        with visiting(ref_modules, device, home):
            ref_logps = rollout_logps(reference, ro, temperature, batch_size, engine=scoring, packed=packed)
    return {"old_logps": old_logps, "entropy": entropy, "ref_logps": ref_logps, "values": values}


def shape_advantages(advantage: str, ev: dict[str, Any], mask: torch.Tensor, scores: torch.Tensor, *,
                     beta: float, placement: str, estimator: str, cfg: PolicyLossConfig, group_size: int,
                     greedy_scores: torch.Tensor | None, reduce: Any, token_bonus: torch.Tensor | None = None,
                     in_loss: torch.Tensor | None = None) -> dict[str, Any]:
    """Per-token KL and rewards, then the advantages (and the critic's returns) of estimator
    ``advantage``; the loss mask drops uninformative groups when asked. ``mask``: the actions.
    ``token_bonus`` (B, T): a per-token reward from the environment (on-policy distillation's
    teacher), added where a KL penalty in the reward goes: per token, and summed per completion
    for the per-completion estimators. ``in_loss`` (B,): rows that stay in the loss (dynamic
    sampling's informative groups). ``ev["ref_logps"]`` None (no reference: β = 0 and a fixed
    controller) gives no KL in the reward and ``seq_kl`` None (not measured)."""
    spec = ESTIMATOR_SPECS[advantage]
    if ev["ref_logps"] is None:
        if beta > 0:
            raise ValueError("shape_advantages: beta > 0 needs the reference's log-probs (ev['ref_logps'] is None)")
        kl_tok, seq_kl = torch.zeros_like(mask), None
    else:
        kl_tok = kl_estimate(ev["old_logps"], ev["ref_logps"], estimator, mask)  # (B, T)
        seq_kl = masked_sum(kl_k1(ev["old_logps"], ev["ref_logps"], mask), mask, dim=-1)  # (B,) log π/π_ref
    in_reward = placement == "reward" and beta > 0
    rewards = token_rewards(scores, kl_tok if in_reward else torch.zeros_like(kl_tok), mask, beta)
    if token_bonus is not None:
        rewards = rewards + token_bonus
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=reduce)
    # Per-completion estimators see the score minus the completion's total KL penalty.
    seq_scores = scores - beta * masked_sum(kl_tok, mask, dim=-1) if in_reward else scores
    if token_bonus is not None:
        seq_scores = seq_scores + masked_sum(token_bonus, mask, dim=-1)
    # The advantages (and returns for the critic, taken before whitening).
    advantages, returns = compute_advantages(
        advantage, rewards=rewards, values=ev["values"], mask=mask, scores=seq_scores,
        greedy_scores=greedy_scores, group_size=group_size, gamma=cfg.gamma, lam=cfg.lam, reduce=reduce)
    if spec.whiten and cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask, reduce=reduce)
    loss_mask = mask
    if cfg.drop_uninformative_groups:
        keep = informative_groups(scores, group_size).repeat_interleave(group_size).float()  # (B,)
        loss_mask = mask * keep[:, None]
    if in_loss is not None:
        loss_mask = loss_mask * in_loss.to(loss_mask.dtype)[:, None]
    return {"advantages": advantages, "returns": returns, "loss_mask": loss_mask, "seq_kl": seq_kl}


def policy_loss_fn(cfg: PolicyLossConfig, *, aggregation: Aggregation, placement: str, estimator: str, kl_ctl: Any,
                   temperature: float, max_len: int) -> tuple[Callable, Callable]:
    """(loss_fn, units_fn) for :meth:`rlhf.train.trainer.Trainer.accumulate`: the policy loss
    ``cfg.loss`` names, + β·KL when the KL is in the loss, + the entropy bonus, + the value loss
    when the model has a critic; ``units_fn`` counts a micro-batch's units of the aggregation.

    A POLICY_LOSSES entry is called as ``loss(logps, old_logps, advantages, mask, cfg.clip,
    cfg.clip_high, aggregation=..., denominator=..., max_len=..., is_weights=...)`` (all (b, T)
    but the scalars; ``is_weights`` may be None) and returns ``(loss, metrics)`` with at least
    ``clip_fraction`` and ``approx_kl`` in the metrics, like ``ppo_clip_loss``."""
    policy_loss = POLICY_LOSSES[cfg.loss]
    clip_low, clip_high = resolve_clip(cfg.loss, cfg.clip, cfg.clip_high)  # null: the loss's own range

    def loss_fn(m: nn.Module, mb: dict[str, torch.Tensor], denom: torch.Tensor):
        mask = mb["mask"]
        if cfg.entropy_coef > 0:  # the entropy needs the whole distribution at each action
            logits, values = m(mb["input_ids"], mb["attention_mask"], mb["position_ids"])
            logps = shifted_token_logps(logits, mb["input_ids"], temperature)  # (b, T)
        else:  # the LM head only where an action is predicted (PolicyAndValue.forward)
            logps, values = m(mb["input_ids"], mb["attention_mask"], mb["position_ids"], targets=mask > 0,
                              temperature=temperature)
        agg: dict[str, Any] = {"aggregation": aggregation, "denominator": denom, "max_len": max_len}
        loss, pm = policy_loss(logps, mb["old_logps"], mb["advantages"], mask, clip_low, clip_high, **agg,
                               is_weights=mb.get("is_weights"))
        ntok = mask.sum().double()
        out = {"pg_loss": loss.detach(), "ntok": ntok, "w_clip_fraction": pm["clip_fraction"] * ntok,
               "w_approx_kl": pm["approx_kl"] * ntok}
        if placement == "loss" and kl_ctl.value > 0:  # (β > 0: ref_logps are there, needs_reference)
            kl_term, _ = kl_loss(logps, mb["ref_logps"], mask, kl_ctl.value, estimator, **agg)
            loss = loss + kl_term
        if cfg.entropy_coef > 0:
            ent = torch.zeros_like(logps)
            ent[:, 1:] = entropy_from_logits(logits[:, :-1], temperature)
            bonus, _ = entropy_bonus(ent, mask, cfg.entropy_coef, **agg)
            loss = loss + bonus
        if values is not None:
            vl, vm = value_loss(values, mb["old_values"], mb["returns"], mask, cfg.vf_clip, **agg)
            loss = loss + cfg.vf_coef * vl
            out.update(value_loss=vl.detach(), w_value_clip_fraction=vm["clip_fraction"] * ntok)
        return loss, out

    def units_fn(mb: dict[str, torch.Tensor]) -> torch.Tensor:
        return count_units(mb["mask"], aggregation)

    return loss_fn, units_fn


def update(trainer: Any, batch: dict[str, torch.Tensor], loss_fn: Callable, units_fn: Callable,
           cfg: PolicyLossConfig, grad_accum: int) -> dict[str, float]:
    """``cfg.epochs`` passes over the rollout batch, ``cfg.num_minibatches`` optimizer steps each;
    a minibatch is split into ``grad_accum`` micro-batches with the exact global denominator.
    Returns the metrics averaged over the updates that ran."""
    B = batch["input_ids"].shape[0]
    mb_size = B // cfg.num_minibatches
    micro_size = mb_size // grad_accum
    totals: dict[str, float] = {}
    n_updates, planned = 0, cfg.epochs * cfg.num_minibatches
    stop = False
    for _epoch in range(cfg.epochs):
        order = torch.randperm(B, device=batch["input_ids"].device)
        for k in range(cfg.num_minibatches):
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
            if cfg.target_kl is not None and m["approx_kl"] > cfg.target_kl:
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


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over completion tokens: 1 = the critic predicts returns exactly."""
    var_r = masked_var(returns, mask)
    return float(1 - masked_var(returns - values, mask) / var_r) if float(var_r) > 0 else float("nan")
