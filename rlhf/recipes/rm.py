"""Reward modelling: learn a scalar reward from people's pairwise or ranked comparisons.

The second step of RLHF (Stiennon et al. 2020; InstructGPT, Ouyang et al. 2022; Llama 2,
Touvron et al. 2023). A causal-LM trunk with a scalar head (``load_scalar_model``) scores the
last real token of ``prompt + completion``. Under the Bradley–Terry model
P(chosen ≻ rejected) = σ(r_c - r_r), and the loss is each pair's negative log-likelihood,
optionally with Llama 2's margin (``-log σ(r_c - r_r - m)``) and a reward-centring term
(rlhf/losses/reward.py holds all the math).

Three details this recipe owns:

* **One forward pass per micro-batch.** :class:`~rlhf.data.collate.PreferenceCollator` stacks
  the B chosen and the B rejected sequences into one (2B, T) batch; rows ``[:B]`` are chosen.
  The forward runs on the batch's packed layout (:class:`~rlhf.data.collate.PackedLayout`:
  the 2B sequences back to back, positions restarting per sequence, no compute on padding);
  ``packed=false`` runs the padded batch.
* **Ranked data counts each prompt once** (InstructGPT §3.5). A ranking of K responses gives
  K(K-1)/2 pairs; the training *example* is the prompt's group of pairs, so all of them land
  in the same batch, and each pair is weighted 1/(its group's pair count)
  (:func:`~rlhf.losses.reward.ranked_pair_weights`). ``train.batch_size`` therefore counts
  prompts (= pairs for pairwise data). The loss is Σ w·loss / Σ w over the whole optimizer
  step, exactly, however it is split (the trainer's global denominator is Σ w).
* **Normalisation statistics.** After training, the reward mean and std over a reference set
  (``stats.source``) are written to ``final/reward_stats.json``, with the tokenisation
  settings, so that :mod:`rlhf.rewards` can score new text exactly as in training and report
  normalised rewards.

Run it with ``rlhf rm --recipe tiny [key=value ...]``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlhf.config import ConfigError, opt
from rlhf.data.collate import PadCollator, PreferenceCollator
from rlhf.data.config import DataConfig
from rlhf.data.errors import MISSING, DataError, SkipReport
from rlhf.data.load import load_records, load_train_eval
from rlhf.data.records import PreferenceRecord
from rlhf.data.tokenize import encode_records, encode_records_aligned, rendering_summary
from rlhf.losses.reward import (
    bradley_terry_loss,
    expected_calibration_error,
    ranked_pair_weights,
    reward_centering_loss,
)
from rlhf.models.config import ModelConfig
from rlhf.models.load import (
    check_sequence_limit,
    count_parameters,
    load_scalar_model,
    load_tokenizer,
    packed_last_token_scores,
    score_last_token,
)
from rlhf.models.packing import use_packed
from rlhf.rewards import REWARD_STATS_FILE  # the file ModelReward reads
from rlhf.train.config import TrainConfig
from rlhf.train.trainer import Trainer

__all__ = ["RMConfig", "RewardLossConfig", "RewardStatsConfig", "train", "build_groups",
           "GroupCollator", "score_sequences", "evaluate_pairs", "reward_statistics",
           "ENCODING_FIELDS", "REWARD_STATS_FILE"]

# The DataConfig fields that decide how (prompt, completion) becomes token ids; stored with the
# model so that scoring later reproduces training's encoding.
ENCODING_FIELDS = ("max_length", "max_prompt_length", "prompt_truncation", "completion_truncation",
                   "chat_template", "text_as_chat", "add_eos", "padding_side")


@dataclass(frozen=True)
class RewardLossConfig:
    """The pairwise loss: Bradley–Terry, optional Llama 2 margin, optional reward centring."""

    margin: Literal["none", "column", "mapping"] = opt(
        "none", "none = plain Bradley-Terry; column = the data's margin column is m in "
                "-log σ(r_c - r_r - m) (map a rating column to it with data.columns.margin); "
                "mapping = the margin column holds rating levels, turned into m by margin_mapping")
    margin_mapping: dict[str, float] = opt(
        factory=dict, help="rating level (a number or a text label, matched ignoring case) -> margin, "
                           "e.g. {significantly better: 1.0, better: 0.67, slightly better: 0.33, "
                           "negligibly better: 0.0} (Llama 2 Table 28); used when margin is 'mapping'")
    centering_coef: float = opt(0.0, "c in the reward-centring term c·mean((r_c + r_r)^2) "
                                     "(Eisenstein et al. 2023); 0 = off", ge=0.0)
    ranked_weighting: Literal["per_prompt", "per_pair"] = opt(
        "per_prompt", "per_prompt: a prompt's K(K-1)/2 ranked pairs share one batch and weigh 1 "
                      "in total (InstructGPT); per_pair: every pair weighs 1 and is batched alone")

    def validate(self) -> None:
        if self.margin == "mapping":
            if not self.margin_mapping:
                raise ConfigError("margin_mapping", "must map each rating level to a margin when "
                                  "margin is 'mapping' (got an empty mapping)")
            for k, v in self.margin_mapping.items():
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    raise ConfigError(f"margin_mapping.{k}", f"must be a finite number (got {v!r})")


@dataclass(frozen=True)
class RewardStatsConfig:
    """The reference set whose reward mean/std are stored with the model for normalisation."""

    source: Literal["train_chosen", "eval_chosen", "file", "none"] = opt(
        "train_chosen", "train_chosen / eval_chosen: prompt + chosen response of the training / "
                        "held-out pairs; file: the prompt/completion rows of stats.data (e.g. "
                        "samples of the SFT policy); none: store no statistics")
    data: str | None = opt(None, "prompt/completion (or preference: prompt + chosen) file for "
                                 "source 'file'")
    max_samples: int = opt(2048, "score at most this many reference sequences (a seeded sample)", gt=0)

    def validate(self) -> None:
        if self.source == "file" and not self.data:
            raise ConfigError("data", "is required when stats.source is 'file' (got null)")


@dataclass(frozen=True)
class RMConfig:
    output_dir: str = opt("runs/rm", "folder for config.yaml, metrics.jsonl, checkpoints, final/ and summary.json")
    model: ModelConfig = opt(factory=ModelConfig, help="the causal-LM checkpoint the reward model starts from")
    data: DataConfig = opt(factory=DataConfig, help="preference data: pairwise or ranked")
    train: TrainConfig = opt(factory=TrainConfig, help="optimisation (batch_size counts prompts)")
    loss: RewardLossConfig = opt(factory=RewardLossConfig, help="the pairwise loss")
    stats: RewardStatsConfig = opt(factory=RewardStatsConfig, help="reward normalisation statistics")
    ece_bins: int = opt(10, "equal-width bins of the held-out expected calibration error", gt=0)
    packed: bool = opt(True, "score training pairs on packed rows (sequences back to back, no padding) "
                             "where a probe of the model class shows packing is exact (else padded rows, "
                             "said once: rlhf/models/packing.py)")

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train", "is required: a .jsonl/.json/.parquet/.csv file, a dataset "
                                            "folder or a hub id")
        if self.stats.source == "eval_chosen" and not (self.data.eval or self.data.eval_split
                                                       or self.data.eval_fraction > 0):
            raise ConfigError("stats.source", "'eval_chosen' needs held-out data (data.eval, "
                                              "data.eval_split or data.eval_fraction)")


# --------------------------------------------------------------------------- data


def rating_key(level: Any) -> float | str:
    """A rating level as a mapping key: numbers (3, 3.0, "3") compare as numbers, text labels
    ignoring case and surrounding spaces."""
    if isinstance(level, str):
        try:
            return float(level)
        except ValueError:
            return level.strip().casefold()
    return float(level)


def _resolve_margins(records: list[PreferenceRecord], cfg: RewardLossConfig, data_cfg: DataConfig,
                     report: SkipReport) -> list[PreferenceRecord]:
    """Check (and for 'mapping', translate) every record's margin when the loss uses one.

    A source without any margin value is a configuration mistake and always an error; a row
    without one is skipped and counted (strict mode: an error naming the row).
    """
    if cfg.margin == "none" or not records:
        return records
    column = data_cfg.columns.get("margin", "margin")
    if all(r.margin is None for r in records):
        file = records[0].origin[0] if records[0].origin else "<records>"
        raise DataError(file, None, column, f"a rating column '{column}' because loss.margin is "
                        f"{cfg.margin!r}, but no row has one (ranked data gives no margin; name "
                        "the rating column with data.columns.margin, or set loss.margin: none)")
    table = {rating_key(k): float(v) for k, v in cfg.margin_mapping.items()}
    out = []
    for r in records:
        file, row = r.origin if r.origin else ("<record>", None)
        if r.margin is None:
            err = DataError(file, row, column, f"a rating (loss.margin is {cfg.margin!r}); the "
                            "field is missing", MISSING)
            if data_cfg.strict:
                raise err
            report.skip(MISSING, file, row, str(err))
            continue
        if cfg.margin == "mapping":
            if rating_key(r.margin) not in table:
                # Not a bad row but an incomplete mapping: always an error.
                raise DataError(file, row, column, "one of the rating levels of loss.margin_mapping "
                                f"({', '.join(map(repr, cfg.margin_mapping))}) (got {r.margin!r})")
            r = PreferenceRecord(r.prompt, r.chosen, r.rejected, table[rating_key(r.margin)], r.origin)
        elif isinstance(r.margin, str):
            raise DataError(file, row, column, f"a number for loss.margin 'column' (got the text label "
                            f"{r.margin!r}; translate labels with loss.margin: mapping and margin_mapping)")
        out.append(r)
    return out


def build_groups(records: list[PreferenceRecord], tokenizer: Any, data_cfg: DataConfig,
                 report: SkipReport | None, per_prompt: bool = True) -> list[list[dict]]:
    """Encode pairs and group them by the input row they came from (``origin``).

    A pairwise row is a group of one pair; a ranked row of K responses is one group of its
    K(K-1)/2 pairs (ties already skipped by the data layer). With ``per_prompt=False`` every
    pair is its own group. Pairs that cannot be tokenised are skipped as ``encode_records``
    does (:func:`encode_records_aligned`: each encoding stays linked to its row).
    """
    groups: dict[Any, list[dict]] = {}
    for i, (rec, enc) in enumerate(zip(records, encode_records_aligned(records, tokenizer, data_cfg, report))):
        if enc is None:
            continue
        key = (rec.origin if rec.origin is not None else ("", i)) if per_prompt else i
        groups.setdefault(key, []).append(enc)
    return list(groups.values())


class GroupCollator:
    """Groups of encoded pairs -> one preference batch of 2P rows (P = pairs in all groups).

    Adds ``weights`` (P,): 1/(pairs in the pair's group), so every group weighs 1 in total.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pairs = PreferenceCollator(pad_token_id, padding_side)

    def __call__(self, groups: list[list[dict]]) -> dict[str, torch.Tensor]:
        flat = [pair for g in groups for pair in g]
        batch = self.pairs(flat)  # (2P, T); rows [:P] chosen, [P:] rejected
        group_ids = torch.tensor([gi for gi, g in enumerate(groups) for _ in g])  # (P,)
        batch["weights"] = ranked_pair_weights(group_ids)  # (P,)
        return batch


# --------------------------------------------------------------------------- loss


def _units(mb: dict[str, torch.Tensor]) -> torch.Tensor:
    # The global denominator is Σ w = number of prompts (groups) in the optimizer step. Each
    # group's weights sum to exactly 1, so round away float32 error (3 x 1/3 != 1 in float32).
    return mb["weights"].double().sum().round()


def _scores(model: torch.nn.Module, batch: dict[str, torch.Tensor], packed: bool) -> torch.Tensor:
    """Scores (N,) at each row's last real token; on the packed layout (no compute on padding:
    chosen and rejected often differ much in length) unless ``packed`` is off."""
    if use_packed(packed, model):
        return packed_last_token_scores(model, batch["input_ids"], batch["attention_mask"])
    return score_last_token(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])


def _make_loss(cfg: RewardLossConfig, packed: bool = True):
    use_margin = cfg.margin != "none"

    def loss_fn(model: torch.nn.Module, mb: dict[str, torch.Tensor], denominator: torch.Tensor):
        scores = _scores(model, mb, packed).float()  # (2P,)
        P = scores.shape[0] // 2
        chosen_scores, rejected_scores = scores[:P], scores[P:]  # (P,) each
        w = mb["weights"]  # (P,)
        margin = mb["margin"] if use_margin else None
        loss, m = bradley_terry_loss(chosen_scores, rejected_scores, margin, w, denominator=denominator)
        if cfg.centering_coef > 0:
            # c·Σ w (r_c + r_r)² / Σ_global w, so that micro-batches sum to the step's weighted
            # mean: the pure function takes a plain mean over its P inputs, hence √w scaling
            # and the P / denominator factor.
            sw = w.sqrt()
            loss = loss + reward_centering_loss(sw * chosen_scores, sw * rejected_scores,
                                                cfg.centering_coef) * P / denominator
        # bradley_terry_loss's metrics are weighted means within this micro-batch; turn them into
        # weighted sums (the trainer adds them up and divides "_mean" keys by Σ w).
        wsum = w.sum()
        extra = {"accuracy_mean": m["accuracy"] * wsum, "score_diff_mean": m["margin"] * wsum,
                 "chosen_score_mean": m["chosen_scores"] * wsum,
                 "rejected_score_mean": m["rejected_scores"] * wsum,
                 "pairs": torch.tensor(float(P))}
        return loss, extra

    return loss_fn


# --------------------------------------------------------------------------- evaluation


def _gather(trainer: Trainer, items: list) -> list:
    if trainer.accelerator.num_processes == 1:
        return items
    from accelerate.utils import gather_object
    return gather_object(items)


@torch.no_grad()
def score_sequences(trainer: Trainer, model: torch.nn.Module, seqs: list[dict], pad_token_id: int,
                    padding_side: str = "right") -> list[float]:
    """Scores of encoded sequences (``input_ids`` + ``completion_mask``), gathered over processes."""
    model.eval()
    out: list[float] = []
    for batch in trainer.eval_batches(seqs, PadCollator(pad_token_id, padding_side)):
        with trainer.accelerator.autocast():
            s = score_last_token(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        out += s.float().cpu().tolist()
    return _gather(trainer, out)


@torch.no_grad()
def evaluate_pairs(trainer: Trainer, model: torch.nn.Module, pairs: list[dict], pad_token_id: int,
                   padding_side: str = "right", ece_bins: int = 10) -> dict[str, float]:
    """Held-out pairwise accuracy, mean margin r_c - r_r, BT loss and calibration error.

    ``eval_ece`` is the expected calibration error of p = σ(r_c - r_r) against the label, with
    each pair counted in both orders ((p, 1) and (1 - p, 0)); otherwise every label would be 1
    and a model could not be over- or under-confident in both directions. Ties (r_c = r_r)
    count as wrong, as in training.
    """
    model.eval()
    diffs: list[float] = []
    for batch in trainer.eval_batches(pairs, PreferenceCollator(pad_token_id, padding_side)):
        with trainer.accelerator.autocast():
            scores = score_last_token(model, batch["input_ids"], batch["attention_mask"],
                                      batch["position_ids"]).float()  # (2B,)
        B = scores.shape[0] // 2
        diffs += (scores[:B] - scores[B:]).cpu().tolist()
    diffs = _gather(trainer, diffs)
    d = torch.tensor(diffs, dtype=torch.float64)  # (N,)
    p = torch.sigmoid(d)
    ece = expected_calibration_error(torch.cat([p, 1 - p]), torch.cat([torch.ones_like(p), torch.zeros_like(p)]),
                                     n_bins=ece_bins)
    return {"eval_accuracy": float((d > 0).double().mean()), "eval_margin": float(d.mean()),
            "eval_loss": float(-torch.nn.functional.logsigmoid(d).mean()), "eval_ece": float(ece),
            "eval_pairs": len(diffs)}


def _reference_sequences(cfg: RMConfig, tokenizer: Any, train_groups: list[list[dict]],
                         eval_pairs: list[dict]) -> list[dict]:
    """The encoded reference set of ``cfg.stats`` (deduplicated, at most ``max_samples``)."""
    if cfg.stats.source == "file":
        records, report = load_records(cfg.data, "sft", source=cfg.stats.data)
        seqs = encode_records(records, tokenizer, cfg.data, report)
    else:
        pairs = [p for g in train_groups for p in g] if cfg.stats.source == "train_chosen" else eval_pairs
        seqs, seen = [], set()
        for p in pairs:  # a ranked prompt's best response is "chosen" in several pairs: once
            key = tuple(p["chosen_input_ids"])
            if key not in seen:
                seen.add(key)
                seqs.append({"input_ids": p["chosen_input_ids"], "completion_mask": p["chosen_completion_mask"]})
    if len(seqs) > cfg.stats.max_samples:
        idx = sorted(random.Random(cfg.train.seed).sample(range(len(seqs)), cfg.stats.max_samples))
        seqs = [seqs[i] for i in idx]
    return seqs


def reward_statistics(scores: list[float]) -> dict[str, float | None]:
    """Mean and (Bessel-corrected) std of reference scores; std is null for fewer than 2."""
    t = torch.tensor(scores, dtype=torch.float64)
    return {"mean": float(t.mean()) if len(scores) else None,
            "std": float(t.std()) if len(scores) >= 2 else None, "count": len(scores)}


# --------------------------------------------------------------------------- the recipe


def train(cfg: RMConfig) -> dict[str, Any]:
    # Step 1. Open the run: output folder checks, resolved config.yaml, accelerator, seed.
    check_sequence_limit(cfg.model, cfg.data.max_length, "data.max_length")  # before any work
    trainer = Trainer(cfg.train, cfg.output_dir, cfg, stage="rm")

    # Step 2. Data: pairwise rows, or ranked rows expanded to their pairs (ties skipped and
    # counted by the data layer); margins checked; pairs encoded and grouped by prompt.
    tokenizer = load_tokenizer(cfg.model)
    # Text rating levels are read for loss.margin mapping (and refused by name for column).
    train_records, eval_records, report = load_train_eval(cfg.data, "preference",
                                                          margin_labels=cfg.loss.margin != "none")
    train_records = _resolve_margins(train_records, cfg.loss, cfg.data, report)
    eval_records = _resolve_margins(eval_records or [], cfg.loss, cfg.data, report)
    per_prompt = cfg.loss.ranked_weighting == "per_prompt"
    train_groups = build_groups(train_records, tokenizer, cfg.data, report, per_prompt)
    eval_pairs = [p for g in build_groups(eval_records, tokenizer, cfg.data, report) for p in g]
    if report.counts:
        trainer.print(report.summary())
    trainer.print(f"[rm] {rendering_summary(train_records, tokenizer, cfg.data)}")
    pad_id, side = tokenizer.pad_token_id, cfg.data.padding_side
    n_pairs = sum(len(g) for g in train_groups)
    trainer.print(f"[rm] {len(train_groups)} training prompts ({n_pairs} pairs), {len(eval_pairs)} held-out pairs")

    # Step 3. The model: trunk + scalar head N(0, 1/(d+1)) on the last real token, dropout off.
    model = load_scalar_model(cfg.model, tokenizer=tokenizer)
    n = count_parameters(model)
    trainer.print(f"[rm] model {cfg.model.name_or_path}: {n['total']:,} parameters, {n['trainable']:,} trainable")

    # Step 4. Optimizer, schedule, distribution wrapper; restore the newest checkpoint if any.
    # One example = one prompt's group of pairs.
    model = trainer.setup(model, num_examples=len(train_groups))

    # Step 5. The loop: chosen and rejected scored in one forward pass; loss Σ w·BT / Σ w.
    loss_fn = _make_loss(cfg.loss, cfg.packed)
    last_eval: dict[str, float] = {}
    for step, micro_batches in trainer.steps(train_groups, GroupCollator(pad_id, side)):
        metrics = trainer.optimize(micro_batches, _units, loss_fn)
        metrics["prompts"] = metrics.pop("units")
        if eval_pairs and trainer.should_eval(step):
            last_eval = evaluate_pairs(trainer, model, eval_pairs, pad_id, side, cfg.ece_bins)
            metrics.update(last_eval)
        trainer.log(step, metrics)
        trainer.maybe_checkpoint(step, tokenizer)

    # Step 6. Final held-out evaluation (also when resuming a run that had trained every step).
    if eval_pairs and not last_eval:
        last_eval = evaluate_pairs(trainer, model, eval_pairs, pad_id, side, cfg.ece_bins)

    # Step 7. Reward statistics over the reference set, for normalised rewards downstream.
    stats: dict[str, Any] = {"mean": None, "std": None, "count": 0}
    if cfg.stats.source != "none":
        ref = _reference_sequences(cfg, tokenizer, train_groups, eval_pairs)
        stats = reward_statistics(score_sequences(trainer, model, ref, pad_id, side))
    reward_info = {**stats, "reference": cfg.stats.source, "reference_data": cfg.stats.data,
                   "encoding": {k: getattr(cfg.data, k) for k in ENCODING_FIELDS}}

    # Step 8. Final model with the statistics beside the weights, then the summary.
    summary = {"train_prompts": len(train_groups), "train_pairs": n_pairs, "eval_pairs": len(eval_pairs),
               "skipped": dict(report.counts), **last_eval,
               "reward_mean": stats["mean"], "reward_std": stats["std"], "reward_stats_count": stats["count"]}
    return trainer.finish(tokenizer, summary, extra_files={REWARD_STATS_FILE: reward_info})
