"""Run folders `rlhf report` is given besides a finished `rlhf pipeline`: a pipeline whose
evaluation is a `call` stage (the calculator recipe) writes eval/results.json in its own layout,
shown in a note instead of reading as if nothing was evaluated; one stage's own output folder
(`rlhf ppo ... output_dir=runs/x`, then `rlhf report runs/x`) is that one stage, not "no stages"."""

from __future__ import annotations

import json

import pytest

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


def test_one_stage_folder_is_its_own_stage(tmp_path):
    run = tmp_path / "gspo"
    run.mkdir()
    rows = [{"step": s, "score": 0.1 * s, "kl": 0.01 * s, "track/gold": -0.2 + 0.05 * s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"stage": "ppo", "wall_time_s": 1.5}))
    (run / "final").mkdir()  # a model folder: no metrics, not a stage
    [stage] = load_run(run).stages
    assert (stage.name, stage.type, stage.path) == ("gspo", "ppo", run)
    assert [m["score"] for m in stage.metrics] == pytest.approx([0.1, 0.2, 0.3])
    assert "No stages found" not in write_report(run).read_text()
    # a folder of stage folders is read as before: its subfolders are the stages
    parent = tmp_path / "runs"
    (parent / "a").mkdir(parents=True)
    (parent / "a" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert [s.name for s in load_run(parent).stages] == ["a"]
