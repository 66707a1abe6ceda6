"""`rlhf rm` and TRL's RewardTrainer side by side: same tiny model, data, length, batch, precision.

    bash bench/make_trl_venv.sh            # once: .venv-trl with torch 2.13.0 and trl 1.16.0
    .venv/bin/python bench/rm_vs_trl.py [--precisions fp32 bf16] [--bf16-max-steps 20]

1. Split HH-RLHF harmless-base (test file) 80/20 exactly as bench/rm_hh.py does, write the
   training pairs as prompt/chosen/rejected JSONL, build one tiny Llama (tokenizer trained on
   the training text) that both sides start from.
2. For each precision, train each side in its own process (so peak RSS is its own): ours
   with bench/rm_hh.py, TRL with bench/rm_trl.py (.venv-trl). Gradient checkpointing off on
   both, dropout off on both, the same head initialisation, lr schedule and seed.
3. Evaluate both trained models with ONE evaluator (rlhf.rewards.ModelReward with the same
   encoding) on the same held-out pairs; accuracy with its 95% Wilson interval.

TRL drops training pairs longer than max_length, rlhf truncates them: the pairs each side
trained on are reported, and rlhf is run a second time on exactly the pairs TRL keeps
(``ours_on_trl_kept_pairs``), which is the like-for-like speed comparison (TRL's kept pairs are
the short ones). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from rm_hh import DATA, wilson  # noqa: E402


def _run(cmd: list[str]) -> dict:
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _accuracy(model_dir: str, eval_recs, max_length: int) -> dict:
    from rlhf.rewards import ModelReward
    rm = ModelReward(model_dir, batch_size=32, encoding={"max_length": max_length, "chat_template": "none"})
    c = rm([r.prompt for r in eval_recs], [r.chosen for r in eval_recs])
    r = rm([r.prompt for r in eval_recs], [r.rejected for r in eval_recs])
    k = int((c > r).sum())
    n = len(eval_recs)
    lo, hi = wilson(k, n)
    return {"accuracy": round(k / n, 4), "ci95": [round(lo, 4), round(hi, 4)], "n": n,
            "mean_margin": round(float((c - r).mean()), 4)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--bf16-max-steps", type=int, default=None,
                    help="cap bf16 runs (CPU bf16 is slow): speed only, accuracy then not comparable")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads in every child (1: steady "
                                                               "timings on a small shared machine)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    trl_py = REPO / ".venv-trl" / "bin" / "python"
    if not trl_py.exists():
        raise SystemExit("no .venv-trl: run `bash bench/make_trl_venv.sh` first")

    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_train_eval
    from rlhf.models.tiny import make_tiny_checkpoint

    t0 = time.time()
    tmp = tempfile.TemporaryDirectory(prefix="rm-vs-trl-") if args.out is None else None
    work = Path(args.out) if args.out else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    dcfg = DataConfig(train=str(DATA), eval_fraction=0.2, seed=args.seed, max_length=args.max_length,
                      chat_template="none")
    train_recs, eval_recs, _ = load_train_eval(dcfg, "preference")
    with open(work / "train.jsonl", "w") as f:
        for r in train_recs:
            f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")
    with open(work / "eval.jsonl", "w") as f:
        for r in eval_recs:
            f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")
    texts = [t for r in train_recs for t in (r.prompt + r.chosen, r.rejected)]
    model_dir = make_tiny_checkpoint(work / "tiny-llama", "llama", texts, vocab_size=4096, hidden_size=128,
                                     num_layers=2, num_heads=4, max_position_embeddings=args.max_length,
                                     seed=args.seed)
    # The pairs TRL keeps (both prompt + response + EOS within max_length, as its filter counts),
    # so that rlhf can also be timed on exactly the same, shorter, pairs.
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)

    def fits(text: str) -> bool:
        return len(tok(text + tok.eos_token)["input_ids"]) <= args.max_length

    with open(work / "train_trl_kept.jsonl", "w") as f:
        for r in train_recs:
            if fits(r.prompt + r.chosen) and fits(r.prompt + r.rejected):
                f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")
    results = {}
    for prec in args.precisions:
        steps = args.bf16_max_steps if prec == "bf16" else None
        common = ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
                  "--epochs", str(args.epochs), "--seed", str(args.seed),
                  *(["--threads", str(args.threads)] if args.threads else [])]
        ours = _run([sys.executable, "bench/rm_hh.py", "--model", str(model_dir), "--out", str(work / f"ours-{prec}"),
                     "--mixed-precision", "bf16" if prec == "bf16" else "no", *common,
                     *(["--max-steps", str(steps)] if steps else [])])
        same = _run([sys.executable, "bench/rm_hh.py", "--model", str(model_dir),
                     "--out", str(work / f"ours-same-{prec}"),
                     "--train-file", str(work / "train_trl_kept.jsonl"), "--eval-file", str(work / "eval.jsonl"),
                     "--mixed-precision", "bf16" if prec == "bf16" else "no", *common,
                     *(["--max-steps", str(steps)] if steps else [])])
        trl = _run([str(trl_py), "bench/rm_trl.py", "--model", str(model_dir), "--train", str(work / "train.jsonl"),
                    "--out", str(work / f"trl-{prec}"), *common, *(["--bf16"] if prec == "bf16" else []),
                    *(["--max-steps", str(steps)] if steps else [])])
        row = {
            "ours": {"pairs_trained": ours["train"]["steps"] * args.batch_size,
                     "pairs_available": ours["split"]["train_pairs"], "steps": ours["train"]["steps"],
                     "pairs_per_s": ours["pairs_per_s"], "peak_rss_mb": ours["peak_rss_mb"],
                     "heldout": _accuracy(ours["final_model"], eval_recs, args.max_length)},
            "trl": {"pairs_trained": trl["pairs_trained"], "pairs_kept_after_length_filter": trl["trl_pairs_kept"],
                    "steps": trl["steps"], "pairs_per_s": trl["pairs_per_s"], "peak_rss_mb": trl["peak_rss_mb"],
                    "heldout": _accuracy(str(work / f"trl-{prec}" / "final"), eval_recs, args.max_length)},
        }
        row["ours_on_trl_kept_pairs"] = {
            "pairs_trained": same["train"]["steps"] * args.batch_size, "steps": same["train"]["steps"],
            "pairs_per_s": same["pairs_per_s"], "peak_rss_mb": same["peak_rss_mb"],
            "heldout": _accuracy(same["final_model"], eval_recs, args.max_length)}
        row["speedup_same_pairs"] = round(same["pairs_per_s"] / row["trl"]["pairs_per_s"], 2)
        row["memory_ratio_same_pairs"] = round(same["peak_rss_mb"] / row["trl"]["peak_rss_mb"], 2)
        row["speedup_pairs_per_s"] = round(row["ours"]["pairs_per_s"] / row["trl"]["pairs_per_s"], 2)
        row["memory_ratio"] = round(row["ours"]["peak_rss_mb"] / row["trl"]["peak_rss_mb"], 2)
        results[prec] = row
        print(json.dumps({prec: row}), file=sys.stderr)
    print(json.dumps({"bench": "rm_vs_trl", "max_length": args.max_length, "batch_size": args.batch_size,
                      "torch_threads": args.threads, "loadavg_end": list(os.getloadavg()),
                      "epochs": args.epochs, "bf16_max_steps": args.bf16_max_steps, "results": results,
                      "wall_s": round(time.time() - t0, 1)}))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
