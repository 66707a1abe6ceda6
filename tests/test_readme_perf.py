"""README.md's speed figures are generated from bench/results/*.json (bench/readme_perf.py): the text
and the JSON agree, and the renderer states only clean ratios, each with its date, CPU and command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def perf(load_bench):
    return load_bench("readme_perf")


def test_readme_agrees_with_the_json(perf):
    text = (REPO / "README.md").read_text()
    assert perf.apply(text, perf.load_results()) == text, "run .venv/bin/python bench/readme_perf.py --write"
    section, claims = perf.current(text)
    assert section is not None and all(c is not None for c in claims.values())


def _meta(date="2026-12-06T08:00:00Z"):
    return {"date_utc": date, "cpu_model": "Test CPU 9000", "cpu_count": 2,
            "command": ".venv/bin/python bench/rm_vs_trl.py --threads 1", "git_commit": "abc1234"}


def _rm(speedup: dict, smoke=False):
    return {"meta": _meta(), "bench": "rm_vs_trl", "smoke": smoke,
            "results": {"fp32": {"speedup_same_pairs": speedup}}}


def test_clean_ratio_is_stated_with_its_provenance(perf, tmp_path):
    (tmp_path / "rm.json").write_text(json.dumps(_rm({"ratio": 2.345, "clean_repeats": [2, 2],
                                                        "peak_rss_ratio": 0.7})))
    results = perf.load_results(tmp_path)
    section = perf.render_section(results)
    assert "**2.35×**" in section and "0.70×" in section
    assert "Test CPU 9000" in section and "2026-12-06T08:00:00Z" in section
    assert "`.venv/bin/python bench/rm_vs_trl.py --threads 1`" in section and "bench/results/rm.json" in section
    assert "≥ 3×: not met" in section  # the goal is judged by the number, never assumed
    assert perf.render_claims(results)["rm"] == "2.35× TRL (2026-12-06, `bench/results/rm.json`)"
    assert "padded batches" not in section  # no packing bound recorded: none stated
    with_bound = {**_rm({"ratio": 2.345, "clean_repeats": [2, 2]}),
                  "packing_bound": {"trl_padded_over_real_tokens": 2.099}}
    (tmp_path / "rm.json").write_text(json.dumps(with_bound))
    assert "TRL's padded batches hold 2.10 tokens per real token" in perf.render_section(perf.load_results(tmp_path))
    # the reward-model pairing inside a real-shape result states its own bound
    shape = {"meta": _meta(), "bench": "real_shape",
             "pairings": {"rm": {**with_bound, "packing_bound": {"trl_padded_over_real_tokens": 1.881}}}}
    (tmp_path / "rm.json").write_text(json.dumps(shape))
    section = perf.render_section(perf.load_results(tmp_path))
    assert "| rm: fp32, TRL's pairs | **2.35×**" in section and "hold 1.88 tokens per real token" in section


def test_refused_ratios_smoke_runs_and_headerless_files_state_nothing(perf, tmp_path):
    (tmp_path / "refused.json").write_text(json.dumps(_rm({"ratio": None, "refused": "trl side has no clean repeat"})))
    (tmp_path / "smoke.json").write_text(json.dumps(_rm({"ratio": 9.0, "clean_repeats": [1, 1]}, smoke=True)))
    old = _rm({"ratio": 4.0, "clean_repeats": [1, 1]})
    del old["meta"]  # a result without date / CPU / command: not a figure
    (tmp_path / "old.json").write_text(json.dumps(old))
    results = perf.load_results(tmp_path)
    section = perf.render_section(results)
    assert "No clean side-by-side run" in section and "×" not in section.replace("9000", "")
    assert perf.render_claims(results)["rm"].startswith("speed vs TRL: no clean run")


def test_check_fails_when_readme_and_json_disagree(perf, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a <!-- perf:rm -->4× TRL<!-- /perf:rm -->\n<!-- perf:begin -->\nold\n<!-- perf:end -->\n")
    assert perf.main(["--check", "--readme", str(readme), "--results", str(tmp_path)]) == 1
    assert perf.main(["--write", "--readme", str(readme), "--results", str(tmp_path)]) == 0
    assert perf.main(["--check", "--readme", str(readme), "--results", str(tmp_path)]) == 0
    assert "4×" not in readme.read_text()
