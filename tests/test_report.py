"""rlhf.report: the run report built from a hand-made run folder whose every number is known.

The synthetic PPO run is built so that the proxy reward ("score") rises at every step while the
gold reward rises until step PEAK and falls after it, symmetrically (gold = 1 - 0.05·|step -
PEAK|), so a centred moving average of any odd window also peaks exactly at PEAK.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from pathlib import Path

import pytest

from rlhf.report import (
    gold_peak,
    load_run,
    main,
    plot_frontier,
    plot_overoptimization,
    read_metrics,
    smooth,
    write_report,
)

PEAK, STEPS = 20, 40
EVIL = "<script>alert('x')</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# eval/results.json: (gold mean, gold stderr, proxy mean, proxy stderr, KL mean, KL stderr,
# gold win rate, length mean, length stderr) per policy.
NUMBERS = {
    "sft": (0.1234, 0.0111, 0.2000, 0.0200, 0.0, 0.0, 0.5, 14.25, 0.5),
    "ppo": (0.4321, 0.0123, 1.9000, 0.0500, 1.5, 0.1, 0.7, 12.34, 0.4),
    "dpo": (0.3876, 0.0101, 0.9000, 0.0400, 0.75, 0.05, 0.65, 15.0, 0.6),
}
PROXY_SPEC = "model:run/rm/final"


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _ppo_rows() -> list[dict]:
    rows = []
    for s in range(1, STEPS + 1):
        rows.append({"step": s, "loss": 1.0 / s, "score": 0.1 * s, "kl": 0.05 * s, "beta": 0.05,
                     "entropy": 2.0 - 0.01 * s, "response_length": 10.0, "track/gold": 1 - 0.05 * abs(s - PEAK)})
    return rows


def _result(name: str) -> dict:
    g, gse, p, pse, kl, klse, wr, ln, lnse = NUMBERS[name]
    ms = lambda m, se: {"mean": m, "stderr": se, "n": 64}  # noqa: E731
    return {
        "settings": {"policy": f"run/{name}/final", "reference": "run/sft/final",
                     "rewards": {"gold": "rlhf.testbed.reviews:gold", "proxy": PROXY_SPEC}},
        "policy": {"reward": {"gold": ms(g, gse), "proxy": ms(p, pse)}, "length": ms(ln, lnse),
                   "eos_fraction": 1.0, "distinct_1": 0.5, "distinct_2": 0.75},
        "reference": {"reward": {"gold": ms(0.12, 0.01), "proxy": ms(0.2, 0.02)}, "length": ms(14.0, 0.5),
                      "eos_fraction": 1.0, "distinct_1": 0.5, "distinct_2": 0.7},
        "win_rate": {"gold": {"win_rate": wr, "wins": 1, "ties": 0, "losses": 0, "n": 64, "ci95": [0.1, 0.9]}},
        "kl": {"mean": kl, "stderr": klse, "n": 64, "temperature": 1.0, "is_kl": True},
        "examples": [{"prompt": f"review {EVIL}", "policy": f"{name} says great",
                      "reference": "sft says ok",
                      "rewards": {"gold": {"policy": g, "reference": 0.05}, "proxy": {"policy": p, "reference": 0.1}}}],
    }


def make_run(root: Path, with_pipeline: bool = True) -> Path:
    run = root / "run"
    _jsonl(run / "sft" / "metrics.jsonl",
           [{"step": s, "loss": 3.0 - 0.1 * s, **({"eval_loss": 2.9 - 0.1 * s} if s % 5 == 0 else {})}
            for s in range(1, 11)])
    (run / "sft" / "summary.json").write_text(json.dumps({"stage": "sft", "steps": 10}))
    (run / "sft" / "config.yaml").write_text(f"output_dir: run/sft\nnote: '{EVIL}'\n")
    _jsonl(run / "rm" / "metrics.jsonl", [{"step": s, "loss": 0.7 - 0.01 * s, "accuracy_mean": 0.5 + 0.02 * s}
                                        for s in range(1, 11)])
    (run / "rm" / "summary.json").write_text(json.dumps({"stage": "rm"}))
    _jsonl(run / "ppo" / "metrics.jsonl", _ppo_rows() + [
        {"step": 1, "samples": [{"prompt": EVIL, "completion": "fine", "score": 0.1, "track/gold": 0.2}]},
        {"step": STEPS, "samples": [{"prompt": "p", "completion": "good good good", "score": 4.0, "track/gold": 0.0}]}])
    (run / "ppo" / "summary.json").write_text(json.dumps({"stage": "ppo"}))
    _jsonl(run / "dpo" / "metrics.jsonl", [{"step": s, "loss": 0.69 - 0.02 * s, "reward_accuracy": 0.6,
                                          "reward_margin": 0.1 * s} for s in range(1, 6)])
    (run / "dpo" / "summary.json").write_text(json.dumps({"stage": "dpo"}))
    curve = [{"n": n, "mean_reward": 0.2 + 0.1 * math.log(n), "kl_bound": math.log(n) - (n - 1) / n,
              "kl_estimate": 0.9 * (math.log(n) - (n - 1) / n)} for n in range(1, 9)]
    (run / "bon").mkdir()
    (run / "bon" / "summary.json").write_text(json.dumps({"n": 4, "reward_source": PROXY_SPEC, "curve": curve}))
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps({"policies": {n: _result(n) for n in NUMBERS}}))
    if with_pipeline:
        stages = [{"name": n, "type": t, "output_dir": str(run / n), "status": "done"}
                  for n, t in [("sft", "sft"), ("rm", "rm"), ("ppo", "ppo"), ("dpo", "dpo"),
                               ("bon", "best_of_n"), ("eval", "eval")]]
        (run / "pipeline.json").write_text(json.dumps({"stages": stages}))
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    run = make_run(tmp_path_factory.mktemp("report"))
    path = write_report(run, title="test run")
    return path, path.read_text()


def _images(doc: str) -> list[bytes]:
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', doc)
    return [base64.b64decode(b, validate=True) for b in images]


def _section(doc: str, heading: str) -> str:
    return doc.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]


def _cells(table_html: str) -> list[list[str]]:
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table_html)]
    return [r for r in rows if r]  # the header row has <th> cells only


def test_report_embeds_three_valid_pngs_equal_to_the_files(report):
    path, doc = report
    imgs = _images(doc)
    assert len(imgs) == 3  # frontier, over-optimisation, training curves
    assert "<link" not in doc and "<script" not in doc  # self-contained, nothing fetched
    for data in imgs:
        assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
        w, h = struct.unpack(">II", data[16:24])
        assert w > 100 and h > 100
    files = [(path.parent / n).read_bytes() for n in ("frontier.png", "overoptimization.png", "training_curves.png")]
    assert imgs == files


def test_smooth_is_a_centred_mean_that_ignores_nan():
    # window 3: [mean(1,2), mean(1,2,3), mean(2,3,10), mean(3,10)]; the NaN is left out.
    assert smooth([1.0, 2.0, 3.0, 10.0], 3) == [1.5, 2.0, 5.0, 6.5]
    assert smooth([1.0, math.nan, 3.0], 3) == [1.0, 2.0, 3.0]
    assert smooth([4.0, 5.0], 1) == [4.0, 5.0]


def test_gold_peak_finds_the_constructed_peak_not_the_proxy_maximum():
    rows = _ppo_rows()
    gold, proxy = [r["track/gold"] for r in rows], [r["score"] for r in rows]
    steps = [r["step"] for r in rows]
    for window in (1, 3, 5, 9):
        assert steps[gold_peak(gold, window)] == PEAK
    assert steps[gold_peak(proxy, 5)] == STEPS  # the proxy keeps rising to the end
    assert gold_peak([math.nan, math.nan]) is None
    assert gold_peak([1.0, 3.0, 3.0, 0.0]) == 1  # first of tied maxima


def test_overoptimization_plot_marks_the_gold_peak(tmp_path):
    fig = plot_overoptimization(load_run(make_run(tmp_path)).stages, sqrt_kl=True, window=5)
    stars = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1
    # The star sits on the smoothed curves at PEAK: x = mean of √KL = √(0.05·s) over the window
    # s = PEAK-2..PEAK+2, y = mean of the gold reward over the same window.
    expect_x = sum(math.sqrt(0.05 * s) for s in range(PEAK - 2, PEAK + 3)) / 5
    assert stars[0].get_xdata()[0] == pytest.approx(expect_x, rel=1e-12)
    expect_y = sum(1 - 0.05 * abs(s - PEAK) for s in range(PEAK - 2, PEAK + 3)) / 5
    assert stars[0].get_ydata()[0] == pytest.approx(expect_y, rel=1e-12)
    assert f"step {PEAK}" in stars[0].get_label()


def test_frontier_places_policies_and_the_best_of_n_curve_on_the_right_reward(tmp_path):
    run = load_run(make_run(tmp_path))
    fig = plot_frontier(run.policies, run.stages)
    gold_ax, proxy_ax = fig.axes
    assert gold_ax.get_ylabel() == "gold reward" and proxy_ax.get_ylabel() == "proxy reward"
    points = {c.get_label(): (c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in gold_ax.containers}
    assert points == {n: (v[4], v[0]) for n, v in NUMBERS.items()}
    # The best-of-n stage was scored by the proxy (its reward_source is eval's "proxy" spec), so its
    # curve belongs on the proxy panel only, at KL = log n - (n-1)/n.
    assert not any(ln.get_label().startswith("bon") for ln in gold_ax.get_lines())
    bon = next(ln for ln in proxy_ax.get_lines() if ln.get_label() == "bon (n = 1..8)")
    assert list(bon.get_xdata()) == pytest.approx([math.log(n) - (n - 1) / n for n in range(1, 9)])
    assert list(bon.get_ydata()) == pytest.approx([0.2 + 0.1 * math.log(n) for n in range(1, 9)])


def test_headline_table_holds_the_evaluated_numbers(report):
    _, doc = report
    rows = _cells(_section(doc, "Headline"))
    by_name = {r[0]: r[1:] for r in rows}
    assert set(by_name) == {"sft", "ppo", "dpo", "bon (n = 4)"}
    # best-of-n: scored by the proxy only (no gold), at the n the stage ran with (4; its curve goes on to
    # its pool of 8, and the console says n=4 too); the KL is the bound log n - (n-1)/n
    assert by_name.pop("bon (n = 4)") == ["-", f"{0.2 + 0.1 * math.log(4):.3f}", "-",
                                         f"{math.log(4) - 3 / 4:.3f} (bound)", "-", "-"]
    for name, (g, gse, p, pse, kl, klse, wr, ln, lnse) in NUMBERS.items():
        assert by_name[name] == [f"{g:.3f} ± {gse:.3f}", f"{p:.3f} ± {pse:.3f}", f"{wr:.3f}",
                                 f"{kl:.3f} ± {klse:.3f}", f"{ln:.1f} ± {lnse:.1f}", "0.750"]
    assert by_name["ppo"][0] == "0.432 ± 0.012"  # the format, spelled out once


def test_text_is_escaped_everywhere(report):
    _, doc = report
    assert EVIL not in doc
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert _section(doc, "Sample responses").count(escaped) == 2  # eval example prompt, PPO sample table
    assert escaped in _section(doc, "Configs")


def test_missing_inputs_give_notes_not_crashes(tmp_path):
    run = tmp_path / "only-sft"
    _jsonl(run / "sft" / "metrics.jsonl", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": "nan"}])
    with open(run / "sft" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # torn by a killed process
    (run / "stale").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "frontier.png").write_bytes(b"old")  # from an earlier report
    doc = write_report(run, tmp_path / "out").read_text()
    assert len(_images(doc)) == 1  # only the training curves
    assert "Skipped: no policy in eval/results.json" in _section(doc, "Reward vs KL frontier")
    assert "Skipped: no stage logged &#x27;score&#x27;, &#x27;kl&#x27;" in _section(doc, "Over-optimisation")
    assert "Skipped: no eval/results.json" in _section(doc, "Headline")
    assert "skipped 1 unreadable line(s): 3" in doc
    assert not (tmp_path / "out" / "frontier.png").exists()
    # An empty folder still gives a report, every section a note.
    (tmp_path / "empty").mkdir()
    doc = write_report(tmp_path / "empty").read_text()
    assert _images(doc) == [] and doc.count('class="note"') >= 5


def test_read_metrics_and_stage_discovery_without_pipeline_json(tmp_path):
    run = make_run(tmp_path, with_pipeline=False)
    rows, tables, notes = read_metrics(run / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and [t["step"] for t in tables] == [1, STEPS]
    assert notes == []
    loaded = load_run(run)
    # Types from summary.json ("stage", or a best-of-n "curve"); order follows the pipeline.
    assert [(s.name, s.type) for s in loaded.stages] == [("sft", "sft"), ("rm", "rm"), ("ppo", "ppo"),
                                                         ("dpo", "dpo"), ("bon", "best_of_n")]
    assert set(loaded.policies) == set(NUMBERS)


def test_cli_writes_to_out_and_fails_on_a_missing_folder(tmp_path, capsys):
    run = tmp_path / "r"
    _jsonl(run / "sft" / "metrics.jsonl", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    assert main([str(run), "--out", str(tmp_path / "o"), "--title", "T <1>"]) == 0
    doc = (tmp_path / "o" / "report.html").read_text()
    assert "<title>T &lt;1&gt;</title>" in doc
    assert main([str(tmp_path / "nope")]) == 1
    assert "no such run folder" in capsys.readouterr().err


def test_gao_fits_recover_the_coefficients_a_run_was_made_with(tmp_path):
    """A PPO stage whose logged gold gain over its first 5 steps (at KL 0, as a run starts) is
    exactly d(0.6 − 0.25·log d) and a best-of-n curve
    judged by gold with gain d(0.4 − 0.05·d): the report's fits return those coefficients (R² 1)
    and the table shows them."""
    from rlhf.eval.overoptimization import gao_predict
    from rlhf.report import StageRun, gao_fits, gao_table

    kls = [0.0] * 5 + [0.05 * s * s for s in range(1, 41)]  # PPO starts at the reference: KL 0
    ppo = StageRun("ppo", "ppo", tmp_path, metrics=[
        {"step": float(i), "kl": k, "score": 0.1 * i, "track/gold": -0.2 + gao_predict("rl", 0.6, 0.25, k)}
        for i, k in enumerate(kls, 1)])
    curve = [{"n": n, "kl_bound": math.log(n) - (n - 1) / n,
              "rewards": {"gold": 0.1 + gao_predict("bon", 0.4, 0.05, math.log(n) - (n - 1) / n)}}
             for n in range(1, 17)]
    bon = StageRun("best-of-n", "best_of_n", tmp_path, summary={"curve": curve})
    fits = {f["stage"]: f for f in gao_fits([ppo, bon], {})}
    assert fits["ppo"]["alpha"] == pytest.approx(0.6, abs=1e-9) and fits["ppo"]["beta"] == pytest.approx(0.25, abs=1e-9)
    assert fits["best-of-n"]["alpha"] == pytest.approx(0.4, abs=1e-9)
    assert fits["best-of-n"]["beta"] == pytest.approx(0.05, abs=1e-9)
    assert fits["ppo"]["r2"] == pytest.approx(1.0, abs=1e-9)
    html = gao_table([ppo, bon], {})
    assert "0.600" in html and "0.250" in html and "0.400" in html
    assert "Skipped" in gao_table([], {})
