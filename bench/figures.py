"""Figures quoted in README.md, CONTRIBUTING.md and docs/*.md, generated from results JSON files
(never typed by hand).

    .venv/bin/python bench/figures.py            # rewrite every marked figure from its JSON
    .venv/bin/python bench/figures.py --check    # exit 1 naming each figure whose text differs

A figure in the text is marked ``<!-- fig:NAME -->TEXT<!-- /fig -->`` (the markers do not show
when the Markdown is rendered). ``FIGURES`` maps NAME to the JSON file it comes from and a
function that renders TEXT from it, with a link to that file. Every results JSON says where its
numbers come from: ``date``, ``cpu``, ``command`` (and ``commit``) beside the values, as
bench/demo_time.py writes them. tests/test_figures.py fails when a marked text and its JSON
disagree, when a name has no entry here, and when a demo time is written outside the markers.

To add a figure: write (or extend) the script that measures it into bench/results/*.json with
date, cpu and command; add a renderer to ``FIGURES``; mark the text; run this script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!-- fig:([a-z0-9_]+) -->(.*?)<!-- /fig -->", re.S)
DEMO_TIME = ROOT / "bench" / "results" / "demo_time.json"
CALCULATOR = ROOT / "bench" / "results" / "calculator.json"


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def duration(seconds: float) -> str:
    """``2 min 40 s``, ``45 s``: rounded to 10 s above a minute, to 5 s below."""
    if seconds >= 60:
        s = int(round(seconds / 10.0) * 10)
        m, s = divmod(s, 60)
        return f"{m} min {s} s" if s else f"{m} min"
    return f"{int(round(seconds / 5.0) * 5)} s"


def _link(page: Path, target: Path, text: str) -> str:
    return f"[{text}]({os.path.relpath(target, page.parent)})"


def _demo(key: str) -> Callable[[Path], str]:
    def render(page: Path) -> str:
        data = json.loads(DEMO_TIME.read_text()) if DEMO_TIME.is_file() else {}
        entry = data.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("seconds"), (int, float)):
            script = _link(page, ROOT / "bench" / "demo_time.py", "bench/demo_time.py")
            return f"not measured yet ({script} measures it)"
        where = f"{entry['date']}, {entry['cpu']}"
        return f"about {duration(float(entry['seconds']))} ({_link(page, DEMO_TIME, where)})"
    return render


def _calculator_json() -> dict | None:
    return json.loads(CALCULATOR.read_text()) if CALCULATOR.is_file() else None


def _interval(entry: dict, signed: bool = False) -> str:
    """``0.80 [0.71, 0.89]`` (mean [95% interval] over seeds); one seed has no interval."""
    f = "{:+.2f}" if signed else "{:.2f}"
    if entry["n"] < 2:
        return f.format(entry["mean"])
    return f"{f.format(entry['mean'])} [{entry['lo']:.2f}, {entry['hi']:.2f}]"


def _calc_value(policy: str, metric: str) -> Callable[[Path], str]:
    """One number of bench/results/calculator.json: a policy's (or the gain's) mean [interval]."""
    def render(page: Path) -> str:
        data = _calculator_json()
        if data is None:
            return "not measured yet"
        return _interval(data["summary"][policy][metric], signed=policy == "gain")
    return render


def _calc_source(page: Path) -> str:
    """Over how many seeds, by which command, where and when the calculator numbers were taken."""
    data = _calculator_json()
    script = _link(page, ROOT / "bench" / "calculator.py", "bench/calculator.py")
    if data is None:
        return f"not measured yet ({script} measures it)"
    meta, seeds = data["meta"], data["seeds"]
    where = f"{meta['date_utc'][:10]}, {meta['cpu_count']}-core {meta['cpu_model']}"
    what = "one seed" if len(seeds) == 1 else f"mean [95% interval] over {len(seeds)} seeds"
    return (f"{what} ({', '.join(map(str, seeds))}), `{meta['command']}` "
            f"({_link(page, CALCULATOR, where)})")


def _calc_headline(page: Path) -> str:
    """The README's one-line result: SFT -> GRPO success, the paired gain, seeds and source."""
    data = _calculator_json()
    if data is None:
        return _calc_source(page)
    s = data["summary"]
    return (f"{_interval(s['sft']['success'])} (SFT) -> {_interval(s['grpo']['success'])} (GRPO), "
            f"paired gain {_interval(s['gain']['success'], signed=True)}; {_calc_source(page)}")


FIGURES: dict[str, Callable[[Path], str]] = {
    "demo_time": _demo("demo"),  # make demo (rlhf quickstart), once .venv exists
    "demo_fast_time": _demo("demo_fast"),  # rlhf quickstart --fast
    # bench/calculator.py: the calculator recipe over seeds (README status row, docs/environments.md)
    "calculator_headline": _calc_headline,
    "calculator_source": _calc_source,
    **{f"calculator_{p}_{m}": _calc_value(p, m) for p in ("sft", "grpo", "gain") for m in ("success", "tool_use")},
}


def render_page(page: Path, text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in FIGURES:
            raise KeyError(f"{page.relative_to(ROOT)}: figure {name!r} has no renderer in bench/figures.py")
        return f"<!-- fig:{name} -->{FIGURES[name](page)}<!-- /fig -->"
    return MARK.sub(sub, text)


def stale() -> list[str]:
    """'page: figure NAME' for every marked figure whose text differs from its JSON."""
    out = []
    for page in pages():
        text = page.read_text()
        new = render_page(page, text)
        if new != text:
            old = dict((m.group(1), m.group(2)) for m in MARK.finditer(text))
            out += [f"{page.relative_to(ROOT)}: figure {n} reads {t!r}, its JSON gives {f!r}"
                    for n, f in ((m.group(1), m.group(2)) for m in MARK.finditer(new)) if old.get(n) != f
                    for t in [old.get(n)]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a figure is stale")
    a = p.parse_args(argv)
    if a.check:
        bad = stale()
        for line in bad:
            print(line, file=sys.stderr)
        return 1 if bad else 0
    for page in pages():
        text = page.read_text()
        new = render_page(page, text)
        if new != text:
            page.write_text(new)
            print(f"rewrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
