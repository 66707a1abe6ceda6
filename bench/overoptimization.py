"""Reward over-optimisation on the built-in task, fitted to Gao, Schulman & Hilton (2022).

    .venv/bin/python bench/overoptimization.py --seeds 0,1,2,3,4 --pairs 256,1024,all --jobs 2
    .venv/bin/python bench/overoptimization.py --fast --seeds 0 --pairs 64 --steps 8 \
        --demo-work /tmp/seeds --work /tmp/overopt --out /tmp/o.json    # smoke, on demo_seeds.py --fast runs

Needs the demo's runs per seed (bench/demo_seeds.py: ``runs/seeds/seed-<k>``): their SFT policy,
labelled pairs and best-of-n pools. For each seed and each reward-model training-set size
(Gao et al.'s axis: a proxy trained on fewer labelled pairs is a worse proxy):

1. a reward model on the first N labelled pairs (the demo's RM settings otherwise);
2. PPO against it **without a KL penalty** (``--beta``, default 0) for ``--steps`` steps, the gold
   reward tracked on every rollout but never optimised. With nothing holding the policy near
   SFT, its KL grows step by step, which traces gold and proxy along the whole KL axis in one run
   (Gao et al. take RL checkpoints along one run the same way);
3. the RL form gold(d) − gold(0) = d(α − β·log d), d = √KL, fitted to the run's (KL, gold)
   points (rollout means per step; gold(0) = the mean of the first 5 steps); and the
   best-of-n form d(α − β·d) fitted to the demo's best-of-n curve (n = 1..pool, KL = log n −
   (n−1)/n, gold of the proxy's pick by the unbiased pool estimator).

"Over-optimised" for a run means: the gold curve (10-step running mean) first rises at least
``--drop`` above its start, peaks before the last quarter of the run and ends at least ``--drop``
below its peak, while the proxy curve ends above its value at the gold peak (a run whose gold
only falls is Goodhart from the first step, counted apart as "never rose"). Writes
bench/results/overoptimization.json (per seed and size: RM held-out accuracy, the curves, both
fits, the verdict); bench/render_results.py plots it.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
from demo_seeds import run_pipeline_file, running_mean  # noqa: E402

from rlhf.eval.overoptimization import gao_fit, peak_of_fit  # noqa: E402
from rlhf.stats import mean_interval  # noqa: E402

GOLD = "rlhf.testbed.reviews:gold_reward"


def spec_for(seed: int, demo: Path, out: Path, sizes: list[str], a: argparse.Namespace) -> dict:
    """A pipeline per seed: rm-<N> then ppo-<N> for every size N, reading the demo's folders."""
    from rlhf.tools.quickstart import pipeline_spec

    base = {s["name"]: s for s in pipeline_spec(demo, fast=a.fast, seed=seed)["stages"]}
    sub = {"${sft}": str(demo / "sft"), "${pairs}": str(demo / "pairs"), "${data}": str(demo / "data")}

    def resolve(x):
        if isinstance(x, dict):
            return {k: resolve(v) for k, v in x.items()}
        if isinstance(x, str):
            for k, v in sub.items():
                x = x.replace(k, v)
        return x

    stages = []
    for n in sizes:
        rm = resolve(json.loads(json.dumps(base["rm"]["config"])))
        if n != "all":
            rm["data"]["max_samples"] = int(n)
        ppo = resolve(json.loads(json.dumps(base["ppo"]["config"])))
        ppo["reward"] = "${rm-" + n + "}/final"
        ppo["kl"] = {"beta": a.beta}
        ppo["train"].update({"max_steps": a.steps, "lr": a.lr, "progress": False})
        ppo["sample_every"] = 1000
        stages += [{"name": f"rm-{n}", "type": "rm", "config": rm},
                   {"name": f"ppo-{n}", "type": "ppo", "config": ppo}]
    return {"output_dir": str(out), "description": f"over-optimisation, seed {seed}", "stages": stages}


def run_seed(seed: int, a: argparse.Namespace, sizes: list[str]) -> None:
    demo, out = Path(a.demo_work) / f"seed-{seed}", Path(a.work) / f"seed-{seed}"
    # The pipeline's file and log beside its folder: rlhf pipeline refuses a folder that holds
    # anything but its own runs.
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_file = out.parent / f"seed-{seed}.pipeline.yaml"
    import yaml
    spec_file.write_text(yaml.safe_dump(spec_for(seed, demo.resolve(), out.resolve(), sizes, a), sort_keys=False))
    run_pipeline_file(spec_file, out.parent / f"seed-{seed}.log", f"overoptimization: seed {seed}")


def analyse_run(ppo_dir: Path, drop: float) -> dict:
    rows = [r for r in map(json.loads, (ppo_dir / "metrics.jsonl").read_text().splitlines())
            if "score" in r and "kl" in r and "track/gold" in r]  # the per-step rollout rows
    kl = [max(0.0, float(r["kl"])) for r in rows]
    gold = [float(r["track/gold"]) for r in rows]
    proxy = [float(r["score"]) for r in rows]
    g0 = sum(gold[:5]) / 5
    fit = gao_fit("rl", kl, [g - g0 for g in gold])
    sg, sp = running_mean(gold, 10), running_mean(proxy, 10)
    peak = max(range(len(sg)), key=sg.__getitem__)
    # Rose by at least `drop` first (a peak at the start is no peak), then fell by `drop`, while the
    # proxy ended above its value at the gold peak.
    over = (peak < 0.75 * len(sg) and sg[peak] >= g0 + drop and sg[-1] <= sg[peak] - drop
            and sp[-1] > sp[peak])
    return {"steps": len(rows), "kl": kl, "gold": gold, "proxy": proxy, "gold0": g0, "fit_rl": fit,
            "fit_peak": peak_of_fit("rl", fit["alpha"], fit["beta"]),
            "gold_peak": {"step": rows[peak]["step"], "gold": sg[peak], "kl": kl[peak], "proxy": sp[peak]},
            "end": {"gold": sg[-1], "proxy": sp[-1], "kl": sum(kl[-10:]) / len(kl[-10:])},
            "overoptimised": bool(over), "never_rose": bool(sg[peak] < g0 + drop)}


def analyse_bon(demo: Path) -> dict | None:
    if not (demo / "eval" / "results.json").is_file():
        return None
    res = json.loads((demo / "eval" / "results.json").read_text())
    for entry in (res.get("best_of_n") or {}).values():
        pts = [(c["kl_bound"], c["rewards"]["gold"]) for c in entry["curve"] if "rewards" in c]
        g0 = next(g for k, g in pts if k == 0)
        fit = gao_fit("bon", [k for k, _ in pts], [g - g0 for _, g in pts])
        return {"kl": [k for k, _ in pts], "gold": [g for _, g in pts], "gold0": g0, "fit_bon": fit}
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--pairs", default="256,1024,all", help="reward-model training-set sizes ('all' = every pair)")
    p.add_argument("--demo-work", default="runs/seeds")
    p.add_argument("--work", default="runs/overopt")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.0, help="KL penalty of the PPO runs")
    p.add_argument("--drop", type=float, default=0.1, help="gold fall from its peak that counts as over-optimised")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--analyse-only", action="store_true")
    p.add_argument("--out", default="bench/results/overoptimization.json")
    p.add_argument("--fast", action="store_true", help="the demo runs are quickstart --fast ones (bench/demo_seeds.py "
                   "--fast): the RM and PPO settings are the fast demo's (the smoke test of this script)")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    sizes = [s.strip() for s in a.pairs.split(",")]
    if not a.analyse_only:
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            list(pool.map(lambda s: run_seed(s, a, sizes), seeds))
    per_seed: dict = {}
    for s in seeds:
        out = Path(a.work) / f"seed-{s}"
        rec: dict = {"bon": analyse_bon(Path(a.demo_work) / f"seed-{s}"), "runs": {}}
        for n in sizes:
            rm_summary = json.loads((out / f"rm-{n}" / "summary.json").read_text())
            rec["runs"][n] = {"rm_accuracy": rm_summary.get("eval_accuracy"), "rm_pairs": rm_summary.get("train_pairs"),
                              **analyse_run(out / f"ppo-{n}", a.drop)}
        per_seed[s] = rec
    summary = {}
    for n in sizes:
        runs = [per_seed[s]["runs"][n] for s in seeds]
        summary[n] = {"overoptimised_seeds": sum(r["overoptimised"] for r in runs), "seeds": len(runs),
                      "never_rose": sum(r["never_rose"] for r in runs),
                      "alpha": mean_interval([r["fit_rl"]["alpha"] for r in runs]),
                      "beta": mean_interval([r["fit_rl"]["beta"] for r in runs]),
                      "r2": mean_interval([r["fit_rl"]["r2"] for r in runs]),
                      "peak_gold_gain": mean_interval([r["gold_peak"]["gold"] - r["gold0"] for r in runs]),
                      "kl_at_gold_peak": mean_interval([r["gold_peak"]["kl"] for r in runs])}
    bons = [per_seed[s]["bon"] for s in seeds if per_seed[s]["bon"]]
    if bons:
        summary["best_of_n"] = {k: mean_interval([b["fit_bon"][k] for b in bons]) for k in ("alpha", "beta", "r2")}
    doc = {"command": "bench/overoptimization.py " + " ".join(sys.argv[1:]), "smoke": a.fast, "settings": vars(a),
           "per_seed": per_seed, "summary": summary}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({n: {k: (v if not isinstance(v, dict) else round(v["mean"], 3)) for k, v in s.items()}
                      for n, s in summary.items()}, indent=1))


if __name__ == "__main__":
    main()
