"""Supervised instruction fine-tuning (SFT): the first step of RLHF (InstructGPT, Llama 2).

Minimise the negative log-likelihood of the demonstration completions given their prompts.
By default only completion tokens are targets (``data.completion_only_loss``): the model is
taught to answer, not to reproduce the prompts. The loss is the mean over all target tokens of
the optimizer step's global batch, exactly, however the batch is split over accumulation
steps and processes (see rlhf/train/trainer.py).

Run it with ``rlhf sft --recipe tiny [key=value ...]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rlhf.config import ConfigError, opt
from rlhf.data.collate import PackingCollator, PadCollator, pack_examples
from rlhf.data.config import DataConfig
from rlhf.data.load import load_train_eval
from rlhf.data.tokenize import encode_records, rendering_summary
from rlhf.logprobs import forward_logps
from rlhf.losses.sft import nll_loss
from rlhf.masking import count_units
from rlhf.models.config import ModelConfig
from rlhf.models.load import check_sequence_limit, count_parameters, load_causal_lm, load_tokenizer
from rlhf.models.packing import use_packed
from rlhf.train.config import TrainConfig
from rlhf.train.trainer import Trainer

__all__ = ["SFTConfig", "train", "evaluate_nll", "SFTSection", "inner_sft_config", "run_inner_sft"]


@dataclass(frozen=True)
class SFTConfig:
    output_dir: str = opt("runs/sft", "folder for config.yaml, metrics.jsonl, checkpoints, final/ and summary.json")
    model: ModelConfig = opt(factory=ModelConfig, help="the model to fine-tune")
    data: DataConfig = opt(factory=DataConfig, help="training and evaluation data")
    train: TrainConfig = opt(factory=TrainConfig, help="optimisation")

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train", "is required: a .jsonl/.json/.parquet/.csv file, a dataset "
                                            "folder or a hub id")


def _units(mb: dict[str, torch.Tensor]) -> torch.Tensor:
    return count_units(mb["completion_mask"], "token_mean")


def _loss(model: torch.nn.Module, mb: dict[str, torch.Tensor], denominator: torch.Tensor):
    logps = forward_logps(model, mb)  # (B, T)
    return nll_loss(logps, mb["completion_mask"], "token_mean", denominator), {}


@torch.no_grad()
def evaluate_nll(trainer: Trainer, model: torch.nn.Module, examples: list[dict], collate) -> dict[str, float]:
    """Held-out token-mean NLL and perplexity over all processes."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=trainer.device)
    tokens = torch.zeros((), dtype=torch.float64, device=trainer.device)
    for batch in trainer.eval_batches(examples, collate):
        with trainer.accelerator.autocast():
            logps = forward_logps(model, batch)
        mask = batch["completion_mask"]
        total += (-(logps * mask)).sum().double()
        tokens += mask.sum().double()
    total, tokens = trainer.reduce_sum(total), trainer.reduce_sum(tokens)
    loss = float(total / tokens.clamp(min=1))
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": int(tokens)}


def train(cfg: SFTConfig) -> dict[str, Any]:
    # Step 1. Open the run: output folder checks, resolved config.yaml, accelerator, seed.
    check_sequence_limit(cfg.model, cfg.data.max_length, "data.max_length")  # before any work
    trainer = Trainer(cfg.train, cfg.output_dir, cfg, stage="sft")

    # Step 2. Tokenizer and data: load, convert to canonical records, tokenise with the
    # completion mask. Bad rows are skipped and reported once (or stop the run in strict mode).
    tokenizer = load_tokenizer(cfg.model)
    # (the loader itself reports rows it skipped; encoding may skip more, reported here)
    train_records, eval_records, report = load_train_eval(cfg.data, "sft")
    skipped_before = report.skipped_rows
    train_ex = encode_records(train_records, tokenizer, cfg.data, report)
    eval_ex = encode_records(eval_records or [], tokenizer, cfg.data, report)
    if report.skipped_rows > skipped_before:
        trainer.print(f"[sft] {report.summary()}")
    trainer.print(f"[sft] {rendering_summary(train_records, tokenizer, cfg.data)}")
    pad_id = tokenizer.pad_token_id
    n_sequences = len(train_ex)
    eval_collate = PadCollator(pad_id, padding_side=cfg.data.padding_side)

    # Step 3. The model (optionally with LoRA adapters, bf16, gradient checkpointing).
    model = load_causal_lm(cfg.model)
    n = count_parameters(model)
    trainer.print(f"[sft] model {cfg.model.name_or_path}: {n['total']:,} parameters, {n['trainable']:,} trainable")
    collate: PackingCollator | PadCollator
    if use_packed(cfg.data.packing, model):
        # Several sequences per row; position ids restart per sequence so that no sequence
        # attends to or is positioned after another (rlhf/data/collate.py). Only for a model
        # class the packing probe accepted (else one warning line, and padded rows).
        train_ex = pack_examples(train_ex, cfg.data.max_length)
        collate = PackingCollator(pad_id)
    else:
        collate = PadCollator(pad_id, padding_side=cfg.data.padding_side)

    # Step 4. Optimizer, schedule, distribution wrapper; restore the newest checkpoint if any.
    model = trainer.setup(model, num_examples=len(train_ex))

    # Step 5. The loop: one optimizer step per global batch, exact gradient accumulation.
    last_eval: dict[str, float] = {}
    for step, micro_batches in trainer.steps(train_ex, collate):
        metrics = trainer.optimize(micro_batches, _units, _loss)
        metrics["ppl"] = math.exp(min(metrics["loss"], 50.0))
        metrics["tokens"] = metrics.pop("units")
        if eval_ex and trainer.should_eval(step):
            last_eval = evaluate_nll(trainer, model, eval_ex, eval_collate)
            metrics.update(last_eval)
        trainer.log(step, metrics)
        trainer.maybe_checkpoint(step, tokenizer)

    # Step 6. Final evaluation (also when resuming a run that had already trained every step),
    # final model, summary.
    if eval_ex and not last_eval:
        last_eval = evaluate_nll(trainer, model, eval_ex, eval_collate)
    summary = {"train_examples": n_sequences, "train_rows": len(train_ex), "eval_examples": len(eval_ex),
               "skipped_rows": dict(report.counts), **last_eval}
    return trainer.finish(tokenizer, summary)


# --------------------------------------------------------------------------- inner runs
# Recipes that fine-tune on data they generate (RAFT, ReST, Constitutional AI, hindsight
# relabeling) run this stage inside their own folder.


@dataclass(frozen=True)
class SFTSection:
    """The supervised fine-tuning that recipes built on generated data run (rlhf/recipes/sft.py).
    The model is the recipe's policy; data format, length and template come from its ``data``."""

    train: TrainConfig = opt(factory=TrainConfig, help="optimisation of the inner SFT run")
    eval_fraction: float = opt(0.0, "fraction of the generated examples held out for the SFT "
                                    "run's evaluation loss", ge=0.0, lt=1.0)


def inner_sft_config(output_dir: Path, model: ModelConfig, data: DataConfig, train_file: Path,
                     section: SFTSection) -> Any:
    """The SFT stage's config for training ``model`` on ``train_file`` (prompt/completion rows),
    with the outer run's tokenization settings."""
    from rlhf.config import _validate_tree

    d = replace(data, train=str(train_file), train_split="train", eval=None, eval_split=None,
                eval_fraction=section.eval_fraction, format="sft", columns={}, max_samples=None)
    cfg = SFTConfig(output_dir=str(output_dir), model=model, data=d, train=section.train)
    _validate_tree(cfg, "sft")
    return cfg


def run_inner_sft(cfg: Any) -> dict[str, Any]:
    """Train (or resume, or read back when finished) an inner SFT run."""
    import json

    from rlhf.train.run import is_finished

    out = Path(cfg.output_dir)
    if is_finished(out):
        return json.loads((out / "summary.json").read_text())
    return train(cfg)
