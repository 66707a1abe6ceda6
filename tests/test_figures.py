"""Figures quoted in README.md and docs/ agree with the results JSON they come from (issue 23
item 8: the demo was "two minutes", "~30 seconds", "2 min 40 s" and "about 3 minutes" in
different places). bench/figures.py renders each marked figure from its JSON; this test fails
when a marked text differs, when a marker names no renderer, and when a demo time is typed
outside the markers."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_figures", ROOT / "bench" / "figures.py")
assert _spec is not None and _spec.loader is not None
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)

# A duration, and a sentence that gives one for the demo: "the demo takes 3 minutes", "a ~30-second version".
_DURATION = re.compile(r"\b\d+(\.\d+)?\s*(s|sec|seconds?|min|minutes?)\b|\b(one|two|three|four|five|a few|a couple of)"
                       r" minutes?\b|\b\d+-(second|minute)\b|\bin a minute\b", re.I)
_DEMO = re.compile(r"\b(make demo|quickstart|the demo|whole pipeline)\b", re.I)


def test_every_marked_figure_equals_its_json():
    assert figures.stale() == []


def test_the_demo_times_are_marked_where_they_are_quoted():
    readme = (ROOT / "README.md").read_text()
    page = (ROOT / "docs" / "getting-started.md").read_text()
    for name in ("demo_time", "demo_fast_time"):
        assert f"<!-- fig:{name} -->" in readme and f"<!-- fig:{name} -->" in page, name


def test_no_demo_time_outside_the_markers():
    bad = []
    for page in figures.pages():
        text = figures.MARK.sub("FIGURE", page.read_text())
        for sentence in re.split(r"(?<=[.!?])\s+|\n\s*\n|\n#+ ", text):
            if _DEMO.search(sentence) and (m := _DURATION.search(sentence)) and len(sentence) < 400:
                bad.append(f"{page.name}: {m.group(0)!r} in {sentence[:160]!r}")
    assert not bad, bad


def test_renderer_reads_the_json_and_says_where_it_comes_from(tmp_path, monkeypatch):
    data = {"demo": {"seconds": 161.0, "date": "2030-01-02", "cpu": "2-core Test CPU", "command": "rlhf quickstart"}}
    f = tmp_path / "demo_time.json"
    f.write_text(json.dumps(data))
    monkeypatch.setattr(figures, "DEMO_TIME", f)
    page = figures.ROOT / "docs" / "x.md"
    assert figures.FIGURES["demo_time"](page).startswith("about 2 min 40 s ([2030-01-02, 2-core Test CPU](")
    assert figures.FIGURES["demo_fast_time"](page).startswith("not measured yet")
    assert figures.duration(45.2) == "45 s" and figures.duration(3600) == "60 min"
    with pytest.raises(KeyError, match="no renderer"):
        figures.render_page(page, "<!-- fig:nope -->x<!-- /fig -->")


def test_calculator_figures_come_from_its_json(tmp_path, monkeypatch):
    """bench/calculator.py's JSON -> README/docs text: mean [interval] per policy, the signed
    paired gain, and the seeds, command, date and CPU; one seed has no interval; no JSON says so."""
    page = figures.ROOT / "docs" / "x.md"
    monkeypatch.setattr(figures, "CALCULATOR", tmp_path / "missing.json")
    assert figures.FIGURES["calculator_grpo_success"](page) == "not measured yet"
    assert figures.FIGURES["calculator_headline"](page).startswith("not measured yet ([bench/calculator.py](")

    def entry(values):  # mean and interval as rlhf.stats.mean_interval writes them (values made up)
        return {"mean": sum(values) / len(values), "lo": 0.111, "hi": 0.999, "n": len(values), "values": values}
    data = {"meta": {"date_utc": "2030-01-02T03:04:05Z", "cpu_model": "Test CPU", "cpu_count": 2,
                     "command": ".venv/bin/python bench/calculator.py --seeds 0,1,2"},
            "seeds": [0, 1, 2],
            "summary": {"sft": {"success": entry([0.4, 0.5, 0.6]), "tool_use": entry([0.5, 0.5, 0.5])},
                        "grpo": {"success": entry([0.8, 0.9, 1.0]), "tool_use": entry([1.0, 1.0, 1.0])},
                        "gain": {"success": entry([0.4, 0.4, 0.4]), "tool_use": entry([0.5, 0.5, 0.5])}}}
    f = tmp_path / "calculator.json"
    f.write_text(json.dumps(data))
    monkeypatch.setattr(figures, "CALCULATOR", f)
    assert figures.FIGURES["calculator_sft_success"](page) == "0.50 [0.11, 1.00]"
    assert figures.FIGURES["calculator_gain_success"](page) == "+0.40 [0.11, 1.00]"
    head = figures.FIGURES["calculator_headline"](page)
    assert head.startswith(
        "0.50 [0.11, 1.00] (SFT) -> 0.90 [0.11, 1.00] (GRPO), paired gain +0.40 [0.11, 1.00]; "
        "mean [95% interval] over 3 seeds (0, 1, 2), `.venv/bin/python bench/calculator.py --seeds 0,1,2` "
        "([2030-01-02, 2-core Test CPU](") and head.endswith("calculator.json))"), head
    data["seeds"] = [0]
    data["summary"]["grpo"]["success"] = {"mean": 0.8, "lo": float("nan"), "hi": float("nan"), "n": 1}
    f.write_text(json.dumps(data))
    assert figures.FIGURES["calculator_grpo_success"](page) == "0.80"
    assert "one seed (0)" in figures.FIGURES["calculator_source"](page)
