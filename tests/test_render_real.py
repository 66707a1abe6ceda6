"""README.md's real-model block is generated from bench/results/real_grpo.json and real_hh.json
(bench/render_real.py): the text and the JSON agree, and the block states each number with its settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def render_real(load_bench):
    return load_bench("render_real")


def test_readme_block_agrees_with_the_json(render_real):
    text = (REPO / "README.md").read_text()
    block = re.search(re.escape(render_real.BEGIN) + r".*?" + re.escape(render_real.END), text, flags=re.S)
    assert block is not None
    assert block.group(0) == render_real.render(), "run .venv/bin/python bench/render_real.py"


def test_settings_line(render_real):
    s = {"cpu_model": "Test CPU", "cpu_count": 2, "omp_num_threads": "1", "nice": 19, "loadavg": [0.5, 0, 0]}
    later = {**s, "loadavg": None}
    assert render_real._where({"settings_by_seed": {"0": s, "1": {**s, "loadavg": [2.04, 0, 0]}}}) == (
        "Test CPU (2 cores), OMP_NUM_THREADS=1, nice 19, 1-minute load when each started: 0.5, 2.0")
    # settings written by --collect after the run carry no load: none is claimed
    assert render_real._where({"settings_by_seed": {"0": later}}) == "Test CPU (2 cores), OMP_NUM_THREADS=1, nice 19"
    assert render_real._where({"cpu": "older file"}) == "older file"


def test_grpo_lines_state_the_gain_and_its_intervals(render_real):
    r = {"task": "t", "eval": "e", "recipe": "r", "steps": 20, "cpu": "c", "command": "cmd",
         "base_accuracy": 0.25, "base_interval95": [0.1, 0.4],
         "per_seed": {"0": {"accuracy": 0.5, "kl_last_step": 1.234, "train_wall_s": 60.2}},
         "gain_over_seeds": {"mean": 0.25, "lo": 0.2, "hi": 0.3}, "gain_over_problems": {"mean": 0.25, "lo": 0.1,
                                                                                          "hi": 0.4}}
    text = "\n".join(render_real.grpo_lines(r))
    assert "Base model, held-out greedy accuracy: 25.0% [10.0%, 40.0%]" in text
    assert "Seed 0: after 50.0%, KL to the reference at the last step 1.23 nats per completion" in text
    assert "Gain: +25.0 points; 95% interval over seeds [+20.0, +30.0] points; over held-out problems " \
           "[+10.0, +40.0] points" in text


def test_docs_recipe_table_agrees_with_the_json(render_real):
    text = (REPO / "docs" / "real-model.md").read_text()
    block = re.search(re.escape(render_real.RECIPES_BEGIN) + r".*?" + re.escape(render_real.RECIPES_END), text,
                      flags=re.S)
    assert block is not None
    assert block.group(0) == render_real.render_recipes(), "run .venv/bin/python bench/render_real.py"


def test_recipe_rows(render_real):
    s = {"cpu_model": "Test CPU", "cpu_count": 2, "omp_num_threads": "2", "nice": 0, "loadavg": [0.1, 0, 0]}
    r = {"steps": 3, "data": "d", "command": "cmd", "recipes": [
        {"recipe": "rm/x", "step": "16 pairs", "step_s": 22.68, "to_first_step_s": 38.8, "peak_rss_gb": 5.07,
         "settings": s},
        {"recipe": "dpo/x", "step": "8 pairs", "step_s": None, "to_first_step_s": None, "peak_rss_gb": None}]}
    lines = render_real.recipes_lines(r)
    assert "| `rm/x` | 16 pairs | 22.7 s | 39 s | 5.1 GB |" in lines
    assert "| `dpo/x` | 8 pairs | n/a | n/a | n/a |" in lines
    assert "Test CPU (2 cores), OMP_NUM_THREADS=2, nice 0, 1-minute load when each started: 0.1" in lines[0]


def test_recipe_step_time_is_the_median_gap_between_steps(tmp_path, load_bench):
    mod = load_bench("real_recipes")
    rows = [{"step": 1, "elapsed_s": 40.0}, {"step": 2, "elapsed_s": 62.0}, {"step": 2, "eval_loss": 0.5},
            {"step": 3, "elapsed_s": 85.0}, {"step": 5, "elapsed_s": 135.0}]  # steps 4-5: one 50 s gap, 25 s a step
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert mod.step_times(tmp_path / "metrics.jsonl") == (23.0, 40.0)  # median of 22, 23, 25


def test_recipes_redo_measures_one_recipe_again_and_keeps_the_others(tmp_path, monkeypatch, load_bench):
    """``--redo KEY`` drops KEY's figures and run folder and runs that recipe alone; the other
    recipes' figures stay as they were. The recipe runs are faked (a summary and metrics written)."""
    mod = load_bench("real_recipes")
    keys = [f"{stage}/{recipe}" for stage, recipe, _, _ in mod.RECIPES]
    old = {k: {"step_s": 1.0 + i, "peak_rss_gb": 1.0, "settings": {}} for i, k in enumerate(keys)}
    (tmp_path / "state.json").write_text(json.dumps(old))
    redo = keys[-1]
    stale = tmp_path / redo.split("/")[0] / "stale.txt"
    stale.parent.mkdir()
    stale.write_text("left by the last measurement")
    monkeypatch.setattr(mod, "write_data", lambda runs: {"pairs": "p", "sft": "s", "arithmetic": "a"})
    ran = []
    real_run = mod.subprocess.run

    def fake_run(cmd, **kw):
        if cmd[0] == "git":  # the commit stamp
            return real_run(cmd, **kw)
        stage = cmd[3]
        ran.append(stage)
        assert not stale.exists()  # the folder was emptied before the run
        run_dir = tmp_path / stage
        run_dir.mkdir(exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps({"steps": 3, "peak_rss_gb": 2.5}))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "elapsed_s": 10.0 * s}) + "\n"
                                                       for s in (1, 2, 3)))
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(mod.subprocess, "run", fake_run)
    out = tmp_path / "out.json"
    assert mod.main(["--runs", str(tmp_path), "--out", str(out), "--redo", redo]) == 0
    assert ran == [redo.split("/")[0]]
    rows = {r["recipe"]: r for r in json.loads(out.read_text())["recipes"]}
    assert rows[redo]["step_s"] == 10.0 and rows[redo]["peak_rss_gb"] == 2.5 and rows[redo]["git_commit"]
    assert all(rows[k]["step_s"] == old[k]["step_s"] for k in keys[:-1])
    with pytest.raises(SystemExit):
        mod.main(["--runs", str(tmp_path), "--redo", "ppo/nope"])
