"""TRL's RewardTrainer on the split that bench/rm_vs_trl.py wrote: run with .venv-trl/bin/python.

Prints one JSON object: pairs actually trained on (TRL drops pairs longer than max_length),
optimizer steps, pairs/s over steps 2..N-1 (the same window as bench/rm_hh.py), peak RSS.
The trained model is saved to OUT/final for the common held-out evaluation.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import throughput  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True, help="jsonl with prompt/chosen/rejected strings")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--log-every", type=int, default=10, help="logging_steps (bench/rm_hh.py logs as often)")
    args = ap.parse_args()

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)
    # The same head initialisation as rlhf's load_scalar_model: N(0, 1/(d+1)), bias 0.
    torch.manual_seed(args.seed)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0 / (model.config.hidden_size + 1) ** 0.5)
    ds = load_dataset("json", data_files=args.train, split="train")

    stamps: list[float] = []
    cpu_stamps: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())

    cfg = RewardConfig(
        output_dir=args.out, max_length=args.max_length, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, num_train_epochs=args.epochs, max_steps=args.max_steps,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0,
        max_grad_norm=1.0, seed=args.seed, data_seed=args.seed,
        optim="adamw_torch_fused",  # fused AdamW, as rlhf's trainer (and transformers' own default with torch >= 2.8)
        bf16=args.bf16, gradient_checkpointing=False,  # both explicit: TRL defaults them to True
        disable_dropout=True, center_rewards_coefficient=None,
        logging_steps=args.log_every, save_strategy="no", eval_strategy="no", report_to="none",
        dataloader_drop_last=True, use_cpu=not torch.cuda.is_available(), dataset_num_proc=None,
    )
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                            callbacks=[StepTimes()])
    kept = len(trainer.train_dataset)
    t0 = time.time()
    trainer.train()
    wall = time.time() - t0
    steps = len(stamps)
    # steps 2..N-1, as bench/rm_hh.py: the end of step 1 to the end of the second-to-last step
    window = slice(0, max(2, steps - 1))
    rate = throughput(stamps[window], args.batch_size, cpu_stamps[window], torch.get_num_threads())
    trainer.save_model(f"{args.out}/final")
    tok.save_pretrained(f"{args.out}/final")
    print(json.dumps({"side": "trl", "trl_pairs_kept": kept, "pairs_in_file": len(ds), "steps": steps,
                      "pairs_trained": steps * args.batch_size, **rate, "log_every": args.log_every,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "train_wall_s": round(wall, 1), "torch_threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
