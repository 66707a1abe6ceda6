"""A pipeline whose evaluation is a `call` stage (the calculator recipe) writes eval/results.json
in its own layout; the report shows it in a note instead of reading as if nothing was evaluated."""

from __future__ import annotations

import json

from rlhf.report import load_run, write_report


def test_results_without_policies_are_shown_not_dropped(tmp_path):
    run = tmp_path / "calc"
    (run / "eval").mkdir(parents=True)
    results = {"sft": {"success": 0.4, "tool_use": 0.51}, "grpo": {"success": 0.8, "tool_use": 1.0}}
    (run / "eval" / "results.json").write_text(json.dumps(results))
    loaded = load_run(run)
    assert loaded.policies == {}
    [note] = [n for n in loaded.notes if "eval/results.json" in n]
    assert note.startswith('eval/results.json is not an `rlhf eval` result (no "policies")')
    assert '"grpo": {"success": 0.8, "tool_use": 1.0}' in note
    html = write_report(run).read_text()
    assert "&quot;grpo&quot;: {&quot;success&quot;: 0.8" in html


def test_an_eval_result_gives_no_such_note(tmp_path):
    run = tmp_path / "r"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.json").write_text(json.dumps({"policies": {}}))
    assert not [n for n in load_run(run).notes if "not an `rlhf eval` result" in n]
