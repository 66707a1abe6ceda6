"""The pipeline's ``eval`` stage: every policy against the reference on held-out prompts, plus
the best-of-n frontier scored by every reward source, into ``results.json`` (what the run
report plots).

Best-of-n selects with its own reward (the proxy) but is *judged* by every source: from the
saved pool, the expected judge score of the proxy's favourite among k random candidates is

    E[g(best-of-k)] = Σ_j g_(j) · C(j−1, k−1) / C(M, k)

with the M pool completions sorted by proxy score (g_(j) = judge score of the j-th lowest): the
j-th lowest is the best of a random k-subset exactly when the other k−1 come from the j−1 below
it. Ties in the proxy are broken by pool order, which is uniformly random.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["eval_stage", "concomitant_curve"]


def concomitant_curve(proxy: Sequence[Sequence[float]], judge: Sequence[Sequence[float]],
                      ks: Sequence[int]) -> list[float]:
    """Mean over prompts of E[judge score of the proxy-best of k random pool members], per k."""
    out = []
    for k in ks:
        total = 0.0
        for p, g in zip(proxy, judge):
            M = len(p)
            if not 1 <= k <= M:
                raise ValueError(f"concomitant_curve: k={k} outside 1..{M} (pool size)")
            order = sorted(range(M), key=lambda i: (p[i], i))  # ascending proxy, stable
            denom = math.comb(M, k)
            total += sum(g[i] * math.comb(j, k - 1) / denom for j, i in enumerate(order))
        out.append(total / len(proxy))
    return out


def eval_stage(output_dir: str | Path, *, reference: str, policies: dict[str, str], prompts: str,
               rewards: dict[str, str], best_of_n: dict[str, str] | None = None,
               num_samples: int = 2, max_new_tokens: int = 32, temperature: float = 1.0,
               batch_size: int = 16, seed: int = 0, max_prompts: int | None = None,
               chat_template: str = "auto") -> dict[str, Any]:
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_records
    from rlhf.eval.evaluate import evaluate
    from rlhf.rewards import load_reward_source

    records = load_records(DataConfig(train=str(prompts), strict=True, max_samples=max_prompts), "prompt")[0]
    texts = [r.prompt for r in records]
    columns = [r.columns for r in records]  # each prompt's other columns, for reward functions
    dcfg = DataConfig(chat_template=chat_template)  # type: ignore[arg-type]  # a str from the caller
    results: dict[str, Any] = {"reference": reference, "prompts": len(texts), "policies": {}}
    # Each result also holds the reference's own samples and scores (its "reference" side):
    # the frontier's origin at KL 0.
    for name, path in policies.items():
        print(f"[eval] {name}: {path}")
        results["policies"][name] = evaluate(path, reference, texts, rewards, num_samples=num_samples,
                                             max_new_tokens=max_new_tokens, temperature=temperature,
                                             batch_size=batch_size, seed=seed, data_cfg=dcfg,
                                             num_examples=4, columns=columns)
    sources = {k: load_reward_source(v) for k, v in rewards.items()}
    for name, run_dir in (best_of_n or {}).items():
        run = Path(run_dir)
        summary = json.loads((run / "summary.json").read_text())
        pool_file = run / "pool.jsonl"
        entry: dict[str, Any] = {"n": summary["n"], "kl_bound": summary["kl_bound"],
                                 "kl_estimate": summary["kl_estimate"], "curve": summary["curve"]}
        if pool_file.is_file():
            pool = [json.loads(x) for x in pool_file.read_text().splitlines() if x.strip()]
            ks = [c["n"] for c in summary["curve"]]
            for src_name, src in sources.items():
                judged = [src([row["prompt"]] * len(row["completions"]), row["completions"]).tolist()
                          for row in pool]
                curve = concomitant_curve([row["rewards"] for row in pool], judged, ks)
                for point, value in zip(entry["curve"], curve):
                    point.setdefault("rewards", {})[src_name] = value
        results["best_of_n"] = results.get("best_of_n", {})
        results["best_of_n"][name] = entry
    tmp = Path(output_dir) / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False, default=str))
    tmp.replace(Path(output_dir) / "results.json")
    headline = {}
    first = next(iter(results["policies"].values()), None)
    if first is not None:
        headline["reference"] = {k: ((first.get("reference") or {}).get("reward", {}).get(k) or {}).get("mean")
                                 for k in rewards} | {"kl": 0.0}
    for name, r in results["policies"].items():
        headline[name] = {k: ((r.get("policy") or {}).get("reward", {}).get(k) or {}).get("mean")
                          for k in rewards} | {"kl": (r.get("kl") or {}).get("mean")}
    return {"headline": headline}
