"""The demo (``rlhf quickstart``) over several seeds, and every method's held-out numbers as a
mean with a 95% Student-t interval over the seeds.

    .venv/bin/python bench/demo_seeds.py --seeds 0,1,2,3,4 --jobs 2          # run + aggregate
    .venv/bin/python bench/demo_seeds.py --seeds 0,1,2,3,4 --aggregate-only  # re-read finished runs
    .venv/bin/python bench/demo_seeds.py --fast --seeds 0 --work /tmp/seeds --out /tmp/s.json  # smoke

Each seed is an ordinary quickstart run in ``--work/seed-<k>`` (the task's data, the tiny base
model, SFT, labels, reward model and every method all change with the seed); a run that exists
resumes, so a killed sweep continues where it stopped. Runs use one torch thread each
(quickstart's own setting); ``--jobs`` runs that many seeds at once.

Writes one JSON document (``--out``, default bench/results/demo_seeds.json): per seed the eval
stage's headline (gold, proxy, KL to SFT per method), the best-of-n curve (gold and proxy at
each n with its KL), PPO's training curve; and per method the mean and 95% interval over seeds.
bench/render_results.py turns it into the README's table, plots and sentences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf.stats import mean_interval  # noqa: E402

METRICS = ("gold", "proxy", "kl")


def run_seed(seed: int, work: Path, fast: bool) -> dict:
    out = work / f"seed-{seed}"
    log = work / f"seed-{seed}.log"
    cmd = [sys.executable, "-m", "rlhf.cli", "quickstart", "--seed", str(seed), "--out", str(out)]
    if fast:
        cmd.append("--fast")
    t0 = time.time()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if rc != 0:
        raise SystemExit(f"demo_seeds: seed {seed} failed (exit {rc}); see {log}")
    return {"seed": seed, "seconds": round(time.time() - t0, 1)}


def read_seed(out: Path) -> dict:
    """What one finished run says: headline per method, best-of-n curve, PPO's curve."""
    summary = json.loads((out / "eval" / "summary.json").read_text())
    results = json.loads((out / "eval" / "results.json").read_text())
    rec: dict = {"headline": summary["headline"], "best_of_n": {}}
    for name, entry in (results.get("best_of_n") or {}).items():
        rec["best_of_n"][name] = [{"n": c["n"], "kl": c.get("kl_bound"), **(c.get("rewards") or {})}
                                  for c in entry["curve"]]
    ppo = out / "ppo" / "metrics.jsonl"
    if ppo.is_file():
        rows = [json.loads(x) for x in ppo.read_text().splitlines() if x.strip()]
        rec["ppo_curve"] = [{"step": r["step"], "kl": r["kl"], "proxy": r["score"], "gold": r.get("track/gold")}
                            for r in rows if "score" in r and "kl" in r]
    return rec


def aggregate(seeds: dict[int, dict]) -> dict:
    methods: dict[str, dict[str, list[float]]] = {}
    for rec in seeds.values():
        for name, row in rec["headline"].items():
            for m in METRICS:
                if row.get(m) is not None:
                    methods.setdefault(name, {}).setdefault(m, []).append(float(row[m]))
        for name, curve in rec["best_of_n"].items():
            for point in curve:
                key = f"{name} (n={point['n']})"
                for m in METRICS:
                    if point.get(m) is not None:
                        methods.setdefault(key, {}).setdefault(m, []).append(float(point[m]))
    return {name: {m: {**mean_interval(v), "values": v} for m, v in ms.items()} for name, ms in methods.items()}


def run_pipeline_file(spec_file: Path, log: Path, what: str) -> None:
    """``rlhf pipeline spec_file`` in a child process with one torch thread, output to ``log``
    (appended); a failure stops the sweep naming the log."""
    with open(log, "a") as f:
        rc = subprocess.run([sys.executable, "-c", "import torch, sys; torch.set_num_threads(1); "
                             "from rlhf.pipeline import main; sys.exit(main(sys.argv[1:]))", str(spec_file)],
                            stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if rc != 0:
        raise SystemExit(f"{what} failed (exit {rc}); see {log}")


def running_mean(xs: list[float], w: int) -> list[float]:
    """Trailing mean over the last ``w`` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    p.add_argument("--work", default="runs/seeds", help="folder for the runs (resumed when present)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once")
    p.add_argument("--fast", action="store_true", help="quickstart --fast (the smoke test of this script, with one "
                   "seed; bench/demo_variant.py and bench/overoptimization.py take --fast to run on such runs)")
    p.add_argument("--aggregate-only", action="store_true", help="only read finished runs")
    p.add_argument("--out", default="bench/results/demo_seeds.json")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    work = (ROOT / a.work) if not Path(a.work).is_absolute() else Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    if not a.aggregate_only:
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            for r in pool.map(lambda s: run_seed(s, work, a.fast), seeds):
                timings[r["seed"]] = r["seconds"]
                print(json.dumps(r), flush=True)
    per_seed = {s: read_seed(work / f"seed-{s}") for s in seeds}
    doc = {"command": "bench/demo_seeds.py " + " ".join(sys.argv[1:]), "commit": git_commit(),
           "fast": a.fast, "smoke": a.fast, "seeds": seeds, "seconds": timings, "per_seed": per_seed,
           "methods": aggregate(per_seed)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: {m: round(v[m]["mean"], 3) for m in v} for k, v in doc["methods"].items()}, indent=1))


if __name__ == "__main__":
    main()
