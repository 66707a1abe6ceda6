"""The README's speed figures, generated from the benchmark JSON in bench/results/.

    .venv/bin/python bench/readme_perf.py           # print the blocks
    .venv/bin/python bench/readme_perf.py --write   # rewrite them in README.md
    .venv/bin/python bench/readme_perf.py --check   # exit 1 where README.md and the JSON disagree

A result counts when it is a side-by-side bench's JSON (``bench`` one of ``PAIRINGS``) with the
``meta`` header of bench/_bench.py (date, CPU model, command) and is not a smoke run. Every figure
printed names its file, date, CPU and command; a ratio the bench refused (no clean repeat on a
side) is never printed, and a goal is called met only by a clean ratio at or above it.

README.md holds the generated text between markers, so hand edits elsewhere merge cleanly:

* ``<!-- perf:begin -->`` ... ``<!-- perf:end -->``: the performance section's figures;
* ``<!-- perf:dpo -->`` ... ``<!-- /perf:dpo -->`` (and ``rm``, ``ppo``): the status table's
  one-line speed claim per stage.

tests/test_readme_perf.py checks that README.md equals what this script renders.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
README = REPO / "README.md"

# bench -> (where its comparisons live, the rate they compare, the goal per pairing prefix)
PAIRINGS = {
    "dpo_vs_trl": {"title": "DPO vs TRL DPOTrainer", "stage": "dpo", "goal": 3.0},
    "rm_vs_trl": {"title": "Reward model vs TRL RewardTrainer", "stage": "rm", "goal": 3.0},
    "ppo_vs_trl": {"title": "PPO / GRPO / RLOO vs TRL", "stage": "ppo", "goal": 2.0},
    "real_shape": {"title": "SmolLM2-135M's shape vs TRL", "stage": None, "goal": None},
}
REAL_SHAPE_GOALS = {"dpo_full": 2.0, "dpo_lora": 2.0, "rm": 2.0, "grpo": 1.5}


def load_results(folder: Path = RESULTS) -> list[tuple[str, dict[str, Any]]]:
    """(file name, JSON) of every non-smoke side-by-side result with a meta header, by date."""
    out = []
    for p in sorted(folder.glob("*.json")):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("bench") in PAIRINGS and isinstance(d.get("meta"), dict) \
                and not d.get("smoke"):
            out.append((p.name, d))
    return sorted(out, key=lambda x: (x[1]["meta"].get("date_utc", ""), x[0]))


def ratios(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The clean ratios of one result: [{pairing, ratio, memory, clean_repeats, goal}]; refused
    ratios are left out (they are no figures)."""
    rows: list[dict[str, Any]] = []
    bench = d["bench"]

    def add(name: str, r: dict[str, Any] | None, key: str, goal: float | None) -> None:
        if not r or r.get(key) is None or r.get("refused"):
            return
        rows.append({"pairing": name, "ratio": r[key], "memory": r.get("peak_rss_ratio"),
                     "clean_repeats": r.get("clean_repeats"), "goal": goal})

    if bench == "dpo_vs_trl":
        for model, m in (d.get("models") or {}).items():
            for k, c in (m.get("comparisons") or {}).items():
                add(f"{model} {k}", c, "speedup_pairs_per_s", PAIRINGS[bench]["goal"])
    elif bench == "rm_vs_trl":
        for prec, row in (d.get("results") or {}).items():
            add(f"{prec}, TRL's pairs", row.get("speedup_same_pairs"), "ratio", PAIRINGS[bench]["goal"])
    elif bench == "ppo_vs_trl":
        for k, c in (d.get("comparisons") or {}).items():
            add(k, c, "speedup_episodes_per_s", PAIRINGS[bench]["goal"])
    elif bench == "real_shape":
        for name, sub in (d.get("pairings") or {}).items():
            for r in ratios(sub) if isinstance(sub, dict) and sub.get("bench") in PAIRINGS else []:
                rows.append({**r, "pairing": f"{name}: {r['pairing']}", "goal": REAL_SHAPE_GOALS.get(name)})
    return rows


def _fmt(x: float | None, suffix: str = "×") -> str:
    return "—" if x is None else f"{x:.2f}{suffix}"


def render_section(results: list[tuple[str, dict[str, Any]]]) -> str:
    lines = []
    figures = [(name, d, ratios(d)) for name, d in results]
    figures = [f for f in figures if f[2]]
    if not figures:
        lines += ["No clean side-by-side run is recorded in `bench/results/` yet, so this README states no",
                  "speed ratio. The benches (`bench/dpo_vs_trl.py`, `bench/rm_vs_trl.py`, `bench/ppo_vs_trl.py`,",
                  "`bench/real_shape.py`) write their JSON to `bench/results/NAME.json` (`--out`, or `--json`",
                  "for `rm_vs_trl.py`); this block is generated from those files by `bench/readme_perf.py`.",
                  "Earlier measurements without a JSON are kept, marked as such, in",
                  "[bench/README-unverified.md](bench/README-unverified.md)."]
        return "\n".join(lines)
    for name, d, rows in figures:
        m = d["meta"]
        lines += [f"**{PAIRINGS[d['bench']]['title']}** — `bench/results/{name}`, {m.get('date_utc', '?')}, "
                  f"{m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} cores), commit {m.get('git_commit', '?')}:",
                  f"`{m.get('command', '?')}`", "",
                  "| pairing | rlhf / TRL (median of clean repeats) | clean repeats rlhf, TRL | peak RSS rlhf / TRL "
                  "| goal |", "|---|---|---|---|---|"]
        for r in rows:
            cr = r.get("clean_repeats") or ["?", "?"]
            goal = "—" if r["goal"] is None else \
                f"≥ {r['goal']:g}×: {'met' if r['ratio'] >= r['goal'] else 'not met'}"
            lines.append(f"| {r['pairing']} | **{_fmt(r['ratio'])}** | {cr[0]}, {cr[1]} | {_fmt(r['memory'])} "
                         f"| {goal} |")
        rm = d if d["bench"] == "rm_vs_trl" else (d.get("pairings") or {}).get("rm") if d["bench"] == "real_shape" \
            else None
        bound = ((rm or {}).get("packing_bound") or {}).get("trl_padded_over_real_tokens")
        if bound:
            lines += ["", f"TRL's padded batches hold {bound:.2f} tokens per real token on the pairs it keeps: the "
                          "ratio that rlhf's packing alone gives at equal arithmetic per token (both sides run the "
                          "same transformers forward and backward; bench/README-rm.md)."]
        lines.append("")
    lines.append("Generated by `bench/readme_perf.py` from the JSON named above; unclean runs (CPU share below "
                 "0.9) never enter a ratio.")
    return "\n".join(lines).rstrip()


def render_claims(results: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """The status table's speed claim per stage: the latest clean ratios of its bench, or a pointer."""
    claims = {}
    for bench, spec in PAIRINGS.items():
        stage = spec["stage"]
        if stage is None:
            continue
        latest = [(n, d) for n, d in results if d["bench"] == bench and ratios(d)]
        if not latest:
            claims[stage] = "speed vs TRL: no clean run recorded yet (see benchmarks)"
            continue
        name, d = latest[-1]
        rs = [r["ratio"] for r in ratios(d)]
        span = _fmt(min(rs)) if min(rs) == max(rs) else f"{min(rs):.2f}–{max(rs):.2f}×"
        claims[stage] = f"{span} TRL ({d['meta'].get('date_utc', '?')[:10]}, `bench/results/{name}`)"
    return claims


_BLOCK = re.compile(r"(<!-- perf:begin -->\n)(.*?)(\n<!-- perf:end -->)", re.S)


def _claim_re(stage: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- perf:{stage} -->)(.*?)(<!-- /perf:{stage} -->)", re.S)


def current(text: str) -> tuple[str | None, dict[str, str | None]]:
    """The generated parts as they stand in ``text``."""
    m = _BLOCK.search(text)
    claims: dict[str, str | None] = {}
    for spec in PAIRINGS.values():
        if spec["stage"]:
            c = _claim_re(spec["stage"]).search(text)
            claims[spec["stage"]] = c.group(2) if c else None
    return (m.group(2) if m else None), claims


def apply(text: str, results: list[tuple[str, dict[str, Any]]]) -> str:
    section, claims = render_section(results), render_claims(results)
    if not _BLOCK.search(text):
        raise SystemExit("README.md has no <!-- perf:begin --> ... <!-- perf:end --> block")
    text = _BLOCK.sub(lambda m: m.group(1) + section + m.group(3), text)
    for stage, claim in claims.items():
        text = _claim_re(stage).sub(lambda m, c=claim: m.group(1) + c + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite the generated blocks of README.md")
    p.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the JSON")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--readme", type=Path, default=README)
    a = p.parse_args(argv)
    results = load_results(a.results)
    text = a.readme.read_text()
    new = apply(text, results)
    if a.check:
        if new != text:
            print("README.md's performance figures differ from bench/results/: run bench/readme_perf.py --write",
                  file=sys.stderr)
            return 1
        return 0
    if a.write:
        a.readme.write_text(new)
        return 0
    print(render_section(results))
    for stage, claim in render_claims(results).items():
        print(f"{stage}: {claim}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
