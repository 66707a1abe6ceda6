"""DPO on real preference data (Anthropic HH-RLHF, harmless-base test file) with a tiny Llama.

Prints one JSON object: for each precision (fp32, bf16 autocast), the held-out implicit-reward
accuracy with its 95% Wilson interval, training throughput (pairs/s, measured between the first
and the last optimizer step, so model loading, the reference cache and evaluation are excluded),
the time the reference cache took, peak RSS (and peak CUDA memory on a GPU), and wall time.

    .venv/bin/python bench/dpo_hh.py                       # defaults: 1 epoch, batch 8, max length 512
    .venv/bin/python bench/dpo_hh.py --max-pairs 400 --max-length 256 --precisions fp32

The file is split 80/20 into train/held-out rows with a fixed seed (``data.eval_fraction=0.2,
data.seed=0``). The tiny model's tokenizer is trained on the training split's text only. Each
precision runs in its own subprocess so that peak RSS is that run's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rlhf.stats import wilson_interval as wilson  # noqa: E402

HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def build_model(work: Path, args) -> Path:
    """A tiny random-weight Llama whose tokenizer is trained on the training rows' text."""
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_train_eval
    from rlhf.models.tiny import make_tiny_checkpoint

    out = work / "tiny-llama"
    if out.exists():
        return out
    train, _, _ = load_train_eval(DataConfig(train=str(args.data), eval_fraction=0.2, seed=0,
                                             max_samples=args.max_pairs), "preference")
    texts = [r.prompt + r.chosen for r in train] + [r.prompt + r.rejected for r in train]
    make_tiny_checkpoint(out, "llama", texts, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                         num_layers=args.num_layers, num_heads=4, max_position_embeddings=args.max_length,
                         seed=0)
    return out


def shorter_wins_baseline(args) -> dict:
    """Accuracy on the held-out pairs of the rule "the completion with fewer tokens is preferred"
    (ties count half): what a model could reach from length alone, to read the DPO figure against."""
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_train_eval
    from rlhf.data.tokenize import encode_records
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_tokenizer

    dc = DataConfig(train=str(args.data), eval_fraction=0.2, seed=0, max_samples=args.max_pairs,
                    max_length=args.max_length, chat_template="none")
    _, ev, _ = load_train_eval(dc, "preference")
    ex = encode_records(ev, load_tokenizer(ModelConfig(name_or_path=str(args.model))), dc)
    score = sum(1.0 if sum(e["chosen_completion_mask"]) < sum(e["rejected_completion_mask"]) else
                0.5 if sum(e["chosen_completion_mask"]) == sum(e["rejected_completion_mask"]) else 0.0 for e in ex)
    return {"shorter_completion_wins_accuracy": round(score / len(ex), 4), "pairs": len(ex)}


def run_one(args) -> dict:
    """One training run in this process; returns its figures."""
    import torch

    from rlhf.config import load_config
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import count_parameters, load_causal_lm
    from rlhf.recipes.dpo import DPOConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.work) / f"run-{args.one}"
    cfg = load_config(DPOConfig, None, [
        f"output_dir={out}", f"model.name_or_path={args.model}", f"loss={args.loss}", f"beta={args.beta}",
        f"data.train={args.data}", "data.eval_fraction=0.2", "data.seed=0", f"data.max_length={args.max_length}",
        "data.chat_template=none", f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}",
        f"train.lr={args.lr}", "train.warmup_ratio=0.1", "train.scheduler=cosine", "train.progress=false",
        "train.mixed_precision=" + ("bf16" if args.one == "bf16" else "'no'"),  # quoted: YAML reads no as false
        "train.save_model_in_checkpoints=false",
        f"train.eval_batch_size={args.batch_size * 2}", "train.log_every=1", "train.save_total_limit=1",
        *([f"data.max_samples={args.max_pairs}"] if args.max_pairs else [])])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    summary = train(cfg)
    wall = time.time() - t0
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    t_first, t_last = metrics[0]["elapsed_s"], metrics[-1]["elapsed_s"]
    steps = len(metrics)
    pairs_per_s = (steps - 1) * args.batch_size / (t_last - t_first) if steps > 1 and t_last > t_first else float("nan")
    n_eval = summary["eval_examples"]
    acc = summary["eval_reward_accuracy"]
    lo, hi = wilson(round(acc * n_eval), n_eval)
    n_params = count_parameters(load_causal_lm(ModelConfig(name_or_path=str(args.model)), for_training=False))["total"]
    res = {
        "precision": "fp32" if args.one == "fp32" else "bf16 autocast (fp32 weights)",
        "params": n_params,
        "train_pairs": summary["train_examples"], "eval_pairs": n_eval, "steps": summary["steps"],
        "eval_reward_accuracy": round(acc, 4), "eval_reward_accuracy_wilson95": [round(lo, 4), round(hi, 4)],
        "eval_reward_margin": round(summary["eval_reward_margin"], 4), "eval_loss": round(summary["eval_loss"], 4),
        "train_loss_first": round(metrics[0]["loss"], 4),
        "train_loss_last10_mean": round(sum(m["loss"] for m in metrics[-10:]) / min(10, steps), 4),
        "pairs_per_s": round(pairs_per_s, 2),
        "setup_s_before_first_step": round(t_first, 2),  # model load, tokenising, reference cache
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(wall, 2),
        "device": ("cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available()
                   else f"cpu x{torch.get_num_threads()} threads"),
    }
    if torch.cuda.is_available():
        res["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=HH)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, deleted)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--loss", default="dpo")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-pairs", type=int, default=None, help="use only the first N rows of the file")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--one", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true",
                   help="fp32 on the file's first 64 rows, 64 tokens, a 1-layer model: the bench still runs, no figure")
    args = p.parse_args(argv)
    if args.smoke:
        args.precisions, args.max_pairs, args.max_length, args.num_layers, args.hidden_size = "fp32", 64, 64, 1, 32
        args.vocab_size = 512
    if not args.data.exists():
        print(json.dumps({"error": f"{args.data} not found (the shared data folder sits beside the repo)"}))
        return 1
    if args.one:  # child process: one run, JSON on the last line
        print(json.dumps(run_one(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_model(work, args)
        args.model = model
        baseline = shorter_wins_baseline(args)
        results = {}
        for prec in args.precisions.split(","):
            cmd = [sys.executable, __file__, "--one", prec, "--model", str(model), "--work", str(work)]
            cmd += ["--data", str(args.data), "--loss", args.loss, "--beta", str(args.beta),
                    "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                    "--max-length", str(args.max_length), "--threads", str(args.threads)]
            cmd += ["--max-pairs", str(args.max_pairs)] if args.max_pairs else []
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                results[prec] = {"error": proc.stderr[-2000:]}
                continue
            results[prec] = json.loads(proc.stdout.strip().splitlines()[-1])
    smoke = {"smoke": True} if args.smoke else {}
    out = {"bench": "dpo_hh", **smoke, "data": str(args.data.name), "split": "80/20 rows, data.seed=0",
           "loss": args.loss, "beta": args.beta, "batch_size": args.batch_size, "max_length": args.max_length,
           "epochs": args.epochs, "lr": args.lr, "chance_accuracy": 0.5, "held_out_length_baseline": baseline,
           "results": results}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
