"""Offline preference optimisation: DPO and its family (cDPO, robust DPO, IPO, SLiC hinge, SimPO,
ORPO) on preference pairs, and KTO on unpaired desirable/undesirable examples.

The policy is trained directly on preferences, with no reward model and no sampling. Every loss
is a pure function in rlhf/losses/preference.py, chosen by name (``loss=``); this recipe only
produces its inputs, the per-sequence SUMMED completion log-probs of the policy and, for the
losses that need one, of the frozen reference policy:

* **One forward pass for a pair.** ``PreferenceCollator`` puts the B chosen and the B rejected
  sequences in one batch of 2B rows (chosen first); one forward scores both, and the per-token
  log-probs are summed over each row's completion. The forward runs on the batch's *packed*
  layout (rlhf/logprobs.py): the 2B sequences back to back without padding, positions
  restarting per sequence, and logits only where a completion token is predicted, so no compute
  goes to padding and the lm_head skips the prompts (``packed=false``: the padded batch).
  Lengths (number of completion tokens) go along for the losses that length-normalise (IPO,
  SimPO, ORPO, NLL term).
* **Reference log-probs** (``reference=cached``, the default) are computed once before the
  first step, for every training and evaluation example, and saved in
  ``output_dir/reference_logps.safetensors`` keyed by example index (with a fingerprint of the
  token ids and the reference model). A resumed run reads them back instead of recomputing them.
  The reference model is then dropped, so training holds one model. ``reference=online``
  keeps the reference and runs it on every micro-batch instead. Both run the reference in the
  *bucketed* layout: each sequence alone, padded to a multiple of 16 tokens. The summation
  order of a matmul depends on the shapes, and this makes an example's reference log-prob the
  same bits in any batch, so cached and online numbers are equal exactly. With LoRA the reference is
  the policy with its adapters disabled (no second copy). Losses that need no reference
  (SimPO, ORPO) never load one.
* **Reduction.** Each loss returns one value per pair (per example for KTO); the step loss is
  their sum divided by the number of pairs in the whole optimizer-step batch (the trainer's
  global denominator), so gradient accumulation and data parallelism give the full-batch
  gradient exactly (house rule 2).
* **KTO's reference point z0** (Ethayarajh et al. 2024) is estimated from mismatched pairs:
  every example carries a "KL row", its own prompt followed by another example's completion.
  The partner is fixed once when the data is prepared (the next example in a seeded shuffle
  whose prompt differs, as TRL builds its KL dataset), so the reference log-probs of these rows
  can be cached like the others. z0 is computed without gradient over the whole step batch
  (all micro-batches and processes) before the first backward, so accumulation stays exact.

Metrics per step: loss, reward_accuracy (implicit reward of chosen > rejected), reward_margin,
chosen/rejected log-probs and implicit rewards, grad_norm. At the end, held-out implicit-reward
accuracy, margin and loss go to summary.json. For KTO on data that came as pairs (a preference
file read as unpaired), the held-out accuracy compares the two completions of each row.

Run it with ``rlhf dpo --recipe tiny [loss=ipo] [key=value ...]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

import torch
from safetensors import safe_open

from rlhf.config import ConfigError, opt
from rlhf.data.collate import PadCollator, PreferenceCollator
from rlhf.data.config import DataConfig
from rlhf.data.load import load_train_eval
from rlhf.data.tokenize import encode_records_aligned, rendering_summary
from rlhf.logprobs import BUCKET
from rlhf.logprobs import sequence_logps as _sequence_logps
from rlhf.losses.preference import PREFERENCE_LOSSES, add_nll_term, is_paired, kto_reference_point, needs_reference
from rlhf.models.config import ModelConfig
from rlhf.models.load import (
    ReferenceModel,
    check_sequence_limit,
    count_parameters,
    load_causal_lm,
    load_reference,
    load_tokenizer,
)
from rlhf.train.config import TrainConfig
from rlhf.train.run import RunDirError, save_safetensors
from rlhf.train.trainer import Trainer

__all__ = ["DPOConfig", "train", "sequence_logps", "compute_reference_logps", "OnlineReference", "evaluate",
           "CACHE_FILE"]

CACHE_FILE = "reference_logps.safetensors"
REFERENCE_LAYOUT = f"bucketed-{BUCKET}"  # part of the cache fingerprint
LossName = Literal["dpo", "robust", "ipo", "hinge", "simpo", "orpo", "kto"]


@dataclass(frozen=True)
class DPOConfig:
    output_dir: str = opt("runs/dpo", "folder for config.yaml, metrics.jsonl, the reference log-prob "
                                      "cache, checkpoints, final/ and summary.json")
    model: ModelConfig = opt(factory=ModelConfig, help="the policy to train; its initial weights are "
                                                       "the reference (with LoRA: adapters disabled)")
    data: DataConfig = opt(factory=DataConfig, help="preference pairs (unpaired desirable/undesirable "
                                                    "examples, or pairs split in two, for kto)")
    train: TrainConfig = opt(factory=TrainConfig, help="optimisation")
    loss: LossName = opt("dpo", "dpo (sigmoid), robust (unbiased under label noise), ipo, hinge "
                                "(SLiC), simpo and orpo (reference-free), kto (unpaired)")
    beta: float | None = opt(None, "inverse temperature of the implicit reward (ORPO: the weight λ of "
                                   "the odds-ratio term); null = the loss's default (0.1; simpo 2.0)", gt=0)
    label_smoothing: float = opt(0.0, "assumed label-flip rate ε: cDPO with loss=dpo, the unbiased "
                                      "estimator with loss=robust", ge=0, lt=0.5)
    gamma: float = opt(0.5, "SimPO's target reward margin γ (loss=simpo only)", ge=0)
    rpo_alpha: float = opt(0.0, "weight of an extra NLL term on the chosen completion (length-"
                                "averaged, RPO); paired losses only; 0 = none", ge=0)
    desirable_weight: float = opt(1.0, "KTO weight λ_D of desirable examples", gt=0)
    undesirable_weight: float = opt(1.0, "KTO weight λ_U of undesirable examples", gt=0)
    reference: Literal["cached", "online"] = opt(
        "cached", "cached: reference log-probs computed once before training and saved with the run "
                  "(reused on resume); online: run the reference on every batch")
    reference_model: str | None = opt(None, "a checkpoint to use as the reference instead of the policy's "
                                            "initial weights (e.g. the first policy of iterative DPO); "
                                            "null = the initial policy")
    packed: bool = opt(True, "run the policy on packed rows (sequences back to back, no padding) with "
                             "logits only at completion positions, where a probe of the model class shows "
                             "packing is exact (else padded rows, said once: rlhf/models/packing.py)")

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train", "is required: a .jsonl/.json/.parquet/.csv file, a dataset "
                                            "folder or a hub id")
        if self.data.packing:
            raise ConfigError("data.packing", "is not supported by preference training: chosen and "
                                              "rejected are scored as whole rows (got true)")
        if self.reference_model and self.loss in ("simpo", "orpo"):
            raise ConfigError("reference_model", f"loss={self.loss} uses no reference (got {self.reference_model!r})")
        if self.reference_model and self.model.lora.enabled:
            raise ConfigError("reference_model", "with LoRA the reference is the policy with its adapters disabled; "
                                                 f"a separate one is not supported (got {self.reference_model!r})")
        if self.label_smoothing > 0 and self.loss not in ("dpo", "robust"):
            raise ConfigError("label_smoothing", f"applies to loss=dpo (cDPO) or loss=robust only "
                                                 f"(got {self.label_smoothing} with loss={self.loss})")
        if self.rpo_alpha > 0 and self.loss == "kto":
            raise ConfigError("rpo_alpha", f"adds an NLL term on the chosen completion of a pair; "
                                           f"kto has no pairs (got {self.rpo_alpha})")
        if self.loss == "kto" and not self.data.completion_only_loss:
            raise ConfigError("data.completion_only_loss", "must be true for kto: the mismatched "
                              "pairs that estimate z0 are built from each example's prompt/completion split")


# --------------------------------------------------------------------------- log-probs


def sequence_logps(model: Callable, batch: dict[str, torch.Tensor], prefix: str = "",
                   layout: str = "packed") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed completion log-probs (N,) float32 and completion lengths (N,).

    ``prefix`` selects a sub-batch stored under prefixed keys (``kl_`` rows of KTO).
    ``model`` is the policy or a :class:`ReferenceModel` (called the same way). ``layout``:
    see :func:`rlhf.logprobs.sequence_logps` (the policy runs ``packed`` unless
    ``packed_forward`` is off; the reference always runs ``bucketed``).
    """
    sub = {k[len(prefix):]: v for k, v in batch.items() if k.startswith(prefix)} if prefix else batch
    return _sequence_logps(model, sub, layout)


def _policy_layout(cfg: DPOConfig) -> str:
    return "packed" if cfg.packed else "padded"


def _reference_keys(loss: str) -> tuple[str, ...]:
    """Per-example float fields holding reference log-probs, and the sub-batch prefix of each."""
    return ("ref_logps", "ref_kl_logps") if loss == "kto" else ("ref_chosen_logps", "ref_rejected_logps")


@torch.no_grad()
def _reference_batch_logps(ref: ReferenceModel, batch: dict[str, torch.Tensor], loss: str) -> dict[str, torch.Tensor]:
    """The reference log-prob fields of one collated batch (see :func:`_reference_keys`).

    Computed in the ``bucketed`` layout: each sequence alone, padded to a multiple of 16
    tokens, so its value does not depend on its batch-mates or the batch size (the matmul
    shapes, hence the floating-point summation order, would), and the cached numbers and the
    online ones are the same bits for the same example.
    """
    if loss == "kto":
        return {"ref_logps": sequence_logps(ref, batch, layout="bucketed")[0],
                "ref_kl_logps": sequence_logps(ref, batch, "kl_", layout="bucketed")[0]}
    B = batch["input_ids"].shape[0] // 2
    seq = sequence_logps(ref, batch, layout="bucketed")[0]  # (2B,)
    return {"ref_chosen_logps": seq[:B], "ref_rejected_logps": seq[B:]}


@torch.no_grad()
def compute_reference_logps(trainer: Trainer, ref: ReferenceModel, examples: list[dict], collate,
                            loss: str) -> dict[str, torch.Tensor]:
    """Reference log-probs of every example, in example order: ``{field: (N,) float32}``.

    Batches of ``train.eval_batch_size`` examples under the run's autocast, in the batch-invariant
    ``bucketed`` layout (see :func:`_reference_batch_logps`), so the numbers are those online
    mode computes for the same example. Computed on the main process (the others read the cache
    file it writes).
    """
    from rlhf.console import pass_progress

    out: dict[str, list[torch.Tensor]] = {k: [] for k in _reference_keys(loss)}
    bs = trainer.cfg.eval_batch_size
    with pass_progress(f"{trainer.stage}: reference log-probs", len(examples), unit="example",
                       enabled=trainer.cfg.progress and len(examples) > bs) as bar:
        for k in range(0, len(examples), bs):
            batch = trainer.to_device(collate(examples[k:k + bs]))
            with trainer.accelerator.autocast():
                vals = _reference_batch_logps(ref, batch, loss)
            for name, v in vals.items():
                out[name].append(v.float().cpu())
            bar.update(len(examples[k:k + bs]))
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def _fingerprint(cfg: DPOConfig, splits: dict[str, list[dict]]) -> str:
    """What the cached numbers depend on: token ids and masks of every row, the reference model
    and the precision. A cache with another fingerprint belongs to another run."""
    h = hashlib.sha256()
    h.update(json.dumps([cfg.model.name_or_path, cfg.model.revision, cfg.reference_model, cfg.model.dtype,
                         cfg.train.mixed_precision, cfg.loss == "kto", REFERENCE_LAYOUT]).encode())
    for name, exs in splits.items():
        h.update(name.encode())
        for e in exs:
            for key in sorted(k for k in e if k.endswith(("input_ids", "completion_mask"))):
                h.update(key.encode())
                h.update(json.dumps(e[key]).encode())
    return h.hexdigest()


def _load_or_build_cache(trainer: Trainer, cfg: DPOConfig, ref: ReferenceModel | None,
                         splits: dict[str, tuple[list[dict], Callable]]) -> dict[str, dict[str, torch.Tensor]]:
    """Read ``output_dir/reference_logps.safetensors`` or compute and write it (atomically).

    Tensors are named ``<split>/<field>`` (e.g. ``train/ref_chosen_logps``), (N,) float32 in
    example-index order.
    """
    path = trainer.output_dir / CACHE_FILE
    fp = _fingerprint(cfg, {k: v[0] for k, v in splits.items()})
    if trainer.is_main and not path.exists():
        assert ref is not None
        tensors = {}
        for split, (exs, collate) in splits.items():
            for field, t in compute_reference_logps(trainer, ref, exs, collate, cfg.loss).items():
                tensors[f"{split}/{field}"] = t.contiguous()
        tmp = path.with_name(path.name + ".tmp")
        save_safetensors(tensors, tmp,
                         metadata={"fingerprint": fp, "loss_family": "kto" if cfg.loss == "kto" else "paired"})
        tmp.replace(path)
        trainer.print(f"[dpo] reference log-probs of {sum(len(v[0]) for v in splits.values())} examples "
                      f"cached in {path}")
    trainer.accelerator.wait_for_everyone()
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("fingerprint") != fp:
            raise RunDirError(f"{path} holds reference log-probs of other data or another reference model "
                              f"(fingerprint mismatch); delete it to recompute, or use another output_dir")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for split, (exs, _) in splits.items():
        out[split] = {}
        for field in _reference_keys(cfg.loss):
            t = tensors[f"{split}/{field}"]
            if t.shape != (len(exs),):
                raise RunDirError(f"{path}: {split}/{field} has shape {tuple(t.shape)}, expected ({len(exs)},)")
            out[split][field] = t
    return out


def _attach(examples: list[dict], values: dict[str, torch.Tensor]) -> None:
    for field, t in values.items():
        for e, v in zip(examples, t.tolist()):
            e[field] = v


class _WithReference:
    """Wrap a collator: add the examples' cached reference fields as (B,) float32 tensors."""

    def __init__(self, collate: Callable, fields: tuple[str, ...]):
        self.collate, self.fields = collate, fields

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collate(examples)
        if all(f in examples[0] for f in self.fields):
            for f in self.fields:
                batch[f] = torch.tensor([e[f] for e in examples], dtype=torch.float32)  # (B,)
        return batch


class _KTOCollator:
    """Unpaired examples -> the rows themselves (``input_ids`` ..., ``label``) plus their KL rows
    (own prompt + partner's completion) under ``kl_`` keys, both (B, T_*)."""

    def __init__(self, pad_token_id: int, padding_side: str):
        self.pad = PadCollator(pad_token_id, padding_side)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.pad(examples)
        kl = self.pad([{"input_ids": e["kl_input_ids"], "completion_mask": e["kl_completion_mask"]}
                       for e in examples])
        batch.update({f"kl_{k}": v for k, v in kl.items()})
        return batch


# --------------------------------------------------------------------------- data


def _encode(records: list, tokenizer, cfg: DataConfig, report) -> list[dict]:
    """Encode record by record, keeping each example's origin (file, row) for pairing in eval."""
    out = []
    # One call for all records: the skip rule (data.max_skip_fraction) and the truncation line
    # apply to the run, not to each record.
    for rec, enc in zip(records, encode_records_aligned(records, tokenizer, cfg, report)):
        if enc is not None:
            enc["origin"] = list(rec.origin) if rec.origin else None
            out.append(enc)
    return out


def _add_kl_rows(examples: list[dict], seed: int, max_length: int) -> None:
    """Give every KTO example its mismatched KL row: own prompt + a partner's completion.

    Partner: the next example in a seeded shuffle whose prompt differs (a few steps further if
    neighbours share a prompt, as the two halves of a preference pair do). The row is cut to
    ``max_length`` from the right (the prompt is already within budget).
    """
    def split(e):
        p = e["completion_mask"].index(1)
        return e["input_ids"][:p], e["input_ids"][p:]

    n = len(examples)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    for k, i in enumerate(order):
        prompt, _ = split(examples[i])
        j = order[(k + 1) % n]
        for step in range(1, min(n, 8)):
            j = order[(k + step) % n]
            if split(examples[j])[0] != prompt:
                break
        completion = split(examples[j])[1]
        ids = (prompt + completion)[:max_length]
        examples[i]["kl_input_ids"] = ids
        examples[i]["kl_completion_mask"] = ([0] * len(prompt) + [1] * len(completion))[:max_length]


# --------------------------------------------------------------------------- the loss


def _loss_kwargs(cfg: DPOConfig) -> dict[str, Any]:
    """Hyper-parameters for the chosen loss function (only those it takes)."""
    fn = PREFERENCE_LOSSES[cfg.loss]
    params = inspect.signature(fn).parameters
    kw: dict[str, Any] = {}
    if cfg.beta is not None:
        kw["beta"] = cfg.beta
    for name, value in (("label_smoothing", cfg.label_smoothing), ("gamma", cfg.gamma),
                        ("desirable_weight", cfg.desirable_weight),
                        ("undesirable_weight", cfg.undesirable_weight)):
        if name in params:
            kw[name] = value
    return kw


def _pair_losses(cfg: DPOConfig, logps: torch.Tensor, lengths: torch.Tensor, batch: dict[str, torch.Tensor]):
    """Per-pair losses (B,) and metrics from the (2B,) sequence log-probs of one batch."""
    B = logps.shape[0] // 2
    chosen, rejected = logps[:B], logps[B:]  # (B,) each
    losses, metrics = PREFERENCE_LOSSES[cfg.loss](
        chosen, rejected, batch.get("ref_chosen_logps"), batch.get("ref_rejected_logps"),
        lengths[:B], lengths[B:], **_loss_kwargs(cfg))
    losses = add_nll_term(losses, chosen, lengths[:B], cfg.rpo_alpha)
    metrics = dict(metrics, chosen_logps=chosen.detach(), rejected_logps=rejected.detach())
    return losses, metrics


class OnlineReference:
    """The reference run on each batch (``reference=online``), in the cache's layout."""

    def __init__(self, ref: ReferenceModel, loss: str,
                 gathered: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        # gathered(): the context the pass runs in; under FSDP it gathers the (sharded)
        # reference, whose bucketed pass runs a data-dependent number of forwards per process.
        self.ref, self.loss, self.gathered = ref, loss, gathered

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self.gathered():
            return _reference_batch_logps(self.ref, batch, self.loss)


def _with_online_reference(ref: OnlineReference | None, batch: dict[str, torch.Tensor], loss: str):
    """The batch with reference fields filled in by running ``ref`` when they are not cached."""
    if ref is None or all(k in batch for k in _reference_keys(loss)):
        return batch
    return {**batch, **ref(batch)}


def _units(mb: dict[str, torch.Tensor], paired: bool) -> torch.Tensor:
    """Pairs (or KTO examples) in a micro-batch: the unit of the global denominator."""
    n = mb["input_ids"].shape[0] // (2 if paired else 1)
    return torch.tensor(float(n), dtype=torch.float64)


def _paired_loss(cfg: DPOConfig, ref: OnlineReference | None, model, mb, denominator):
    mb = _with_online_reference(ref, mb, cfg.loss)
    logps, lengths = sequence_logps(model, mb, layout=_policy_layout(cfg))  # (2B,): chosen rows then rejected rows
    losses, metrics = _pair_losses(cfg, logps, lengths, mb)
    # Sum of per-pair losses over the global pair count: micro-batch losses add up to the mean.
    loss = losses.sum() / denominator.to(losses.dtype)
    return loss, {f"{k}_mean": v.sum() for k, v in metrics.items()}


@torch.no_grad()
def _kto_z0(trainer: Trainer, cfg: DPOConfig, model, ref: OnlineReference | None, micro_batches) -> torch.Tensor:
    """z0 over the step's whole batch (every micro-batch, every process), without gradient."""
    was_training = model.training
    model.eval()
    pol, refs = [], []
    for mb in micro_batches:
        with trainer.accelerator.autocast():
            mb = _with_online_reference(ref, mb, "kto")
            pol.append(sequence_logps(model, mb, "kl_", _policy_layout(cfg))[0].float())
        refs.append(mb["ref_kl_logps"].float())
    model.train(was_training)
    pol_all, ref_all = trainer.accelerator.gather(torch.cat(pol)), trainer.accelerator.gather(torch.cat(refs))
    return kto_reference_point(pol_all, ref_all)


def _kto_loss(cfg: DPOConfig, ref: OnlineReference | None, z0: torch.Tensor, model, mb, denominator):
    mb = _with_online_reference(ref, mb, "kto")
    logps, _ = sequence_logps(model, mb, layout=_policy_layout(cfg))  # (B,)
    losses, m = PREFERENCE_LOSSES["kto"](logps, mb["ref_logps"], mb["label"], z0, **_loss_kwargs(cfg))
    loss = losses.sum() / denominator.to(losses.dtype)
    d = m["desirable"]
    sums = {"desirable": d.sum(), "chosen_rewards_sum": (m["rewards"] * d).sum(),
            "rejected_rewards_sum": (m["rewards"] * (1 - d)).sum(),
            "chosen_logps_sum": (logps.detach() * d).sum(), "rejected_logps_sum": (logps.detach() * (1 - d)).sum()}
    return loss, sums


def _kto_metrics(m: dict[str, float]) -> dict[str, float]:
    """Per-class means from the summed KTO metrics (desirable and undesirable counts differ)."""
    n_d, n = m.pop("desirable"), m["units"]
    n_u = n - n_d
    for side, count in (("chosen", n_d), ("rejected", n_u)):
        for what in ("rewards", "logps"):
            s = m.pop(f"{side}_{what}_sum")
            m[f"{side}_{what}"] = s / count if count else float("nan")
    m["reward_margin"] = m["chosen_rewards"] - m["rejected_rewards"]
    m["desirable_fraction"] = n_d / n
    return m


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(trainer: Trainer, cfg: DPOConfig, model, ref: OnlineReference | None, examples: list[dict],
             collate) -> dict[str, float]:
    """Held-out implicit-reward accuracy and margin (and the loss, for paired losses).

    Paired losses: accuracy = fraction of pairs whose chosen implicit reward exceeds the
    rejected one (the loss's own reward: β·log-ratio, or β·mean log-prob for SimPO/ORPO).
    KTO: the implicit reward β·(logπ - logπ_ref) of the desirable completion exceeds that of the
    undesirable one of the same source row (pairs read as unpaired data); also the fraction of
    examples whose reward has the sign of their label.
    """
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    n = torch.zeros((), dtype=torch.float64, device=trainer.device)
    rewards: list[tuple[Any, bool, float]] = []
    for batch in trainer.eval_batches(examples, collate):
        with trainer.accelerator.autocast():
            batch = _with_online_reference(ref, batch, cfg.loss)
            if cfg.loss == "kto":
                logps, _ = sequence_logps(model, batch, layout=_policy_layout(cfg))
                beta = _loss_kwargs(cfg).get(
                    "beta", inspect.signature(PREFERENCE_LOSSES["kto"]).parameters["beta"].default)
                r = beta * (logps - batch["ref_logps"])  # (B,)
                label = batch["label"]
                sums["label_accuracy"] = sums.get("label_accuracy", 0) + ((r > 0) == label).double().sum()
                n += r.shape[0]
                rewards.extend(zip(batch["origin"], label.tolist(), r.tolist()))
                continue
            logps, lengths = sequence_logps(model, batch, layout=_policy_layout(cfg))
            losses, metrics = _pair_losses(cfg, logps, lengths, batch)
        n += losses.shape[0]
        for k, v in {"loss": losses.detach(), **metrics}.items():
            sums[k] = sums.get(k, 0) + v.double().sum()
    model.train()
    total = trainer.reduce_sum(n).clamp(min=1)
    out = {f"eval_{k}": float(trainer.reduce_sum(v) / total) for k, v in sums.items()}
    if cfg.loss == "kto":
        out.update(_kto_pair_accuracy(trainer, rewards))
    out["eval_examples"] = int(trainer.reduce_sum(n))
    return out


def _kto_pair_accuracy(trainer: Trainer, rewards: list[tuple[Any, bool, float]]) -> dict[str, float]:
    """Pairwise accuracy over source rows holding one desirable and one undesirable example.
    The two halves of a row may sit on different processes, so every process's rewards are
    gathered first."""
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import gather_object
        rewards = gather_object(rewards)
    by_row: dict[str, dict[bool, float]] = {}
    for origin, label, r in rewards:
        by_row.setdefault(json.dumps(origin), {})[bool(label)] = r
    pairs = [v for v in by_row.values() if len(v) == 2]
    if not pairs:
        return {}
    return {"eval_reward_accuracy": sum(v[True] > v[False] for v in pairs) / len(pairs), "eval_pairs": len(pairs)}


class _KeepOrigin:
    """Collate, and pass each example's origin through (for KTO's per-row pairing in eval)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples):
        batch = self.collate(examples)
        batch["origin"] = [e.get("origin") for e in examples]
        return batch


# --------------------------------------------------------------------------- the recipe


def train(cfg: DPOConfig) -> dict[str, Any]:
    paired, use_ref = is_paired(cfg.loss), needs_reference(cfg.loss)

    # Step 1. Open the run: output folder checks, resolved config.yaml, accelerator, seed.
    check_sequence_limit(cfg.model, cfg.data.max_length, "data.max_length")  # before any work
    trainer = Trainer(cfg.train, cfg.output_dir, cfg, stage="dpo")

    # Step 2. Data: pairs (one batch of 2B rows, chosen then rejected) or, for KTO, unpaired
    # examples each with its mismatched KL row.
    tokenizer = load_tokenizer(cfg.model)
    train_records, eval_records, report = load_train_eval(cfg.data, "preference" if paired else "unpaired")
    train_ex = _encode(train_records, tokenizer, cfg.data, report)
    eval_ex = _encode(eval_records or [], tokenizer, cfg.data, report)
    if report.counts:
        trainer.print(report.summary())
    trainer.print(f"[dpo] {rendering_summary(train_records, tokenizer, cfg.data)}")
    pad_id, side = tokenizer.pad_token_id, cfg.data.padding_side
    if paired:
        base_collate: Callable = PreferenceCollator(pad_id, side)
    else:
        _add_kl_rows(train_ex, cfg.data.seed, cfg.data.max_length)
        _add_kl_rows(eval_ex, cfg.data.seed + 1, cfg.data.max_length)
        base_collate = _KTOCollator(pad_id, side)
    collate = _WithReference(base_collate, _reference_keys(cfg.loss))

    # Step 3. The policy, and the reference if the loss needs one: a frozen copy of the
    # initial policy, or with LoRA the policy itself with adapters disabled.
    model = load_causal_lm(cfg.model)
    n = count_parameters(model)
    trainer.print(f"[dpo] loss={cfg.loss}; model {cfg.model.name_or_path}: {n['total']:,} parameters, "
                  f"{n['trainable']:,} trainable")
    ref: ReferenceModel | None = None
    if use_ref:
        ref = (load_reference(replace(cfg.model, name_or_path=cfg.reference_model, revision=None))
               if cfg.reference_model else load_reference(cfg.model, policy=model))
        if not ref.shares_policy_weights:
            # (A cached reference runs on the main process alone before training: never sharded.)
            if cfg.reference == "online":
                trainer.place_frozen(ref.module)
            else:
                ref.module.to(trainer.device)
        else:
            model.to(trainer.device)

    # Step 4. Reference log-probs, once, cached with the run (reused on resume); then the
    # separate reference copy is dropped. Online mode keeps it for every batch.
    if use_ref and cfg.reference == "cached":
        splits = {"train": (train_ex, base_collate)}
        if eval_ex:
            splits["eval"] = (eval_ex, base_collate)
        cache = _load_or_build_cache(trainer, cfg, ref, splits)
        _attach(train_ex, cache["train"])
        if eval_ex:
            _attach(eval_ex, cache["eval"])
        ref = None  # a frozen copy is freed; a LoRA reference was the policy anyway
    online = (OnlineReference(ref, cfg.loss, partial(trainer.gathered, ref.module))
              if ref is not None else None)

    # Step 5. Optimizer, schedule, distribution wrapper; restore the newest checkpoint if any.
    model = trainer.setup(model, num_examples=len(train_ex))
    eval_collate = _KeepOrigin(collate)

    # Step 6. The loop: one optimizer step per global batch; per-pair losses over the global
    # pair count, so accumulation is exact.
    units = partial(_units, paired=paired)
    last_eval: dict[str, float] = {}
    for step, micro_batches in trainer.steps(train_ex, collate):
        if paired:
            metrics = trainer.optimize(micro_batches, units, partial(_paired_loss, cfg, online))
            metrics = {k.removesuffix("_mean"): v for k, v in metrics.items()}
        else:
            z0 = _kto_z0(trainer, cfg, model, online, micro_batches)
            metrics = _kto_metrics(trainer.optimize(micro_batches, units, partial(_kto_loss, cfg, online, z0)))
            metrics["kl"] = float(z0)
        metrics["pairs" if paired else "examples"] = metrics.pop("units")
        if eval_ex and trainer.should_eval(step):
            last_eval = evaluate(trainer, cfg, model, online, eval_ex, eval_collate)
            metrics.update(last_eval)
        trainer.log(step, metrics)
        trainer.maybe_checkpoint(step, tokenizer)

    # Step 7. Final held-out evaluation, final model, summary.
    if eval_ex and not last_eval:
        last_eval = evaluate(trainer, cfg, model, online, eval_ex, eval_collate)
    summary = {"loss": cfg.loss, "reference": cfg.reference if use_ref else "none",
               "train_examples": len(train_ex), "eval_examples": len(eval_ex),
               "skipped_rows": dict(report.counts), **last_eval}
    return trainer.finish(tokenizer, summary)
