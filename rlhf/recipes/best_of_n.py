"""Best-of-n sampling: draw n completions per prompt, keep the one the reward source likes best.

The simplest way to spend compute on alignment, and the baseline every RL method should beat
at equal KL (Stiennon et al. 2020; Nakano et al. 2021, WebGPT; Gao et al. 2022). No weights
change, hence no training: ``train`` is named so for the CLI's uniformity.

For each prompt the recipe samples a pool of ``pool_size`` completions (default n), scores
them all, and keeps the best of the FIRST n (ties broken uniformly at random, seeded, the
rule the KL formulas assume). From the pool it also reports:

* the expected best-of-k reward for every k = 1..pool_size (:func:`best_of_n_curve`, an unbiased
  order-statistics estimate from one pool); k = 1 is the mean single-sample reward;
* the analytical KL(π_BoN || π) = log n - (n-1)/n, exact only for a tie-free reward and an upper
  bound otherwise, beside the KL measured on each prompt's pool (exact best-of-n KL of the
  empirical distribution, which sees ties: repeated completions, discrete rewards). The pool
  estimate is biased low for small pools; ``pool_size`` a few times n makes that bias small
  (docs/evaluation.md).

Outputs, in ``output_dir``: ``config.yaml``; ``best.jsonl`` (one row per prompt: prompt,
completion, reward, rewards of the n candidates, index of the chosen one; a prompt/completion
file that ``rlhf sft`` reads, i.e. rejection-sampling fine-tuning data); ``pool.jsonl`` with
every completion when ``save_pool``; ``summary.json`` last, which marks the run finished. A
finished run is never overwritten (the stage stops with an error, as every stage does).

Run it with ``rlhf best-of-n --recipe tiny [key=value ...]``.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError, opt, save_config
from rlhf.data.config import DataConfig
from rlhf.eval.evaluate import SamplingConfig, sample_completions
from rlhf.eval.metrics import best_of_n_curve, best_of_n_kl_bound, best_of_n_kl_estimate, mean_stderr
from rlhf.models.config import ModelConfig
from rlhf.train.run import prepare_output_dir, write_json_atomic, write_jsonl_atomic

__all__ = ["BestOfNConfig", "train", "select_best", "best_of_n_curve"]


@dataclass(frozen=True)
class BestOfNConfig:
    output_dir: str = opt("runs/best-of-n", "folder for config.yaml, best.jsonl, pool.jsonl and summary.json")
    reward: str | dict[str, Any] = opt("", "the reward source: a reward-model folder, "
                                           "package.module:function, a .yaml/.json spec file, or a "
                                           "spec mapping (docs/reward-models.md)")
    n: int = opt(4, "candidates per prompt; the best of them is kept", ge=1)
    pool_size: int | None = opt(None, "completions sampled per prompt for the reward curve and the "
                                      "KL estimate (the best is taken from the first n); null = n",
                                ge=1)
    seed: int = opt(0, "seed of sampling and of tie-breaking")
    reward_batch_size: int = opt(64, "completions per call of the reward source", ge=1)
    save_pool: bool = opt(False, "also write pool.jsonl with every sampled completion and its reward")
    progress: bool = opt(True, "show a progress bar over the prompts")
    model: ModelConfig = opt(factory=ModelConfig, help="the policy to sample from")
    data: DataConfig = opt(factory=DataConfig, help="the prompts: data.train is any file the data layer "
                                                    "reads (its prompt column is used); data.max_samples "
                                                    "caps the number of prompts")
    sampling: SamplingConfig = opt(factory=SamplingConfig, help="how completions are sampled")

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train", "is required: the prompts (a .jsonl/.json/.parquet/.csv "
                                            "file with a prompt column, a dataset folder or a hub id)")
        if isinstance(self.reward, str) and not self.reward.strip() or self.reward == {}:
            raise ConfigError("reward", "is required: a reward-model folder, package.module:function, "
                                        "or a spec file/mapping (got nothing)")
        if self.pool_size is not None and self.pool_size < self.n:
            raise ConfigError("pool_size", f"must be >= n={self.n}: the best is taken from the first n "
                                           f"of the pool (got {self.pool_size})")
        if self.sampling.temperature == 0 and (self.n > 1 or (self.pool_size or 1) > 1):
            raise ConfigError("sampling.temperature", "0 is greedy decoding: all n candidates would be "
                                                      "the same completion; use a temperature > 0")

    @property
    def pool(self) -> int:
        return self.pool_size if self.pool_size is not None else self.n


def select_best(rewards: list[float], rng: random.Random) -> int:
    """Index of the highest reward; ties broken uniformly at random among the tied samples
    (the rule under which :func:`rlhf.eval.metrics.best_of_n_kl_exact` is exact)."""
    top = max(rewards)
    return rng.choice([i for i, r in enumerate(rewards) if r == top])


def train(cfg: BestOfNConfig) -> dict[str, Any]:
    import torch

    from rlhf.data.load import load_records
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.rewards import call_reward, load_reward_source, row_columns

    t0 = time.time()
    out = Path(cfg.output_dir)
    n, M = cfg.n, cfg.pool

    # Step 1. The output folder: a finished run (summary.json) is never overwritten.
    prepare_output_dir(out, "none")
    save_config(cfg, out / "config.yaml")

    # Step 2. Prompts (bad rows skipped and counted, or an error naming the row in strict mode)
    # and the reward source, before the model, so that bad input fails fast.
    records, report = load_records(cfg.data, "prompt")
    prompts = [r.prompt for r in records]
    try:
        source = load_reward_source(cfg.reward)
    except ValueError as e:
        raise ConfigError("reward", str(e)) from None

    # Step 3. The policy.
    tokenizer = load_tokenizer(cfg.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(cfg.model, for_training=False).to(device)

    # Step 4. Sample a pool of M completions per prompt (one batch of prompts at a time, so the
    # progress bar moves), score every completion.
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(prompts), desc="best-of-n", unit="prompt")
    rows = sample_completions(model, tokenizer, prompts, cfg.sampling, num_samples=M, seed=cfg.seed,
                              data_cfg=cfg.data, progress=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    rewards: list[float] = []
    columns = [records[i // M].columns for i in range(len(rows))]  # M samples per prompt, in order
    for k in range(0, len(rows), cfg.reward_batch_size):
        part = rows[k:k + cfg.reward_batch_size]
        rewards += call_reward(source, [r["prompt"] for r in part], [r["completion"] for r in part],
                               **row_columns(columns[k:k + cfg.reward_batch_size])).tolist()
    pool = [rewards[i * M:(i + 1) * M] for i in range(len(prompts))]  # (P, M)

    # Step 5. Keep the best of the first n of each pool.
    rng = random.Random(cfg.seed)
    best_rows = []
    for i, prompt in enumerate(prompts):
        cand = pool[i][:n]
        j = select_best(cand, rng)
        r = rows[i * M + j]
        best_rows.append({"prompt": prompt, "completion": r["completion"], "reward": cand[j],
                          "rewards": cand, "index": j, "ended_with_eos": r["ended_with_eos"],
                          "num_tokens": r["num_tokens"]})

    # Step 6. The reward curve and KL (bound and pool estimate) for every k up to the pool size.
    ks = list(range(1, M + 1))
    curve = best_of_n_curve(pool, ks)
    frontier = [{"n": k, "mean_reward": c, "kl_bound": best_of_n_kl_bound(k),
                 "kl_estimate": best_of_n_kl_estimate(pool, k)} for k, c in zip(ks, curve)]
    best = mean_stderr([b["reward"] for b in best_rows])
    # A single sample's expected reward: the pool mean per prompt (prompts are the units).
    single = mean_stderr([sum(p) / M for p in pool])
    summary = {
        "n": n, "pool_size": M, "num_prompts": len(prompts), "reward_source": source.name,
        "mean_reward_best": best["mean"], "stderr_reward_best": best["stderr"],
        "mean_reward_single": single["mean"], "stderr_reward_single": single["stderr"],
        "reward_gain": best["mean"] - single["mean"],
        "expected_reward_best_of_n": curve[n - 1],
        "kl_bound": best_of_n_kl_bound(n), "kl_estimate": frontier[n - 1]["kl_estimate"],
        "eos_fraction_best": sum(b["ended_with_eos"] for b in best_rows) / len(best_rows),
        "mean_length_best": sum(b["num_tokens"] for b in best_rows) / len(best_rows),
        "curve": frontier, "skipped": dict(report.counts), "seconds": round(time.time() - t0, 2),
    }

    # Step 7. Write the outputs; summary.json last marks the run finished.
    write_jsonl_atomic(out / "best.jsonl", best_rows)
    if cfg.save_pool:
        write_jsonl_atomic(out / "pool.jsonl", [
            {"prompt": prompts[i], "completions": [r["completion"] for r in rows[i * M:(i + 1) * M]],
             "rewards": pool[i]} for i in range(len(prompts))])
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    write_json_atomic(out / "summary.json", summary)
    print(f"[best-of-n] {len(prompts)} prompts, n={n}: mean reward {summary['mean_reward_best']:.4g} "
          f"(single sample {summary['mean_reward_single']:.4g}); KL bound {summary['kl_bound']:.3f}, "
          f"pool estimate {summary['kl_estimate']:.3f} nats -> {out}")
    return summary
