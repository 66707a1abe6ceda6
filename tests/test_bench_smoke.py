"""Benchmarks that cannot rot: every side-by-side bench runs in its --smoke mode (one or two steps,
tiny sizes, seconds), the rlhf side always and TRL's side where its environment exists, so a change
that breaks a bench fails the suite instead of being found by the next person who times it.

The smoke runs' timings are no figures (the JSON says ``"smoke": true`` and bench/readme_perf.py
ignores such files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

# bench script -> (needs the HH data, the TRL environment its TRL side runs in)
SMOKED = {
    "dpo_vs_trl.py": (True, ".venv-trl"),
    "rm_vs_trl.py": (True, ".venv-trl"),
    "ppo_vs_trl.py": (False, ".venv-trl-ppo"),
    "real_shape.py": (True, ".venv-trl"),
    "mfu.py": (False, None),
    "sampler.py": (False, None),
    "calculator.py": (False, None),  # the calculator recipe per seed (bench/results/calculator.json)
    "cli_help.py": (False, None),
    "dpo_hh.py": (True, None),
    "optimizer_step.py": (False, None),
    "compile_update.py": (False, None),
    "render_results.py": (False, None),
    "scaling.py": (False, None),
    "prefill_count.py": (False, None),
    "recipe_step.py": (False, None),
    "sft_throughput.py": (False, None),
}
# Scripts that run as a child of a smoked bench (covered by it), are smoked elsewhere, or are no benchmark.
COVERED = {
    "vllm_vs_builtin.py": "runs in .venv-vllm: smoked by tests/engines/test_vllm.py (make test-vllm)",
    "dpo_trl.py": "TRL child of dpo_vs_trl.py (runs in its smoke where .venv-trl exists)",
    "rm_trl.py": "TRL child of rm_vs_trl.py (as above)",
    "ppo_trl.py": "TRL child of ppo_vs_trl.py (as above, .venv-trl-ppo for PPO)",
    "rm_hh.py": "rlhf child of rm_vs_trl.py (runs in its smoke)",
    "_bench.py": "the shared helper module every bench imports",
    "readme_perf.py": "README generator, tested by tests/test_readme_perf.py",
    "figures.py": "README/docs figure generator, tested by tests/test_figures.py",
    "render_real.py": "README real-model block generator from bench/results/real_*.json",
}
# The demo's benches, smoked on one ``rlhf quickstart --fast`` run (the session's fixture, which
# tests/test_pipeline.py checks too): each with its arguments and what its JSON must hold.
DEMO = {
    "demo_seeds.py": "--fast --seeds 0 (resumes the fixture's run)",
    "demo_variant.py": "--fast: DPO at beta 0.2 on the fixture's run, evaluated as the demo evaluates",
    "overoptimization.py": "--fast: a reward model on 64 pairs, PPO without KL for 8 steps",
    "demo_time.py": "--smoke: times `rlhf quickstart --print-config`",
}
# The real-model benches (hours on SmolLM2-135M): --smoke runs each one's whole path on a tiny random
# ChatML Llama (bench/_bench.py smoke_chat_model) in seconds; what its JSON must hold.
REAL = {
    "real_grpo.py": lambda r: r["seeds_done"] == [0] and r["steps"] == 2 and len(r["training_progress"]["0"]
                                                                                 ["train_reward_by_step"]) == 2
    and 0 <= r["base_accuracy"] <= 1 and r["per_seed"]["0"]["kl_last_step"] is not None,
    "real_hh.py": lambda r: r["split"]["train_pairs"] == 8 and r["split"]["eval_pairs"] == 8
    and 0 <= r["length_baseline"] <= 1 and r["judge"]["pairs"] == 8 and r["rm"]["accuracy"] is not None
    and r["dpo"]["accuracy"] is not None,
    "real_recipes.py": lambda r: len(r["recipes"]) == 4 and all(x["steps"] == 2 and x["step_s"] > 0
                                                                 for x in r["recipes"]),
}
# Scripts without a smoke mode yet, each with the reason (issue 24 item 3 lists them as left).
NOT_YET = {
    "gpu_fsdp.py": "needs GPUs: its NCCL runs have no CPU form (FSDP2 on CPU is tested under torchrun with gloo in "
                   "tests/train/test_sharding.py)",
}

# Single-process benches: what their smoke JSON must hold beyond the mark.
SINGLE = {
    "cli_help.py": lambda r: r["repeats"] == 1 and set(r["results"]) == {"rlhf --help", "rlhf sft --help",
                                                                         "rlhf recipes"},
    # sharing the prompt prefill among a group's K samples runs fewer prompt tokens
    "prefill_count.py": lambda r: len(r["settings"]) == 1 and r["settings"][0]["ratio"] > 1,
    # 51 training pairs of the first 64 rows (80/20), trained a few steps: a finite loss and accuracy
    "dpo_hh.py": lambda r: r["results"]["fp32"]["train_pairs"] > 40 and 0 <= r["results"]["fp32"]
    ["eval_reward_accuracy"] <= 1 and r["results"]["fp32"]["train_loss_first"] > 0,
    "optimizer_step.py": lambda r: set(r["results"]) == {"default", "foreach", "fused"} and all(
        x["step_s"] > 0 for x in r["results"].values()),
    "compile_update.py": lambda r: set(r["results"]) == {"eager"} and len(r["results"]["eager"]["times_s"]) == 2
    and r["results"]["eager"]["median_s"] > 0,
    "render_results.py": lambda r: r["block_lines"] > 10 and "frontier.png" in r["images"],
    "scaling.py": lambda r: r["records"] == 1 and r["last"]["stage"] == "sft",
    "recipe_step.py": lambda r: r["max_length"] == 64 and r["step_s_timed"] > 0,
    "sft_throughput.py": lambda r: r["steps_timed"] == 1 and r["tokens_per_s"] > 0,
}
for _name, _check in list(SINGLE.items()):  # each check as an assertion with the JSON in its message
    def _assert(r, _check=_check, _name=_name):
        assert _check(r), f"{_name} --smoke: unexpected JSON {json.dumps(r)[:1500]}"
    SINGLE[_name] = _assert

_RESULTS: dict[str, dict] = {}


def test_every_bench_script_is_smoked_or_accounted_for():
    scripts = {p.name for p in BENCH.glob("*.py")}
    listed = set(SMOKED) | set(COVERED) | set(DEMO) | set(REAL) | set(NOT_YET)
    assert scripts - listed == set(), f"new bench scripts need a --smoke mode (tests/test_bench_smoke.py): " \
                                      f"{sorted(scripts - listed)}"
    assert listed - scripts == set(), f"listed but gone: {sorted(listed - scripts)}"


def _smoke(script: str) -> dict:
    if script in _RESULTS:
        return _RESULTS[script]
    needs_hh, _ = SMOKED[script]
    if needs_hh and not HH.exists():
        pytest.skip(f"{HH} not found (the shared data folder sits beside the repo)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    extra = ["--threads", "1"]
    p = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *extra], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{script} --smoke failed:\n{p.stderr[-4000:]}"
    out = p.stdout.strip()
    i = out.rfind("\n{")
    res = json.loads(out[i + 1:] if i >= 0 else out)
    _RESULTS[script] = res
    return res


def _errors(obj) -> list[str]:
    """Every run's error anywhere in a bench's JSON."""
    found = []
    if isinstance(obj, dict):
        if obj.get("error"):
            found.append(str(obj["error"])[-500:])
        for v in obj.values():
            found += _errors(v)
    elif isinstance(obj, list):
        for v in obj:
            found += _errors(v)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKED))
def test_rlhf_side_smoke(script):
    res = _smoke(script)
    assert not _errors(res), _errors(res)
    if script in ("dpo_vs_trl.py", "rm_vs_trl.py", "ppo_vs_trl.py", "real_shape.py"):
        assert res.get("smoke") is True and res["meta"]["command"]  # marked, so it is never a figure
    elif script in SINGLE:
        assert res.get("smoke") is True  # marked, so it is never a figure
        SINGLE[script](res)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(s for s, (_, venv) in SMOKED.items() if venv))
def test_trl_side_smoke(script):
    venv = SMOKED[script][1]
    needed = [".venv-trl", venv] if venv != ".venv-trl" else [venv]  # PPO's pairings need both
    if not all((REPO / v / "bin" / "python").exists() for v in needed):
        pytest.skip(f"no {venv}: the TRL side is smoked where it exists (bash bench/make_trl_venv.sh"
                    f"{'; bash bench/make_trl_ppo_venv.sh' if venv == '.venv-trl-ppo' else ''})")
    res = _smoke(script)
    text = json.dumps(res)
    assert '"trl' in text and not _errors(res), _errors(res)


def _bench(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{args[0]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"


@pytest.mark.slow
def test_demo_benches_smoke(quickstart_fast, tmp_path):
    """The demo's four benches, each on the fixture's ``quickstart --fast`` run: every one writes
    the JSON that bench/render_results.py and bench/figures.py read, marked as a smoke."""
    work = quickstart_fast.parent
    _bench(str(BENCH / "demo_seeds.py"), "--fast", "--seeds", "0", "--work", str(work),
           "--out", str(tmp_path / "s.json"))
    seeds = json.loads((tmp_path / "s.json").read_text())
    assert seeds["smoke"] is True and seeds["seeds"] == [0]
    head = seeds["per_seed"]["0"]["headline"]
    # the seed's numbers are the run's own, and each method has its mean over the (one) seed
    assert head == json.loads((quickstart_fast / "eval" / "summary.json").read_text())["headline"]
    assert seeds["methods"]["ppo"]["gold"]["mean"] == head["ppo"]["gold"]
    assert len(seeds["per_seed"]["0"]["ppo_curve"]) >= 5

    _bench(str(BENCH / "demo_variant.py"), "--fast", "--stage", "dpo", "--name", "smoke", "--set", "beta=0.2",
           "--seeds", "0", "--demo-work", str(work), "--out", str(tmp_path / "v.json"))
    var = json.loads((tmp_path / "v.json").read_text())
    row = var["per_seed"]["0"]
    assert var["smoke"] is True and row["demo"] == head["dpo"] and row["reference"] == head["reference"]
    assert var["variant_minus_demo"]["gold"]["mean"] == pytest.approx(row["variant"]["gold"] - head["dpo"]["gold"])
    assert row["variant"]["kl"] > 0  # trained: it moved away from the SFT policy

    _bench(str(BENCH / "overoptimization.py"), "--fast", "--seeds", "0", "--pairs", "64", "--steps", "8",
           "--demo-work", str(work), "--work", str(tmp_path / "overopt"), "--out", str(tmp_path / "o.json"))
    over = json.loads((tmp_path / "o.json").read_text())
    run = over["per_seed"]["0"]["runs"]["64"]
    assert over["smoke"] is True and run["rm_pairs"] == 64 and run["steps"] == 8
    assert len(run["kl"]) == len(run["gold"]) == 8
    # its best-of-n points are the demo's own curve, as bench/demo_seeds.py read it
    bon = over["per_seed"]["0"]["bon"]
    curve = next(iter(seeds["per_seed"]["0"]["best_of_n"].values()))
    assert bon["gold"] == [c["gold"] for c in curve] and bon["kl"] == [c["kl"] for c in curve]

    _bench(str(BENCH / "demo_time.py"), "--smoke", "--out", str(tmp_path / "t.json"))
    timing = json.loads((tmp_path / "t.json").read_text())["smoke"]
    assert timing["smoke"] is True and timing["command"] == "rlhf quickstart --print-config"
    assert 0 < timing["seconds"] < 120


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(REAL))
def test_real_model_bench_smoke(script, tmp_path):
    if script != "real_grpo.py" and not HH.exists():
        pytest.skip(f"{HH} not found (the shared data folder sits beside the repo)")
    _bench(str(BENCH / script), "--smoke", "--runs", str(tmp_path / "runs"))
    res = json.loads((tmp_path / "runs" / "smoke.json").read_text())
    assert res["smoke"] is True and res["partial"] is False and "tiny random" in res["model"]
    assert REAL[script](res), f"{script} --smoke: unexpected JSON {json.dumps(res)[:1500]}"
