"""`rlhf rm` and TRL's RewardTrainer side by side: same tiny model, data, length, batch, precision.

    bash bench/make_trl_venv.sh            # once: .venv-trl with torch 2.13.0 and trl 1.16.0
    .venv/bin/python bench/rm_vs_trl.py [--precisions fp32 bf16] [--bf16-max-steps 20] [--repeats 2]
    .venv/bin/python bench/rm_vs_trl.py --smoke     # does it still run? (seconds; no figures)

1. Split HH-RLHF harmless-base (test file) 80/20 exactly as bench/rm_hh.py does, write the
   training pairs as prompt/chosen/rejected JSONL, build one tiny Llama (tokenizer trained on
   the training text) that both sides start from.
2. For each precision, train each side in its own process (so peak RSS is its own): ours
   with bench/rm_hh.py, TRL with bench/rm_trl.py (.venv-trl). Gradient checkpointing off on
   both, dropout off on both, AdamW with torch's fused kernel on both, the same head
   initialisation, lr schedule and seed.
3. Evaluate both trained models with ONE evaluator (rlhf.rewards.ModelReward with the same
   encoding) on the same held-out pairs; accuracy with its 95% Wilson interval.

TRL drops training pairs longer than max_length, rlhf truncates them: the pairs each side
trained on are reported, and rlhf is run a second time on exactly the pairs TRL keeps
(``ours_on_trl_kept_pairs``), which is the like-for-like speed comparison (TRL's kept pairs are
the short ones). Both sides log every ``--log-every`` steps; each run records its CPU share
(bench/_bench.py), repeats are interleaved and a ratio is the ratio of the medians of the clean
repeats, or refused. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _bench import interleaved, ratio, smoke_sides, summarize, trl_python, write_json  # noqa: E402
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


def padded_over_real(tok, recs, batch_size: int, shuffles: int = 5) -> dict:
    """Tokens TRL's padded batches hold per real token, on the pairs it keeps: each batch of B
    pairs is 2B rows padded to its longest (random batches, as its shuffled sampler makes; the
    mean over a few shuffles). rlhf packs the rows, so for the same per-token arithmetic this is
    the most its packing can gain: a ratio above it needs faster arithmetic, not less of it."""
    import random

    lens = [(len(tok(r.prompt + r.chosen + tok.eos_token)["input_ids"]),
             len(tok(r.prompt + r.rejected + tok.eos_token)["input_ids"])) for r in recs]
    ratios = []
    for seed in range(shuffles):
        order = lens[:]
        random.Random(seed).shuffle(order)
        real = pad = 0
        for i in range(0, len(order) - batch_size + 1, batch_size):
            b = order[i:i + batch_size]
            real += sum(c + j for c, j in b)
            pad += 2 * batch_size * max(max(x) for x in b)
        if real:
            ratios.append(pad / real)
    return {"trl_padded_over_real_tokens": round(sum(ratios) / len(ratios), 3) if ratios else None,
            "shuffles": shuffles, "note": "the speed-up that packing alone gives at equal per-token arithmetic"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--bf16-max-steps", type=int, default=None,
                    help="cap bf16 runs (CPU bf16 is slow): speed only, accuracy then not comparable")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run at N optimizer steps (speed only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads in every child (1: steady "
                                                               "timings on a small shared machine)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="interleaved repeats per side; medians of the clean repeats make the ratios")
    ap.add_argument("--log-every", type=int, default=10, help="metrics every N steps, the same on both sides")
    ap.add_argument("--sides", default="rlhf,trl", help="rlhf and/or trl")
    ap.add_argument("--smoke", action="store_true",
                    help="one quick check that the bench still runs (fp32, 3 steps of 4 pairs, the rlhf side, TRL "
                         "too where .venv-trl exists); its timings are no figures")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="a causal LM folder (with tokenizer) both sides start from, instead of the tiny Llama "
                         "(bench/real_shape.py); its scalar head is initialised alike on both sides")
    ap.add_argument("--data", type=Path, default=DATA, help="HH-RLHF file (default: the shared data folder)")
    ap.add_argument("--out", default=None, help="work folder (kept); the JSON goes to stdout and --json")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--eval-pairs", type=int, default=None,
                    help="score the first N held-out pairs after each run (0: a speed-only run, no held-out "
                         "accuracy, rlhf timed on TRL's pairs only; default: all of them)")
    args = ap.parse_args(argv)
    eval_cap = args.eval_pairs
    if args.smoke:
        args.precisions, args.max_length, args.batch_size, args.max_steps = ["fp32"], 64, 4, 3
        args.repeats, args.sides, eval_cap = 1, smoke_sides(), 16
    sides = args.sides.split(",")
    trl_py = trl_python()
    if "trl" in sides and trl_py is None:
        raise SystemExit("no .venv-trl: run `bash bench/make_trl_venv.sh` first (or --sides rlhf)")

    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_train_eval
    from rlhf.models.tiny import make_tiny_checkpoint

    t0 = time.time()
    tmp = tempfile.TemporaryDirectory(prefix="rm-vs-trl-") if args.out is None else None
    work = Path(args.out) if args.out else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found (the shared data folder sits beside the repo)")
    dcfg = DataConfig(train=str(args.data), eval_fraction=0.2, seed=args.seed, max_length=args.max_length,
                      chat_template="none")
    train_recs, eval_recs, _ = load_train_eval(dcfg, "preference")
    if args.smoke:
        train_recs = train_recs[:64]
    # The held-out pairs scored after each run, and the file the runs evaluate on themselves (in a
    # speed-only run, --eval-pairs 0, a few pairs: the rlhf side needs one, and it is cheap).
    eval_file_recs = eval_recs[:eval_cap or 8] if eval_cap is not None else eval_recs
    eval_recs = eval_file_recs if eval_cap != 0 else []

    def write(path: Path, recs) -> None:
        with open(path, "w") as f:
            for r in recs:
                f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")

    write(work / "train.jsonl", train_recs)
    write(work / "eval.jsonl", eval_file_recs)
    texts = [t for r in train_recs for t in (r.prompt + r.chosen, r.rejected)]
    model_dir = args.model_dir or make_tiny_checkpoint(
        work / "tiny-llama", "llama", texts, vocab_size=1024 if args.smoke else 4096, hidden_size=128, num_layers=2,
        num_heads=4, max_position_embeddings=args.max_length, seed=args.seed)
    # The pairs TRL keeps (both prompt + response + EOS within max_length, as its filter counts),
    # so that rlhf can also be timed on exactly the same, shorter, pairs.
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)

    def fits(text: str) -> bool:
        return len(tok(text + tok.eos_token)["input_ids"]) <= args.max_length

    kept = [r for r in train_recs if fits(r.prompt + r.chosen) and fits(r.prompt + r.rejected)]
    write(work / "train_trl_kept.jsonl", kept)
    padding = padded_over_real(tok, kept, args.batch_size)
    # Sides: ours on all pairs (truncating), ours on TRL's kept pairs (the like-for-like speed
    # pairing), TRL (drops the long pairs itself).
    # (a smoke run only the like-for-like pair: one rlhf child fewer)
    # (a speed-only run, --eval-pairs 0, only the like-for-like pair too: "ours" is there for its accuracy)
    ours = ["ours_same"] if args.smoke or eval_cap == 0 else ["ours", "ours_same"]
    run_sides = (ours if "rlhf" in sides else []) + (["trl"] if "trl" in sides else [])
    results: dict = {}
    for prec in args.precisions:
        steps = args.bf16_max_steps if prec == "bf16" and args.bf16_max_steps else args.max_steps
        common = ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
                  "--epochs", str(args.epochs), "--seed", str(args.seed), "--log-every", str(args.log_every),
                  *(["--threads", str(args.threads)] if args.threads else []),
                  *(["--max-steps", str(steps)] if steps else [])]
        mp = ["--data", str(args.data), "--mixed-precision", "bf16" if prec == "bf16" else "no",  # rlhf side
              *(["--no-reward-stats"] if eval_cap == 0 else [])]
        raw: dict[str, list[dict]] = {s: [] for s in run_sides}
        for rep, side in interleaved(run_sides, args.repeats):
            dest = work / f"{side}-{prec}-r{rep}"
            if dest.exists():  # a run left by an earlier call in the same --out: timed afresh, never resumed
                shutil.rmtree(dest)
            if side == "ours":
                cmd = [sys.executable, "bench/rm_hh.py", "--model", str(model_dir), "--out", str(dest), *mp, *common,
                       *(["--train-file", str(work / "train.jsonl"), "--eval-file", str(work / "eval.jsonl")]
                         if args.smoke else [])]
            elif side == "ours_same":
                cmd = [sys.executable, "bench/rm_hh.py", "--model", str(model_dir), "--out", str(dest),
                       "--train-file", str(work / "train_trl_kept.jsonl"), "--eval-file", str(work / "eval.jsonl"),
                       *mp, *common]
            else:
                cmd = [str(trl_py), "bench/rm_trl.py", "--model", str(model_dir), "--train", str(work / "train.jsonl"),
                       "--out", str(dest), *common, *(["--bf16"] if prec == "bf16" else [])]
            r = _run(cmd)
            model_out = str(dest / "final") if side == "trl" else r["final_model"]
            r["heldout"] = _accuracy(model_out, eval_recs, args.max_length) if eval_recs else None
            r["command"] = " ".join(cmd)
            raw[side].append(r)
            print(json.dumps({"run": f"{side}-{prec}-r{rep}", "pairs_per_s": r.get("pairs_per_s"),
                              "cpu_share_of_threads": r.get("cpu_share_of_threads")}), file=sys.stderr)
        for runs in raw.values():
            for r in runs:
                r["peak_rss_mib"] = r.get("peak_rss_mib") or r.get("peak_rss_mb")
        row = {s: summarize(v, "pairs_per_s") for s, v in raw.items()}
        if "ours_same" in row and "trl" in row:
            row["speedup_same_pairs"] = ratio(row["ours_same"], row["trl"], "pairs_per_s")
        if "ours" in row and "trl" in row:
            row["speedup_all_pairs"] = ratio(row["ours"], row["trl"], "pairs_per_s")
        results[prec] = row
    out = {"bench": "rm_vs_trl", "model_dir": str(model_dir), "max_length": args.max_length,
           "batch_size": args.batch_size,
           "torch_threads": args.threads, "loadavg_end": list(os.getloadavg()), "repeats": args.repeats,
           "log_every": args.log_every, "smoke": args.smoke, "epochs": args.epochs, "max_steps": args.max_steps,
           "bf16_max_steps": args.bf16_max_steps, "packing_bound": padding, "results": results,
           "wall_s": round(time.time() - t0, 1)}
    print(write_json(out, args.json, argv))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
