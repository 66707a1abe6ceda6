"""The report's verdict, flags, panels and comparison (issue 23 item 7)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rlhf.report import StageRun, collapse_flags, plot_frontier, plot_training_curves, verdict, write_comparison


def _pol(gold: float, se: float, length: float = 10.0, distinct: float = 0.5) -> dict:
    return {"policy": {"reward": {"gold": {"mean": gold, "stderr": se, "n": 50}}, "length": {"mean": length},
                       "distinct_2": distinct},
            "reference": {"reward": {"gold": {"mean": 0.0, "stderr": 0.05, "n": 50}}, "length": {"mean": 10.0},
                          "distinct_2": 0.5},
            "kl": {"mean": 1.0, "stderr": 0.1}}


def test_verdict_names_the_winner_and_judges_the_gap_by_two_standard_errors():
    # a - b = 0.5 > 2 * sqrt(0.1² + 0.1²) = 0.283: resolved. Over the reference (0 ± 0.05):
    # 1.0 > 2 * sqrt(0.1² + 0.05²) = 0.224: resolved.
    text = " ".join(verdict({"a": _pol(1.0, 0.1), "b": _pol(0.5, 0.1)}))
    assert "a scored highest, 1.000 ± 0.100" in text and "leads b (0.500 ± 0.100) by 0.500: resolved" in text
    assert f"{2 * math.sqrt(0.02):.3f}" in text and "on 50 prompts" in text
    assert "Over the reference (0.000 ± 0.050): by 1.000: resolved" in text and "Warning" not in text
    # 0.6 - 0.5 = 0.1 < 0.283 and 0.5 - 0.45 < 0.283: not resolved, and the ± is as large as the gaps.
    lines = verdict({"a": _pol(0.6, 0.1), "b": _pol(0.5, 0.1), "c": _pol(0.45, 0.1)})
    assert "by 0.100: not resolved" in lines[0]
    assert any(x.startswith("Warning: ") and "the order of a, b, c" in x for x in lines), lines
    assert verdict({}) == [] and verdict({"a": {"policy": {}}}) == []


def test_collapse_flags_fire_below_the_fraction_only():
    flags = collapse_flags({"short": _pol(1, 0.1, length=5.3), "same": _pol(1, 0.1, length=9.0),
                            "repetitive": _pol(1, 0.1, distinct=0.2)})
    assert len(flags) == 2, flags
    assert flags[0].startswith("response length collapse: short 5.3 against the reference's 10 (-47%)")
    assert flags[1].startswith("distinct-2 (diversity) collapse: repetitive 0.2")
    falling = StageRun("ppo", "ppo", Path("."), metrics=[{"step": s, "response_length": 13.0 - s} for s in range(10)])
    steady = StageRun("ppo2", "ppo", Path("."), metrics=[{"step": s, "response_length": 12.0} for s in range(10)])
    flags = collapse_flags({}, [falling, steady])
    assert flags == ["length collapse in training: ppo's responses went from 12.5 to 4.5 tokens "
                     "(mean of the first and last 2 logged steps)."]


def test_two_point_series_are_markers_without_a_line_and_lr_grad_norm_have_panels():
    st = StageRun("rm", "rm", Path("."), metrics=[{"step": 10, "loss": 0.7, "lr": 1e-3, "grad_norm": 2.0},
                                                 {"step": 13, "loss": 0.6, "lr": 5e-4, "grad_norm": 1.0}])
    fig = plot_training_curves([st])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["rm: loss", "rm: learning rate", "rm: gradient norm"]
    for ax in fig.axes:
        (line,) = ax.get_lines()
        assert line.get_linestyle() == "None" and line.get_marker() == "o"


def test_frontier_labels_do_not_overlap():
    # Four policies nearly on top of each other: their labels must land in separate boxes.
    pols = {name: {"policy": {"reward": {"gold": {"mean": 0.5 + 0.002 * i, "stderr": 0.01}}},
                   "kl": {"mean": 1.0 + 0.002 * i, "stderr": 0.01}}
            for i, name in enumerate(["constitutional", "iterative-dpo", "dpo", "rest"])}
    pols["far"] = {"policy": {"reward": {"gold": {"mean": 0.0, "stderr": 0.01}}}, "kl": {"mean": 3.0, "stderr": 0.1}}
    fig = plot_frontier(pols)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in fig.axes[0].texts]
    assert len(boxes) == 5
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_compare_two_runs(tmp_path, capsys):
    from rlhf.report import main
    for name, g in (("A", 0.2), ("B", 0.6)):
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "results.json").write_text(json.dumps({"policies": {"ppo": _pol(g, 0.1)}}))
    assert main([str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path / "cmp")]) == 0
    doc = (tmp_path / "cmp" / "compare.html").read_text()
    assert "<td class=num>+0.400</td>" in doc and "yes (2 se 0.283)" in doc
    assert write_comparison(tmp_path / "A", tmp_path / "A").name == "compare.html"
