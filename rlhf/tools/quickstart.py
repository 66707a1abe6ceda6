"""``rlhf quickstart``: the whole RLHF pipeline on a built-in task, on a laptop CPU, no download.

The task (rlhf/testbed/reviews.py, docs/testbed.md) is a small generated language of reviews
with a hidden **gold** reward that plays the human. The demo is an ordinary ``rlhf pipeline``
(print it with ``--print-config``, copy it, change it):

1. data        SFT demonstrations (reviews of mixed sentiment) and prompts
2. base        a tiny random-weight Llama and a tokenizer trained on the task's text
3. sft         supervised fine-tuning: the model learns the language
4. pairs       two samples per prompt from the SFT policy, labelled by simulated annotators
               (Bradley–Terry on gold, ~73% agreement, like human labelers)
5. rm          a reward model on those labels: the **proxy** for the human
6. ppo         PPO against the proxy with a KL penalty to the SFT policy (gold tracked, never seen)
7. dpo         DPO on the same pairs
8. best-of-n   n samples per prompt from the SFT policy, the proxy's favourite kept
9. raft        rejection-sampling fine-tuning: best of 4 by the proxy, SFT, 3 rounds
10. rest       ReST: Grow (sample) then Improve (SFT above rising reward quantiles)
11. iterative-dpo  3 rounds of sample -> best-vs-worst pairs by the proxy -> DPO
12. constitutional Constitutional AI (supervised): critique and revise against two principles
               (rule-based critic and reviser: a tiny model cannot critique), SFT on revisions
13. eval       gold and proxy reward, KL to SFT, win rates, on held-out prompts
14. report     report.html: reward-vs-KL frontier, over-optimisation, curves, samples

Every stage is skipped when its output is finished, so a killed demo resumes where it was.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["main", "pipeline_spec", "write_data"]

GOLD = "rlhf.testbed.reviews:gold_reward"
FEEDBACK = "rlhf.testbed.feedback"


def write_data(output_dir: str | Path, n_sft: int = 4000, n_prompts: int = 512, n_eval: int = 64,
               seed: int = 0) -> dict[str, Any]:
    """The task's files: sft.jsonl (prompt/completion), prompts.jsonl, eval_prompts.jsonl."""
    from rlhf.testbed import reviews
    from rlhf.train.run import write_jsonl_atomic

    out = Path(output_dir)
    files = {
        "sft.jsonl": reviews.make_sft_records(n_sft, seed=seed),
        "prompts.jsonl": [{"prompt": p} for p in reviews.make_prompts(n_prompts, seed=seed + 1)],
        "eval_prompts.jsonl": [{"prompt": p} for p in reviews.make_prompts(n_eval, seed=seed + 2)],
    }
    for name, rows in files.items():
        write_jsonl_atomic(out / name, rows)
    gold = reviews.gold_reward([r["prompt"] for r in files["sft.jsonl"]],
                               [r["completion"] for r in files["sft.jsonl"]])
    return {"sft_examples": n_sft, "prompts": n_prompts, "eval_prompts": n_eval,
            "mean_gold_of_demonstrations": sum(gold) / len(gold)}


def pipeline_spec(out: str | Path = "runs/quickstart", fast: bool = False, seed: int = 0) -> dict[str, Any]:
    """The demo as a pipeline dict (``rlhf pipeline`` reads the same thing from YAML)."""
    from rlhf.testbed.feedback import REVIEW_PRINCIPLES
    from rlhf.testbed.reviews import DEFAULT_TEMPERATURE

    f = fast
    train_common = {"seed": seed, "progress": True, "save_model_in_checkpoints": False}
    data = {"chat_template": "none", "max_length": 64}
    # The rejection-sampling family and iterative DPO: K samples per prompt from the current
    # policy, scored by the proxy (gold tracked), a fresh subset of prompts each round.
    alt = {"model": {"name_or_path": "${sft}/final"}, "reward": "${rm}/final", "track": {"gold": GOLD},
           "data": {**data, "train": "${data}/prompts.jsonl"}, "samples_per_prompt": 4,
           "prompts_per_round": 64 if f else 256, "seed": seed,
           "sampling": {"max_new_tokens": 40, "batch_size": 64}}
    inner_sft = {**train_common, "lr": 5e-4, "batch_size": 16, "epochs": 1, "log_every": 1}
    return {
        "output_dir": str(out),
        "description": "rlhf quickstart" + (" --fast" if fast else ""),
        "stages": [
            {"name": "data", "type": "call", "args": {
                "function": "rlhf.tools.quickstart:write_data", "seed": seed,
                "n_sft": 2000 if f else 4000, "n_prompts": 256 if f else 4096, "n_eval": 32 if f else 128}},
            {"name": "base", "type": "tiny-model", "args": {
                "texts": "${data}/sft.jsonl", "arch": "llama", "vocab_size": 512,
                "hidden_size": 128, "num_layers": 2, "num_heads": 4,
                "max_position_embeddings": 96, "seed": seed}},
            {"name": "sft", "type": "sft", "config": {
                "model": {"name_or_path": "${base}"}, "data": {**data, "train": "${data}/sft.jsonl"},
                "train": {**train_common, "lr": 3e-3, "batch_size": 32, "epochs": 2 if f else 3,
                          "scheduler": "cosine", "warmup_ratio": 0.05, "log_every": 10}}},
            {"name": "pairs", "type": "label", "args": {
                "policy": "${sft}/final", "prompts": "${data}/prompts.jsonl", "judge": GOLD,
                "temperature": DEFAULT_TEMPERATURE, "eval_fraction": 0.15, "max_new_tokens": 40,
                "seed": seed, "chat_template": "none", "max_prompts": 256 if f else 4096}},
            {"name": "rm", "type": "rm", "config": {
                "model": {"name_or_path": "${sft}/final"},
                "data": {**data, "train": "${pairs}/train.jsonl", "eval": "${pairs}/eval.jsonl"},
                "train": {**train_common, "lr": 1e-3, "batch_size": 16, "epochs": 1 if f else 2,
                          "log_every": 10}}},
            {"name": "ppo", "type": "ppo", "config": {
                "model": {"name_or_path": "${sft}/final"}, "reward": "${rm}/final",
                "track": {"gold": GOLD}, "advantage": "gae",
                "data": {**data, "train": "${data}/prompts.jsonl"},
                "sampling": {"num_samples": 2, "max_new_tokens": 40},
                # β 0.05: over 5 seeds held-out gold 0.49-0.59 at KL 3.4-5.0; at 0.005 PPO collapsed
                # (gold -1.4 and -2.0 at KL 12 and 15.5) in 2 of 5 (bench/results/ppo-kl0p05.json).
                "kl": {"beta": 0.02 if f else 0.05}, "ppo": {"epochs": 2, "missing_eos_penalty": 1.0},
                "sample_every": 10,
                "train": {**train_common, "lr": 5e-4 if f else 1e-4, "batch_size": 16,
                          "max_steps": 12 if f else 300, "eval_batch_size": 64, "log_every": 1}}},
            {"name": "dpo", "type": "dpo", "config": {
                "model": {"name_or_path": "${sft}/final"}, "beta": 0.1 if f else 0.3,
                "data": {**data, "train": "${pairs}/train.jsonl", "eval": "${pairs}/eval.jsonl"},
                "train": {**train_common, "lr": 5e-4 if f else 2e-4, "batch_size": 16, "epochs": 1,
                          "log_every": 5}}},
            {"name": "best-of-n", "type": "best-of-n", "config": {
                "model": {"name_or_path": "${sft}/final"}, "reward": "${rm}/final", "n": 4,
                "pool_size": 8 if f else 64, "save_pool": True, "seed": seed,
                "data": {**data, "train": "${data}/eval_prompts.jsonl"},
                "sampling": {"max_new_tokens": 40, "batch_size": 16}}},
            {"name": "raft", "type": "raft", "config": {
                **alt, "keep": "best", "rounds": 2 if f else 3, "sft": {"train": inner_sft}}},
            {"name": "rest", "type": "rest", "config": {
                **alt, "grow_steps": 1 if f else 2, "thresholds": [0.5, 0.75], "sft": {"train": inner_sft}}},
            {"name": "iterative-dpo", "type": "iterative-dpo", "config": {
                **alt, "rounds": 2 if f else 3, "reference": "initial",
                "dpo": {"beta": 0.3, "train": {**inner_sft, "lr": 2e-4}}}},
            {"name": "constitutional", "type": "constitutional", "config": {
                "model": {"name_or_path": "${sft}/final"}, "seed": seed,
                "data": {**data, "train": "${data}/prompts.jsonl", "max_samples": 256 if f else 1024},
                "principles": REVIEW_PRINCIPLES, "critic": f"{FEEDBACK}:reviews_critic",
                "reviser": f"{FEEDBACK}:reviews_reviser", "sampling": {"max_new_tokens": 40, "batch_size": 64},
                "sft": {"train": {**inner_sft, "batch_size": 32}}}},
            {"name": "eval", "type": "eval", "args": {
                "reference": "${sft}/final",
                "policies": {"ppo": "${ppo}/final", "dpo": "${dpo}/final", "raft": "${raft}/final",
                             "rest": "${rest}/final", "iterative-dpo": "${iterative-dpo}/final",
                             "constitutional": "${constitutional}/final"},
                "prompts": "${data}/eval_prompts.jsonl", "rewards": {"gold": GOLD, "proxy": "${rm}/final"},
                "best_of_n": {"best-of-n": "${best-of-n}"}, "num_samples": 2 if f else 4,
                "max_new_tokens": 40, "seed": seed, "chat_template": "none"}},
            {"name": "report", "type": "report", "args": {}},
        ],
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlhf quickstart", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/quickstart", help="output folder (resumes if it exists)")
    p.add_argument("--fast", action="store_true", help="a smaller smoke version (fewer steps and prompts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--print-config", action="store_true", help="print the pipeline YAML and exit")
    a = p.parse_args(argv)
    out = a.out if a.out != "runs/quickstart" or not a.fast else "runs/quickstart-fast"
    spec = pipeline_spec(out, fast=a.fast, seed=a.seed)
    if a.print_config:
        import yaml

        class _NoAnchors(yaml.SafeDumper):  # a section shared by two stages prints twice, not as &id005 / *id005
            def ignore_aliases(self, data: object) -> bool:
                return True

        print(yaml.dump(spec, Dumper=_NoAnchors, sort_keys=False))
        return 0
    import torch

    # The demo's models are tiny: per-op overhead, not arithmetic, bounds them, so extra
    # intra-op threads buy nothing and, on a busy machine, make every op wait for the slowest
    # thread (measured: PPO steps 10x slower with 2 threads next to another job).
    torch.set_num_threads(1)
    from rlhf.pipeline import PipelineError, run_pipeline
    try:
        run_pipeline(spec)
    except PipelineError as e:
        print(f"rlhf quickstart: {e}")
        return 2
    _print_headline(Path(out))
    return 0


def _print_headline(out: Path) -> None:
    summary = out / "eval" / "summary.json"
    if not summary.is_file():
        return
    headline = json.loads(summary.read_text()).get("headline", {})
    nan = float("nan")
    w = max([len("policy"), *map(len, headline)])
    print(f"\n{'policy':<{w}} {'gold':>8} {'proxy':>8} {'KL':>8}   (held-out prompts; KL to the SFT policy, nats)")
    for name, r in headline.items():
        print(f"{name:<{w}} {_f(r.get('gold'), nan):>8.3f} {_f(r.get('proxy'), nan):>8.3f} "
              f"{_f(r.get('kl'), nan):>8.3f}")
    print(f"\nReport: {out / 'report' / 'report.html'}")


def _f(v: Any, default: float) -> float:
    return default if v is None else float(v)
