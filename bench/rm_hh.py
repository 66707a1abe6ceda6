"""Reward-model quality and speed on real human preferences (Anthropic HH-RLHF, harmless-base test).

    .venv/bin/python bench/rm_hh.py [--epochs 3] [--max-length 256] [--hidden 128] ...

1. Read ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz with the data layer (format hh) and
   split its rows 80/20 with a fixed seed (``rlhf.data.load.split_eval``, the same split the
   recipe makes from ``data.eval_fraction``/``data.seed``).
2. Train a byte-level BPE tokenizer on the TRAINING text only and build a tiny random Llama.
3. ``rlhf rm`` (rlhf.recipes.rm.train) on the training split, evaluated on the held-out split.
4. Print one JSON object: held-out accuracy with its 95% Wilson interval, the length-only
   baseline on the same held-out pairs ("the shorter response is chosen", characters, ties
   count 1/2), training pairs/s, peak RSS, wall time.

Nothing is written to the repository: the run lives in a temporary folder unless --out is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "bench"))

from _bench import StepStamps, memory_report, throughput  # noqa: E402

from rlhf.stats import wilson_interval as wilson  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def length_baseline(records) -> float:
    """Accuracy of "the shorter completion is the chosen one" (ties: 1/2)."""
    score = 0.0
    for r in records:
        lc, lr = len(r.chosen), len(r.rejected)
        score += 1.0 if lc < lr else 0.5 if lc == lr else 0.0
    return score / len(records)


def model_record(model_dir: Path, args) -> dict:
    """The trained model's shape: read from its config.json (a ``--model`` folder is not the tiny
    model the size options describe)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return {"arch": cfg.get("model_type"), "hidden": cfg.get("hidden_size"), "layers": cfg.get("num_hidden_layers"),
            "heads": cfg.get("num_attention_heads"), "vocab": cfg.get("vocab_size"), "max_length": args.max_length,
            "folder": str(model_dir) if args.model else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--seed", type=int, default=0, help="split and training seed")
    ap.add_argument("--eval-fraction", type=float, default=0.2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--train-file", default=None, help="train on this prompt/chosen/rejected file "
                    "instead of the split (needs --eval-file; bench/rm_vs_trl.py uses it)")
    ap.add_argument("--eval-file", default=None)
    ap.add_argument("--model", default=None, help="use this tiny checkpoint instead of building one")
    ap.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after N steps (speed runs)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")
    ap.add_argument("--log-every", type=int, default=10,
                    help="metrics every N steps (bench/rm_trl.py logs as often: equal logging on both sides)")
    ap.add_argument("--max-pairs", type=int, default=None, help="use only the first N training pairs (smoke runs)")
    ap.add_argument("--no-reward-stats", action="store_true",
                    help="skip the recipe's reward normalisation statistics after training (speed-only runs: "
                         "untimed, but minutes on a large model)")
    args = ap.parse_args(argv)

    import torch

    import rlhf.train.trainer as T
    from rlhf.config import load_config
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_train_eval
    from rlhf.models.tiny import make_tiny_checkpoint
    from rlhf.recipes.rm import RMConfig, train

    # Stamps (wall and CPU) at the end of every optimizer step, from outside the library.
    step_stamps = StepStamps(T.Trainer)
    stamps, cpu_stamps = step_stamps.wall, step_stamps.cpu
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    tmp = tempfile.TemporaryDirectory(prefix="rm-hh-") if args.out is None else None
    work = Path(args.out) if args.out else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)

    # Step 1. The split (the recipe makes the identical one from the same DataConfig fields).
    data_overrides = {"train": args.data, "eval_fraction": args.eval_fraction, "seed": args.seed,
                      "max_length": args.max_length, "chat_template": "none"}
    train_recs, eval_recs, report = load_train_eval(DataConfig(**data_overrides), "preference")
    if args.max_pairs and not args.train_file:
        import json as _json
        args.train_file, args.eval_file = str(work / "train_head.jsonl"), str(work / "eval_head.jsonl")
        for path, recs in ((args.train_file, train_recs[:args.max_pairs]),
                           (args.eval_file, eval_recs[:max(8, args.max_pairs // 4)])):
            with open(path, "w") as f:
                for r in recs:
                    f.write(_json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")

    # Step 2. Tokenizer on the training text only, tiny model.
    texts = [t for r in train_recs for t in (r.prompt + r.chosen, r.rejected)]
    if args.model:
        model_dir = Path(args.model)
    else:
        model_dir = make_tiny_checkpoint(work / "tiny-llama", "llama", texts, vocab_size=args.vocab,
                                         hidden_size=args.hidden, num_layers=args.layers,
                                         num_heads=args.heads, max_position_embeddings=args.max_length,
                                         seed=args.seed)

    # Step 3. Train and evaluate.
    if args.train_file:
        data_overrides = {"train": args.train_file, "eval": args.eval_file,
                          "max_length": args.max_length, "chat_template": "none"}
    cfg = load_config(RMConfig, None, [
        f"output_dir={work / 'rm'}", f"model.name_or_path={model_dir}",
        *[f"data.{k}={v}" for k, v in data_overrides.items()],
        f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}", f"train.lr={args.lr}",
        f"train.weight_decay={args.weight_decay}", "train.warmup_ratio=0.05", "train.scheduler=cosine",
        f"train.seed={args.seed}", "train.progress=false", "train.save_total_limit=1",
        "train.save_model_in_checkpoints=false", f"train.log_every={args.log_every}",
        f"train.mixed_precision={args.mixed_precision}", "model.gradient_checkpointing=false",
        *([f"train.max_steps={args.max_steps}"] if args.max_steps else []),
        *(["stats.source=none"] if args.no_reward_stats else [])])
    t_train = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # progress lines to stderr: stdout is the JSON
        s = train(cfg)
    train_wall = time.time() - t_train

    # Throughput over the optimizer steps only: from the end of step 1 (warm) to the end of the
    # second-to-last step (bench/rm_trl.py's window), with the CPU share over the same window.
    # (A last partial batch would make pairs per step uneven: the window leaves the last step out.)
    window = slice(0, max(2, len(stamps) - 1))
    rate = throughput(stamps[window], args.batch_size, cpu_stamps[window], torch.get_num_threads())
    n = s["eval_pairs"]
    k = round(s["eval_accuracy"] * n)
    lo, hi = wilson(k, n)
    base = length_baseline(eval_recs)
    blo, bhi = wilson(base * n, n)
    out = {
        "bench": "rm_hh", "data": Path(args.data).name, "seed": args.seed,
        "split": {"train_pairs": s["train_pairs"], "eval_pairs": n, "skipped": s["skipped"]},
        "model": model_record(model_dir, args),
        "train": {"mixed_precision": args.mixed_precision, "gradient_checkpointing": False,
                  "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "steps": s["steps"]},
        "eval_accuracy": round(s["eval_accuracy"], 4), "eval_accuracy_ci95": [round(lo, 4), round(hi, 4)],
        "length_baseline_accuracy": round(base, 4), "length_baseline_ci95": [round(blo, 4), round(bhi, 4)],
        "length_baseline_full_file": round(length_baseline(train_recs + eval_recs), 4),
        "eval_margin": round(s["eval_margin"], 4), "eval_ece": round(s["eval_ece"], 4),
        "eval_loss": round(s["eval_loss"], 4),
        **rate, "log_every": args.log_every,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **memory_report(step_stamps.peak_before),
        "train_wall_s": round(train_wall, 1), "wall_s": round(time.time() - t0, 1),
        "final_model": str(work / "rm" / "final") if args.out else None,
        "torch_threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    print(json.dumps(out))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
