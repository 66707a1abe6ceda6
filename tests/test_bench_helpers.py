"""bench/_bench.py: the rules that keep a benchmark from flattering (worked examples)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def B(load_bench):
    return load_bench("_bench")


def test_interleaved_alternates_direction(B):
    assert [c for _, c in B.interleaved(["a", "b"], 4)] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [r for r, _ in B.interleaved(["a", "b"], 2)] == [0, 0, 1, 1]


def test_throughput_cpu_share_and_clean_flag(B):
    # 3 steps after step 1 in 3 s of wall time; 2.85 CPU-s on one thread: share 0.95, clean
    t = B.throughput([0.0, 1.0, 2.0, 3.0], 8, [0.0, 0.95, 1.9, 2.85], threads=1)
    assert t["pairs_per_s"] == 8.0 and t["cpu_share_of_threads"] == 0.95 and t["timing_clean"]
    t = B.throughput([0.0, 1.0, 2.0, 3.0], 8, [0.0, 0.5, 1.0, 1.5], threads=1)  # waited half the time
    assert t["cpu_share_of_threads"] == 0.5 and not t["timing_clean"]
    assert not B.throughput([0.0, 1.0], 8)["timing_clean"]  # no CPU record: cannot be shown clean


def _run(rate, clean, rss=100.0):
    return {"pairs_per_s": rate, "timing_clean": clean, "cpu_share_of_threads": 0.95 if clean else 0.4,
            "peak_rss_mib": rss, "mfu": rate / 100}


def test_summarize_takes_the_median_of_clean_repeats_only(B):
    s = B.summarize([_run(10, True), _run(50, False), _run(12, True), _run(11, True)], "pairs_per_s",
                    extra_keys=("mfu",))
    assert s["pairs_per_s"] == 11 and s["clean_repeats"] == 3 and s["repeats"] == 4
    assert s["mfu"] == 0.11  # the unclean 50 (a flattering outlier) never enters
    assert s["all_repeats"]["pairs_per_s"] == [10, 50, 12, 11]  # but it is kept
    s = B.summarize([_run(10, True), _run(12, True)], "pairs_per_s")
    assert s["pairs_per_s"] == 11  # even count: mean of the middle two


def test_no_clean_repeat_means_no_figure_and_a_refused_ratio(B):
    s = B.summarize([_run(50, False), _run(40, False)], "pairs_per_s", extra_keys=("mfu",))
    assert s["pairs_per_s"] is None and s["mfu"] is None and "no clean repeat" in s["refused"]
    t = B.summarize([_run(10, True)], "pairs_per_s")
    r = B.ratio(s, t, "pairs_per_s")
    assert r["ratio"] is None and "no clean repeat" in r["refused"]
    r = B.ratio(B.summarize([_run(30, True, 50.0)], "pairs_per_s"), t, "pairs_per_s")
    assert r["ratio"] == 3.0 and r["peak_rss_ratio"] == 0.5 and r["clean_repeats"] == [1, 1]
    assert B.ratio(None, t, "pairs_per_s")["ratio"] is None


def test_mfu_needs_a_clean_probe_from_the_same_process(B):
    rate = B.matmul_rate("fp32", n=64, repeats=3)
    assert rate["n"] == 64 and rate["threads"] >= 1 and rate["flops_per_s"] > 0 and "cpu_share_of_threads" in rate
    clean = {**rate, "flops_per_s": 1e9, "timing_clean": True}
    assert B.mfu(2e8, clean)["mfu"] == 0.2
    got = B.mfu(2e8, {**clean, "timing_clean": False})
    assert got["mfu"] is None and "unclean" in got["mfu_refused"]
    assert B.mfu(2e8, None)["mfu"] is None


def test_write_json_header(B, tmp_path):
    text = B.write_json({"bench": "x"}, tmp_path / "r.json", argv=["--threads", "1"])
    d = json.loads((tmp_path / "r.json").read_text())
    assert d == json.loads(text) and d["bench"] == "x"
    m = d["meta"]
    assert m["date_utc"].endswith("Z") and m["cpu_model"] and m["cpu_count"]
    assert m["command"].endswith("--threads 1")


def test_step_stamps_wrap_optimize(B, monkeypatch):
    """StepStamps stamps wall and CPU time after every optimize() call, returns its result, and
    resets the peak RSS once, after the first step (the value before the reset is kept)."""
    resets = []
    monkeypatch.setattr(B, "reset_peak_rss", lambda: resets.append(1) or 123.0)

    class Trainer:
        def optimize(self, x):
            return x + 1

    st = B.StepStamps(Trainer)
    assert st.peak_before is None and st.wall == []
    assert [Trainer().optimize(i) for i in range(3)] == [1, 2, 3]
    assert len(st.wall) == len(st.cpu) == 3 and st.wall == sorted(st.wall) and st.cpu == sorted(st.cpu)
    assert st.peak_before == 123.0 and resets == [1]


def test_smoke_refuses_the_options_it_sets(B, capsys):
    """--smoke sets sizes itself; one given as well would be ignored, so it is refused, naming it.
    Options it does not set, and defaults, pass."""
    import argparse

    p = argparse.ArgumentParser(prog="bench")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true")
    B.refuse_with_smoke(p, p.parse_args(["--smoke", "--out", "x"]), ["steps", "seeds"])
    B.refuse_with_smoke(p, p.parse_args(["--steps", "5"]), ["steps", "seeds"])  # no --smoke: fine
    with pytest.raises(SystemExit) as e:
        B.refuse_with_smoke(p, p.parse_args(["--smoke", "--steps", "5", "--seeds", "1"]), ["steps", "seeds"])
    assert e.value.code == 2
    assert "--smoke sets --steps, --seeds itself: leave them out" in capsys.readouterr().err


def test_json_out_keeps_smoke_runs_out_of_the_results(B, tmp_path, capsys):
    """A figure goes to bench/results/<name> unless --out says otherwise; a smoke run goes to its
    own default or --out, and one aimed into bench/results is refused (it would pass for a figure)."""
    import argparse

    p = argparse.ArgumentParser(prog="bench")
    assert B.json_out(p, None, False, tmp_path / "s.json", "x.json") == B.RESULTS / "x.json"
    assert B.json_out(p, None, True, tmp_path / "s.json", "x.json") == tmp_path / "s.json"
    assert B.json_out(p, str(tmp_path / "o.json"), True, tmp_path / "s.json", "x.json") == tmp_path / "o.json"
    with pytest.raises(SystemExit):
        B.json_out(p, str(B.RESULTS / "x.json"), True, tmp_path / "s.json", "x.json")
    assert "--smoke writes no figure: give --out a file outside bench/results" in capsys.readouterr().err
