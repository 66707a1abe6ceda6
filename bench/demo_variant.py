"""One stage of the demo re-run with changed settings on every seed's demo run, and evaluated
exactly as the demo evaluates its methods (same held-out prompts, samples, rewards and seed).

    .venv/bin/python bench/demo_variant.py --stage iterative-dpo --name iterative-dpo-rpo \\
        --set dpo.rpo_alpha=1.0 --seeds 0,1,2,3,4 --jobs 5
    .venv/bin/python bench/demo_variant.py --stage dpo --name dpo-beta0p1 --set beta=0.1
    .venv/bin/python bench/demo_variant.py --fast --stage dpo --name smoke --set beta=0.2 --seeds 0 \
        --demo-work /tmp/seeds --out /tmp/v.json     # smoke, on bench/demo_seeds.py --fast runs

Reads ``--demo-work/seed-<k>`` (bench/demo_seeds.py) and runs one pipeline per seed in
``seed-<k>/variants/<name>/``, its stages ``<name>/`` and ``eval-<name>/`` (resumed when present;
the pipeline's file and log beside it, as ``<name>.pipeline.json`` and ``<name>.log``). Prints, and writes to
``--out``, the variant's held-out gold, proxy and KL per seed next to the demo's own stage, with
the mean and 95% interval of the per-seed difference. Frontier sweeps (a KL coefficient, DPO's β)
are several variants of one stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
from demo_seeds import run_pipeline_file  # noqa: E402

from rlhf.stats import mean_interval  # noqa: E402


def _set(d: dict, dotted: str, value: str) -> None:
    import yaml
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = yaml.safe_load(value)


def spec_for(seed: int, demo: Path, a: argparse.Namespace) -> dict:
    from rlhf.tools.quickstart import pipeline_spec

    base = {s["name"]: s for s in pipeline_spec(demo, fast=a.fast, seed=seed)["stages"]}
    stage = copy.deepcopy(base[a.stage])
    stage["name"] = a.name
    for item in a.set:
        key, value = item.split("=", 1)
        _set(stage["config"], key, value)
    ev = copy.deepcopy(base["eval"])
    ev["name"] = f"eval-{a.name}"
    ev["args"]["policies"] = {a.name: "${" + a.name + "}/final"}
    ev["args"].pop("best_of_n", None)
    text = json.dumps({"output_dir": str(demo / "variants" / a.name), "description": f"{a.name} on seed {seed}",
                       "stages": [stage, ev]})
    # ${sft} etc. name the demo's own folders; the variant and its eval go to seed-<k>/variants/<name>/.
    for name in base:
        text = text.replace("${" + name + "}", str(demo / name))
    return json.loads(text)


def run_seed(seed: int, a: argparse.Namespace) -> None:
    demo = (Path(a.demo_work) / f"seed-{seed}").resolve()
    spec = spec_for(seed, demo, a)
    (demo / "variants").mkdir(exist_ok=True)
    spec_file = demo / "variants" / f"{a.name}.pipeline.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    run_pipeline_file(spec_file, demo / "variants" / f"{a.name}.log", f"demo_variant: seed {seed}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, help="a stage of the demo (rlhf quickstart --print-config)")
    p.add_argument("--name", required=True, help="folder name of the variant")
    p.add_argument("--set", action="append", default=[], help="dotted key=value in the stage's config")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--demo-work", default="runs/seeds")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the comparison (default bench/results/<name>.json)")
    p.add_argument("--fast", action="store_true", help="the demo runs are quickstart --fast ones (bench/demo_seeds.py "
                   "--fast): the stage's settings are the fast demo's (the smoke test of this script)")
    a = p.parse_args()
    if not re.fullmatch(r"[A-Za-z0-9_-]+", a.name):  # a pipeline ${name} reference allows no more
        p.error(f"--name {a.name!r}: letters, digits, '-' and '_' only (e.g. dpo-beta0p1)")
    seeds = [int(s) for s in a.seeds.split(",")]
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        list(pool.map(lambda s: run_seed(s, a), seeds))
    rows = {}
    for s in seeds:
        demo = Path(a.demo_work) / f"seed-{s}"
        evald = demo / "variants" / a.name / f"eval-{a.name}"
        head = json.loads((evald / "summary.json").read_text())["headline"]
        base = json.loads((demo / "eval" / "summary.json").read_text())["headline"]
        rows[s] = {"variant": head[a.name], "demo": base.get(a.stage), "reference": base["reference"]}
    diff = {m: mean_interval([rows[s]["variant"][m] - rows[s]["demo"][m] for s in seeds])
            for m in ("gold", "proxy", "kl") if all(rows[s]["demo"] for s in seeds)}
    var = {m: mean_interval([rows[s]["variant"][m] for s in seeds]) for m in ("gold", "proxy", "kl")}
    doc = {"command": "bench/demo_variant.py " + " ".join(sys.argv[1:]), "smoke": a.fast, "stage": a.stage,
           "name": a.name, "set": a.set, "per_seed": rows, "variant": var, "variant_minus_demo": diff}
    out = Path(a.out or f"bench/results/{a.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    def brief(d: dict) -> dict:
        return {m: [round(v[k], 3) for k in ("mean", "lo", "hi")] for m, v in d.items()}

    print(json.dumps({"variant": brief(var), "variant_minus_demo": brief(diff)}, indent=1))


if __name__ == "__main__":
    main()
