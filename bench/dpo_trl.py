"""TRL's DPOTrainer on the pairs bench/dpo_vs_trl.py wrote: run with .venv-trl/bin/python.

The file is already in the order rlhf visits the pairs, so TRL reads it with a sequential sampler.
Before training, TRL's own tokenized dataset (after its collator's keep_start truncation) is
compared with the ids rlhf trains on (``--expected-ids``); any difference stops the run.
Prints one JSON object (last line): per-step losses and mean chosen log-probs, pairs/s between
the end of step 1 and the end of the last step, time to the end of step 1, peak RSS of the
process and peak RSS during steps 2..N.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train-file", required=True, help="jsonl with prompt/chosen/rejected strings, in training order")
    ap.add_argument("--expected-ids", required=True, help="jsonl with prompt_len/chosen_ids/rejected_ids per line")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--reference", choices=["cached", "online"], default="online")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--matmul-n", type=int, default=2048, help="size of the in-process matmul probe (MFU)")
    ap.add_argument("--lora-r", type=int, default=0, help="LoRA adapters of this rank (as dpo_vs_trl's rlhf side)")
    a = ap.parse_args()

    import torch

    # Helpers shared with the rlhf child (no rlhf import: this runs in .venv-trl).
    from _bench import _status, matmul_rate, memory_report, reset_peak_rss, throughput
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if a.threads:
        torch.set_num_threads(a.threads)
    import_rss = _status("VmRSS") / 1024
    t_setup = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    ds = load_dataset("json", data_files=a.train_file, split="train")

    stamps: list[float] = []
    cpu_stamps: list[float] = []
    hwm = {"before": None}

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())
            if len(stamps) == 1:
                hwm["before"] = reset_peak_rss()

    losses: list[float] = []
    chosen_logps: list[float] = []

    class Recorded(DPOTrainer):
        """DPOTrainer that also keeps each training step's loss and mean chosen log-prob."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.model.training:
                losses.append(float(loss.detach()))
                chosen_logps.append(self._metrics["train"]["logps/chosen"][-1])
            return loss

    cfg = DPOConfig(
        output_dir=a.run_dir, max_length=a.max_length, truncation_mode="keep_start",
        per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1, max_steps=a.steps,
        num_train_epochs=1, learning_rate=a.lr, lr_scheduler_type="cosine", warmup_steps=a.warmup_steps,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch_fused",
        max_grad_norm=1.0, seed=a.seed, data_seed=a.seed,
        # Both explicit: TRL defaults them to bf16=True and gradient_checkpointing=True.
        # (transformers 5.23 names gradient checkpointing "activation_checkpointing"; TRL reads the
        # old name, which mirrors the new one.) Non-reentrant, as rlhf's model.gradient_checkpointing.
        bf16=a.precision == "bf16", fp16=False, activation_checkpointing=a.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if a.gradient_checkpointing else None,
        beta=a.beta, loss_type=["sigmoid"], label_smoothing=0.0, disable_dropout=True,
        precompute_ref_log_probs=a.reference == "cached", precompute_ref_batch_size=a.ref_batch_size,
        train_sampling_strategy="sequential",  # the file is already in rlhf's order
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_drop_last=True, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        dataset_num_proc=None,
    )
    peft_config = None
    if a.lora_r:  # the same adapters as the rlhf side: targets, alpha 2r, no dropout, no bias
        from dpo_vs_trl import LORA_TARGETS
        from peft import LoraConfig
        peft_config = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, bias="none",
                                 target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    trainer = Recorded(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[StepTimes()],
                       peft_config=peft_config)

    # Same tokens as rlhf: TRL's prepared dataset, cut as its collator cuts, against the expected ids.
    expected = [json.loads(x) for x in Path(a.expected_ids).read_text().splitlines()]
    tds = trainer.train_dataset
    if len(tds) != len(expected):
        raise SystemExit(f"TRL kept {len(tds)} pairs, expected {len(expected)}")
    L = a.max_length
    for i, (row, exp) in enumerate(zip(tds, expected)):
        got_c = (row["prompt_ids"] + row["chosen_ids"])[:L]
        got_r = (row["prompt_ids"] + row["rejected_ids"])[:L]
        if got_c != exp["chosen_ids"] or got_r != exp["rejected_ids"] or len(row["prompt_ids"]) != exp["prompt_len"]:
            raise SystemExit(f"pair {i}: TRL's token ids differ from rlhf's")

    t_train = time.perf_counter()
    trainer.train()
    t_end = time.perf_counter()
    res = {"side": "trl", "reference": a.reference, "reference_precomputed": a.reference == "cached",
           "steps": len(stamps), "tokens_checked_equal": len(expected),
           "losses": losses, "chosen_logps": chosen_logps,
           "stamps": [s - stamps[0] for s in stamps] if stamps else [],
           **throughput(stamps, a.batch_size, cpu_stamps, torch.get_num_threads()),
           "import_s": round(t_setup - t_start, 2),
           # model load, dataset tokenization, reference precompute (when on), trainer set-up, step 1
           "to_end_of_step1_s": round(stamps[0] - t_setup, 2) if stamps else None,
           "train_call_s": round(t_end - t_train, 2),
           "import_rss_mib": round(import_rss, 1), **memory_report(hwm["before"]),
           "torch_threads": torch.get_num_threads(), "optim": cfg.optim,
           "bf16": cfg.bf16, "gradient_checkpointing": cfg.gradient_checkpointing,
           "gradient_checkpointing_in_model": bool(getattr(trainer.model, "is_activation_checkpointing", None)),
           "dtype_of_weights": str(next(trainer.model.parameters()).dtype),
           "matmul_rate": matmul_rate(a.precision, a.matmul_n)}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
