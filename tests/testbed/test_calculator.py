"""The multi-turn calculator task (rlhf/testbed/calculator.py): GRPO with the tool raises held-out
success over the SFT policy, by learning to call the calculator (the known optimum: always call it
and copy the result, success 1.0)."""

from __future__ import annotations

import json

import pytest

from rlhf.testbed.calculator import make_prompts, make_sft_records, matches_answer


def test_task_data_and_reward():
    recs = make_sft_records(400, seed=0, tool_rate=0.5)
    tool = [r for r in recs if r["completion"].startswith("[calculator: ")]
    assert 150 < len(tool) < 250  # tool_rate 0.5
    for r in tool:  # a tool transcript is right: the call on the question, its result, the copy
        a, b = r["prompt"][:-1].split("*")
        assert r["completion"] == f"[calculator: {a}*{b}] = {int(a) * int(b)}\n {int(a) * int(b)}"
    for r in recs:
        if r not in tool:  # a guess is never right
            a, b = r["prompt"][:-1].split("*")
            assert int(r["completion"]) != int(a) * int(b)
    rows = make_prompts(5, seed=1)
    assert all(r["answer"] == str(eval(r["prompt"][:-1])) for r in rows)  # noqa: S307 -- our own 'a*b'
    assert matches_answer(["x", "y"], [" 148", "147"], ["148", "148"]) == [1.0, 0.0]


@pytest.mark.slow
def test_grpo_with_the_tool_beats_sft(tmp_path):
    """The shipped pipeline (rlhf pipeline --recipe calculator), smaller: 3000 transcripts, 5 SFT
    epochs, 25 GRPO steps, 60 held-out prompts x 4 samples; 150 s on 2 busy CPU cores. Measured
    (seed 0): SFT success 0.15, tool use 0.41; GRPO success 0.37, tool use 0.97 (the shipped
    sizes: 0.40 / 0.51 -> 0.80 / 1.00). Thresholds: tool use >= 0.85 and success >= SFT + 0.1
    (the measured gain is 0.21; one success rate over 240 episodes has a standard error of ~0.03)."""
    import yaml

    from rlhf.configs import recipe_path
    from rlhf.pipeline import run_pipeline

    spec = yaml.safe_load(recipe_path("pipeline", "calculator").read_text())
    spec["output_dir"] = str(tmp_path / "calc")
    stages = {s["name"]: s for s in spec["stages"]}
    stages["data"]["args"].update(n_sft=3000, n_prompts=256, n_eval=60)
    stages["sft"]["config"]["train"].update(epochs=5, progress=False)
    stages["grpo"]["config"]["train"].update(max_steps=25, progress=False)
    run_pipeline(spec)
    res = json.loads((tmp_path / "calc" / "eval" / "results.json").read_text())
    assert res["grpo"]["tool_use"] >= 0.85, res
    assert res["grpo"]["success"] >= res["sft"]["success"] + 0.1, res
