"""``rlhf quickstart``: the built-in demo, end to end on a laptop CPU, no download.

Today it runs the first stage of the pipeline on a task the project generates itself:

1. generate the instruction task (rlhf/testbed/instructions.py): train and held-out splits;
2. build a tiny Llama with random weights and a tokenizer trained on that data;
3. supervised fine-tuning (rlhf sft) with checkpoints, metrics and a held-out evaluation;
4. greedy answers of the base and the fine-tuned model on held-out prompts, scored by exact
   match against the task's rule.

Every step is skipped when its output already exists, so a killed demo resumes where it was.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["main", "run"]


def _exact_match(model_dir: Path, rows: list[dict], data_cfg) -> tuple[float, list[dict]]:
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.tools.generate import generate

    mcfg = ModelConfig(name_or_path=str(model_dir))
    tok, model = load_tokenizer(mcfg), load_causal_lm(mcfg, for_training=False)
    out = generate(model, tok, [r["prompt"] for r in rows], data_cfg=data_cfg, max_new_tokens=16,
                   temperature=0.0, batch_size=64)
    hits = [o["completion"].strip() == r["completion"] for o, r in zip(out, rows)]
    return sum(hits) / len(hits), out


def run(out_dir: str | Path = "runs/quickstart", fast: bool = False, seed: int = 0) -> dict:
    from rlhf.config import load_config
    from rlhf.models.tiny import make_tiny_checkpoint
    from rlhf.recipes.sft import SFTConfig, train
    from rlhf.testbed.instructions import make_examples, write_jsonl
    from rlhf.train.run import is_finished

    t0 = time.time()
    out = Path(out_dir)
    n_train, n_eval = (1500, 200) if fast else (6000, 500)

    # Step 1. The task's data.
    data = out / "data"
    if not (data / "eval.jsonl").exists():
        write_jsonl(make_examples(n_train, seed=seed), data / "train.jsonl")
        write_jsonl(make_examples(n_eval, seed=seed + 1), data / "eval.jsonl")
    print(f"[1/4] data: {n_train} training and {n_eval} held-out instructions in {data}")

    # Step 2. A tiny model and a tokenizer trained on the task's text.
    base = out / "base"
    if not (base / "config.json").exists():
        rows = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
        make_tiny_checkpoint(base, "llama", [r["prompt"] + r["completion"] for r in rows],
                             vocab_size=300, hidden_size=64 if fast else 128, num_layers=2,
                             num_heads=4, max_position_embeddings=128, seed=seed)
    print(f"[2/4] base model: a tiny random-weight Llama in {base}")

    # Step 3. SFT: the same config file a user would write, with overrides.
    sft_dir = out / "sft"
    overrides = [f"output_dir={sft_dir}", f"model.name_or_path={base}",
                 f"data.train={data / 'train.jsonl'}", f"data.eval={data / 'eval.jsonl'}",
                 f"train.seed={seed}"]
    if fast:
        overrides += ["train.epochs=1", "train.eval_every=20"]
    cfg = load_config(SFTConfig, None, overrides, base=_TINY_SFT)
    if not is_finished(sft_dir):
        print("[3/4] SFT (rlhf sft), progress below")
        train(cfg)
    summary = json.loads((sft_dir / "summary.json").read_text())
    print(f"[3/4] SFT: held-out loss {summary.get('eval_loss', float('nan')):.3f} "
          f"(perplexity {summary.get('eval_ppl', float('nan')):.2f}) in {sft_dir}")

    # Step 4. What did it learn? Exact match on held-out prompts, before and after.
    rows = [json.loads(x) for x in (data / "eval.jsonl").read_text().splitlines()][:100]
    acc_base, _ = _exact_match(base, rows, cfg.data)
    acc_sft, samples = _exact_match(sft_dir / "final", rows, cfg.data)
    result = {"exact_match_base": acc_base, "exact_match_sft": acc_sft,
              "eval_loss": summary.get("eval_loss"), "wall_time_s": round(time.time() - t0, 1),
              "outputs": str(out)}
    (out / "quickstart.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[4/4] exact match on 100 held-out instructions: base {acc_base:.0%} -> SFT {acc_sft:.0%}")
    for s, r in list(zip(samples, rows))[:5]:
        print(f"      {r['prompt'].strip()!r:32} -> {s['completion'].strip()!r:16} (want {r['completion']!r})")
    print(f"\nOutputs in {out}/: data/, base/, sft/ (config.yaml, metrics.jsonl, checkpoints, final/, "
          f"summary.json), quickstart.json. Took {result['wall_time_s']:.0f}s.\n"
          f"Sample from the model:  rlhf generate --model {sft_dir / 'final'} --chat-template none "
          f"--prompt $'reverse: a b c\\n' --temperature 0")
    return result


# The same settings as configs/sft/tiny.yaml (kept in code so an installed package needs no repo).
_TINY_SFT = {
    "data": {"max_length": 64, "chat_template": "none"},
    "train": {"lr": 3e-3, "warmup_ratio": 0.05, "scheduler": "cosine", "batch_size": 32,
              "epochs": 2, "eval_every": 50, "save_every": 100, "log_every": 10},
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlhf quickstart", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/quickstart", help="output folder (resumes if it exists)")
    p.add_argument("--fast", action="store_true", help="a smaller, ~1-minute smoke version")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run(a.out, fast=a.fast, seed=a.seed)
    return 0
