"""The calculator task (``rlhf pipeline --recipe calculator``) over several seeds: held-out
success and tool use of the SFT and GRPO policies, and GRPO's paired gain over SFT with a 95%
Student-t interval over the seeds.

    .venv/bin/python bench/calculator.py                      # seeds 0,1,2; resumes finished seeds
    .venv/bin/python bench/calculator.py --aggregate-only     # re-read the finished runs
    .venv/bin/python bench/calculator.py --smoke              # one tiny step, seeds 0,1: checks the script

Each seed is the shipped recipe with the seed set in every stage that draws random numbers (the
task's data, the tiny base model, SFT's and GRPO's ``train.seed``, the eval's sampling); the
numbers are the recipe's own eval stage (rlhf/testbed/calculator.py:eval_stage). A seed whose
eval stage finished is not rerun; an interrupted one resumes where the pipeline stopped. Runs go
to ``--work`` (default: a folder outside the repository) with one torch thread each.

Writes ``--out`` (default bench/results/calculator.json; --smoke runs in a fresh temporary folder,
removed at the end, and only prints its JSON unless --out is given) with the ``meta`` header of the
other results (bench/_bench.py), per seed the values and seconds, and per metric the mean and 95%
interval over the seeds that finished.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._bench import write_json  # noqa: E402
from rlhf.stats import mean_interval  # noqa: E402

RECIPE = ROOT / "rlhf" / "configs" / "pipeline" / "calculator.yaml"
POLICIES = ("sft", "grpo")
METRICS = ("success", "tool_use")


def seeded_spec(seed: int, out: Path, smoke: bool = False) -> dict[str, Any]:
    """The shipped recipe with ``seed`` in every stage that draws random numbers; ``smoke``
    shrinks it to one tiny step of each stage."""
    spec = yaml.safe_load(RECIPE.read_text())
    spec = copy.deepcopy(spec)
    spec["output_dir"] = str(out)
    st = {s["name"]: s for s in spec["stages"]}
    st["data"]["args"]["seed"] = seed
    st["base"]["args"]["seed"] = seed
    st["sft"]["config"]["train"]["seed"] = seed
    st["grpo"]["config"]["train"]["seed"] = seed
    st["eval"]["args"]["seed"] = seed
    if smoke:
        st["data"]["args"].update(n_sft=64, n_prompts=16, n_eval=4)
        st["sft"]["config"]["train"].update(epochs=1, batch_size=16)
        st["grpo"]["config"]["train"].update(max_steps=1, batch_size=4)
        st["grpo"]["config"]["sampling"]["num_samples"] = 2
        st["eval"]["args"]["num_samples"] = 1
    return spec


def eval_file(run: Path) -> Path:
    return run / "eval" / "results.json"


def run_seed(seed: int, work: Path, smoke: bool, threads: int = 1) -> float | None:
    """Run (or resume) one seed's pipeline; seconds taken, or None when it had already finished."""
    run = work / f"seed-{seed}"
    if eval_file(run).is_file():
        return None
    work.mkdir(parents=True, exist_ok=True)
    spec_file = work / f"seed-{seed}.yaml"
    spec_file.write_text(yaml.safe_dump(seeded_spec(seed, run, smoke), sort_keys=False))
    log = work / f"seed-{seed}.log"
    t0 = time.time()
    with open(log, "a") as f:
        rc = subprocess.run([sys.executable, "-c", "import torch, sys; torch.set_num_threads(int(sys.argv[1])); "
                             "from rlhf.pipeline import main; sys.exit(main(sys.argv[2:]))", str(threads),
                             str(spec_file)],
                            stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads),
                                 "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
                            ).returncode
    if rc != 0:
        raise SystemExit(f"bench/calculator.py: seed {seed} failed (exit {rc}); see {log}")
    return round(time.time() - t0, 1)


def read_seed(run: Path) -> dict[str, Any]:
    """The eval stage's numbers of one finished run: per policy success, tool use, episodes."""
    res = json.loads(eval_file(run).read_text())
    return {p: {m: float(res[p][m]) for m in (*METRICS, "episodes")} for p in POLICIES}


def _interval(values: list[float]) -> dict[str, Any]:
    """rlhf.stats.mean_interval with the values; one seed's nan bounds become null (strict JSON)."""
    return {**{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in mean_interval(values).items()},
            "values": values}


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per policy and metric the mean and 95% interval over seeds, and GRPO minus SFT per seed
    (paired: same seed, same data and base model) with its interval."""
    seeds = sorted(per_seed)
    out: dict[str, Any] = {p: {m: _interval([per_seed[s][p][m] for s in seeds]) for m in METRICS} for p in POLICIES}
    out["gain"] = {m: _interval([per_seed[s]["grpo"][m] - per_seed[s]["sft"][m] for s in seeds]) for m in METRICS}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; 0,1 with --smoke)")
    p.add_argument("--work", default=None,
                   help="folder for the runs, resumed when present (default: <tmp>/rlhf-bench-calculator[-smoke])")
    p.add_argument("--smoke", action="store_true", help="one tiny step per stage (checks the script, not a figure)")
    p.add_argument("--aggregate-only", action="store_true", help="only read finished runs (those missing are left out)")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/calculator.json)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    a = p.parse_args(argv)
    seeds = [int(s) for s in (a.seeds or ("0,1" if a.smoke else "0,1,2")).split(",") if s.strip()]
    scratch = a.smoke and not a.work  # a fresh folder, removed at the end: a smoke must run its steps
    if a.work:
        work = Path(a.work)
    elif scratch:
        work = Path(tempfile.mkdtemp(prefix="rlhf-bench-calculator-smoke-"))
    else:
        work = Path(tempfile.gettempdir()) / "rlhf-bench-calculator"
    out = Path(a.out) if a.out else (None if a.smoke else ROOT / "bench" / "results" / "calculator.json")
    seconds: dict[str, float] = {}
    timings_file = work / "seconds.json"
    if timings_file.is_file():
        seconds = json.loads(timings_file.read_text())
    if not a.aggregate_only:
        for s in seeds:
            took = run_seed(s, work, a.smoke, a.threads)
            if took is not None:
                seconds[str(s)] = took
                timings_file.write_text(json.dumps(seconds))
            print(json.dumps({"seed": s, "seconds": seconds.get(str(s)), "resumed": took is None}), flush=True)
    finished = [s for s in seeds if eval_file(work / f"seed-{s}").is_file()]
    if not finished:
        raise SystemExit(f"bench/calculator.py: no finished seed under {work}")
    per_seed = {s: read_seed(work / f"seed-{s}") for s in finished}
    doc = {"recipe": "calculator", "smoke": a.smoke, "seeds": finished,
           "eval": "held-out prompts x samples at temperature 1 (rlhf/testbed/calculator.py:success_rate)",
           "seconds_per_seed": {str(s): seconds.get(str(s)) for s in finished},
           "per_seed": {str(s): per_seed[s] for s in finished}, "summary": aggregate(per_seed)}
    text = write_json(doc, out, argv)
    if out is not None:
        print(f"wrote {out}", file=sys.stderr)
    if scratch:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(json.loads(text)), flush=True)  # one line, last: what tests/test_bench_smoke.py reads


if __name__ == "__main__":
    main()
