"""Gradient accumulation: 1 x 8, 2 x 4 and 8 x 1 micro-batches give the same loss and gradients.

The examples have different completion lengths, so a naive "mean of micro-batch means" would
differ from the full-batch token mean; the trainer's global denominator makes them equal.
"""

from __future__ import annotations

import pytest
import torch

from rlhf.config import load_config
from rlhf.data.collate import PadCollator
from rlhf.data.records import SFTRecord
from rlhf.data.tokenize import encode_sft
from rlhf.models.load import load_causal_lm, load_tokenizer
from rlhf.recipes.sft import SFTConfig, _loss, _units
from rlhf.train.trainer import Trainer, epoch_order, plan_steps

PROMPTS = [("reverse: a b c\n", "c b a"), ("count: a b\n", "2"), ("sort: 3 1 2 9 0\n", "0 1 2 3 9"),
           ("double: x y\n", "x x y y"), ("first: q\n", "q"), ("last: a b c d e\n", "e"),
           ("reverse: j i\n", "i j"), ("double: a b c\n", "a a b b c c")]


def _grads_after_one_step(tiny_llama, tmp_path, grad_accum: int, padding_side: str = "right"):
    cfg = load_config(SFTConfig, None, [
        f"output_dir={tmp_path / f'run-{grad_accum}-{padding_side}'}", f"model.name_or_path={tiny_llama}",
        "data.train=unused", "data.chat_template=none", "train.batch_size=8",
        f"train.grad_accum={grad_accum}", "train.progress=false"])
    tok = load_tokenizer(cfg.model)
    examples = [encode_sft(SFTRecord(prompt=p, completion=c), tok, cfg.data) for p, c in PROMPTS]
    lengths = {sum(e["completion_mask"]) for e in examples}
    assert len(lengths) > 2, "the test needs completions of different lengths"
    trainer = Trainer(cfg.train, cfg.output_dir, cfg, stage="sft")
    model = trainer.setup(load_causal_lm(cfg.model), num_examples=len(examples))
    (step, micro), = list(trainer.steps(examples, PadCollator(tok.pad_token_id, padding_side)))
    assert len(micro) == grad_accum
    metrics = trainer.accumulate(micro, _units, _loss)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return metrics, grads


def test_accumulation_invariance(tiny_llama, tmp_path):
    ref_metrics, ref_grads = _grads_after_one_step(tiny_llama, tmp_path, grad_accum=1)
    # Independent reference for the loss: the token-mean NLL of the whole batch in one pass.
    for accum in (2, 8):
        metrics, grads = _grads_after_one_step(tiny_llama, tmp_path, grad_accum=accum)
        assert abs(metrics["loss"] - ref_metrics["loss"]) < 1e-5
        assert metrics["units"] == ref_metrics["units"]
        for n, g in grads.items():
            torch.testing.assert_close(g, ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_padding_side_does_not_change_loss_or_gradients(tiny_llama, tmp_path):
    m_r, g_r = _grads_after_one_step(tiny_llama, tmp_path, grad_accum=1, padding_side="right")
    m_l, g_l = _grads_after_one_step(tiny_llama, tmp_path, grad_accum=1, padding_side="left")
    assert abs(m_r["loss"] - m_l["loss"]) < 1e-5
    for n in g_r:
        torch.testing.assert_close(g_l[n], g_r[n], atol=1e-5, rtol=1e-4, msg=n)


def test_step_plan_and_epoch_order():
    from rlhf.train.config import TrainConfig
    p = plan_steps(TrainConfig(batch_size=8, grad_accum=2, epochs=2.5), num_examples=20, num_processes=2)
    # 20 // 8 = 2 full batches per epoch (4 examples dropped); 2.5 epochs -> ceil(5) steps;
    # micro-batch = 8 / (2 processes x 2 accumulation) = 2.
    assert (p.steps_per_epoch, p.total_steps, p.micro_batch_size, p.dropped_per_epoch) == (2, 5, 2, 4)
    with pytest.raises(ValueError, match="divisible by train.grad_accum"):
        plan_steps(TrainConfig(batch_size=8, grad_accum=2), num_examples=20, num_processes=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        plan_steps(TrainConfig(batch_size=8), num_examples=5, num_processes=1)
    a, b = epoch_order(0, 0, 50), epoch_order(0, 1, 50)
    assert sorted(a) == list(range(50)) and a != b and a == epoch_order(0, 0, 50)


def test_a_file_smaller_than_one_batch_gets_a_smaller_batch_said_in_one_line():
    """Issue 23: the getting-started file (12 rows) under a real-model recipe (batch 16, 8
    accumulation steps) stopped in a traceback; the batch becomes the largest multiple of
    grad_accum x processes the data fills, and the run says so."""
    from rlhf.train.config import TrainConfig
    from rlhf.train.trainer import fit_batch_to_data
    cfg, note = fit_batch_to_data(TrainConfig(batch_size=16, grad_accum=8), num_examples=12, num_processes=1)
    assert cfg.batch_size == 8 and "uses batches of 8" in note and "12 training examples" in note
    cfg, note = fit_batch_to_data(TrainConfig(batch_size=16, grad_accum=2), num_examples=12, num_processes=2)
    assert cfg.batch_size == 12 and note
    big = TrainConfig(batch_size=8, grad_accum=2)
    assert fit_batch_to_data(big, num_examples=20, num_processes=1) == (big, "")  # a batch fits: unchanged
    small = TrainConfig(batch_size=16, grad_accum=8)
    assert fit_batch_to_data(small, num_examples=5, num_processes=1) == (small, "")  # < one micro-step each
    with pytest.raises(ValueError, match="fewer than one batch"):
        plan_steps(small, num_examples=5, num_processes=1)


def test_packing_does_not_change_the_loss_or_gradients(tiny_llama, tmp_path):
    """The same 8 sequences, packed into fewer rows, give the same token-mean loss and gradients:
    no attention or position leaks between the sequences of a row."""
    from rlhf.data.collate import PackingCollator, pack_examples

    ref_metrics, ref_grads = _grads_after_one_step(tiny_llama, tmp_path, grad_accum=1)
    cfg = load_config(SFTConfig, None, [
        f"output_dir={tmp_path / 'packed'}", f"model.name_or_path={tiny_llama}", "data.train=unused",
        "data.chat_template=none", "data.packing=true", "train.progress=false"])
    tok = load_tokenizer(cfg.model)
    examples = [encode_sft(SFTRecord(prompt=p, completion=c), tok, cfg.data) for p, c in PROMPTS]
    rows = pack_examples(examples, max_length=40)
    assert len(rows) < len(examples)
    trainer = Trainer(load_config(type(cfg.train), None, [f"batch_size={len(rows)}", "progress=false"]),
                      cfg.output_dir, cfg, stage="sft")
    model = trainer.setup(load_causal_lm(cfg.model), num_examples=len(rows))
    (step, micro), = list(trainer.steps(rows, PackingCollator(tok.pad_token_id)))
    metrics = trainer.accumulate(micro, _units, _loss)
    assert metrics["units"] == ref_metrics["units"]
    assert abs(metrics["loss"] - ref_metrics["loss"]) < 1e-5
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)
