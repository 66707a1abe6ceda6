"""The report's layout (issue 17): run order, relative paths, one output location, explanations,
readable training curves (labelled axes, no empty cells, gold and proxy on their own axes,
rounds as integers)."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.cli import main
from rlhf.report import load_run, plot_training_curves, write_report

from .test_report import _cells, _jsonl, _section, make_run  # noqa: TID252


def _with_report_stage(run: Path, order: list[tuple[str, str]]) -> None:
    stages = [{"name": n, "type": t, "output_dir": str(Path("runs") / run.name / n), "status": "done"}
              for n, t in order]
    stages.append({"name": "report", "type": "report", "output_dir": str(Path("runs") / run.name / "report"),
                   "status": "running"})
    (run / "pipeline.json").write_text(json.dumps({"stages": stages}))


def test_stages_in_run_order_relative_folders_no_report_row_and_a_glossary(tmp_path):
    run = make_run(tmp_path)
    order = [("dpo", "dpo"), ("sft", "sft"), ("bon", "best_of_n"), ("rm", "rm"), ("ppo", "ppo"), ("eval", "eval")]
    _with_report_stage(run, order)  # as the pipeline records it: relative paths, report still running
    assert [s.name for s in load_run(run).stages] == [n for n, _ in order]
    doc = write_report(run).read_text()
    rows = _cells(_section(doc, "Stages, in run order"))
    assert [r[1] for r in rows] == [n for n, _ in order]
    assert [r[4] for r in rows] == [n for n, _ in order]  # folders relative to the run folder
    assert str(tmp_path) not in doc.split("<h2>Configs</h2>")[0]  # no absolute local path above the configs
    gloss = doc.split("How to read this report", 1)[1].split("</dl>", 1)[0]  # every quantity explained
    for term in ("gold reward", "proxy reward", "±", "KL (nats)", "k1 estimator", "win rate", "distinct-2",
                 "log n − (n−1)/n"):
        assert term in gloss, term


def test_rlhf_report_writes_where_the_pipeline_does(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert Path(capsys.readouterr().out.strip()) == run / "report" / "report.html"
    assert (run / "report" / "training_curves.png").is_file() and not (run / "report.html").exists()


def test_training_curves_are_labelled_without_empty_cells_gold_apart_from_proxy(tmp_path):
    run = make_run(tmp_path, with_pipeline=False)  # stages found by folder, raft included
    # a rounds-based stage: RAFT logs one row per round
    _jsonl(run / "raft" / "metrics.jsonl", [{"step": r, "round": r, "loss": 1.0 / r, "score": 0.1 * r,
                                            "track/gold": -0.1 * r} for r in (1, 2, 3)])
    fig = plot_training_curves(load_run(run).stages)
    axes = fig.axes
    assert axes and all(ax.has_data() for ax in axes)  # no blank frames
    for ax in axes:
        assert ax.get_ylabel() and ax.get_xlabel(), ax.get_title()
        labels = ax.get_legend_handles_labels()[1]
        assert labels and all(not lab.startswith("_") for lab in labels)
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                assert len(line.get_xdata()) > 0  # no legend entry without a line
    titles = [ax.get_title() for ax in axes]
    assert "ppo: proxy reward" in titles and "ppo: gold reward" in titles  # own axes, own scales
    ppo_proxy = axes[titles.index("ppo: proxy reward")]
    assert [ln.get_label() for ln in ppo_proxy.get_lines() if not ln.get_label().startswith("_")] == \
        ["proxy (reward model) (smoothed)"]
    raft = axes[titles.index("raft: loss")]
    assert raft.get_xlabel() == "round"
    assert all(float(t).is_integer() for t in raft.get_xticks())
    fig.canvas.draw()
    for ax in axes:  # legends are readable (at least 8 pt) and name only real series
        _check_legend(ax)


def _check_legend(ax) -> None:
    leg = ax.get_legend()
    assert leg is not None, ax.get_title()
    texts = [t.get_text() for t in leg.get_texts()]
    assert texts and not any(t.startswith("_") for t in texts), (ax.get_title(), texts)
    assert min(t.get_fontsize() for t in leg.get_texts()) >= 8


def test_frontier_legend_names_only_the_best_of_n_curves(tmp_path):
    from rlhf.report import plot_frontier
    run = load_run(make_run(tmp_path))
    fig = plot_frontier(run.policies, run.stages)
    proxy_ax = fig.axes[1]
    _check_legend(proxy_ax)
    assert [t.get_text() for t in proxy_ax.get_legend().get_texts()] == ["bon (n = 1..8)", "bon, measured KL"]


def test_without_pipeline_json_the_usual_order_is_used(tmp_path):
    run = make_run(tmp_path, with_pipeline=False)
    assert [s.type for s in load_run(run).stages][:3] == ["sft", "rm", "ppo"]
