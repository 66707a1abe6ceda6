"""rlhf pipeline: reading and checking the file, ${stage} references, skipping finished stages
(resume), atomic non-training stages; the label stage's Bradley–Terry labels; the eval stage's
best-of-n curve judged by another reward; and the built-in demo end to end (--fast)."""

from __future__ import annotations

import itertools
import json
import math
import random
import re

import pytest

from rlhf.eval.stage import concomitant_curve
from rlhf.label import bradley_terry_labels
from rlhf.pipeline import PipelineError, load_pipeline, run_pipeline

CALL_MODULE = '''
import json, pathlib
CALLS = []
def write(output_dir, text, fail=False):
    CALLS.append(text)
    (pathlib.Path(output_dir) / "out.txt").write_text(text)
    if fail:
        raise RuntimeError("boom")
    return {"chars": len(text)}
'''


@pytest.fixture
def callmod(tmp_path, monkeypatch):
    (tmp_path / "pipe_calls.py").write_text(CALL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys
    sys.modules.pop("pipe_calls", None)
    return importlib.import_module("pipe_calls")


def test_references_resolve_to_earlier_stage_folders(tmp_path, tiny_llama):
    spec = {"output_dir": str(tmp_path / "run"), "stages": [
        {"name": "a", "type": "call", "args": {"function": "x:y", "path": "${output_dir}/f"}},
        {"name": "sft", "type": "sft", "config": {"model": {"name_or_path": str(tiny_llama)},
                                                   "data": {"train": "${a}/data.jsonl"}}},
    ]}
    out, stages = load_pipeline(spec)
    assert stages[0].args["path"] == f"{tmp_path / 'run'}/f"
    assert stages[1].config.data.train == f"{tmp_path / 'run' / 'a'}/data.jsonl"
    assert stages[1].config.output_dir == str(tmp_path / "run" / "sft")  # set by the pipeline


def test_a_stage_name_with_a_dot_can_be_referenced(tmp_path):
    """A stage named dpo-beta0.1 is a valid folder name, so ${dpo-beta0.1} must resolve (it was
    left as text and handed to from_pretrained as a hub id); ${a}.jsonl still means stage a."""
    spec = {"output_dir": str(tmp_path / "run"), "stages": [
        {"name": "a", "type": "call", "args": {"function": "x:y"}},
        {"name": "dpo-beta0.1", "type": "call", "args": {"function": "x:y", "p": "${a}.jsonl"}},
        {"name": "c", "type": "call", "args": {"function": "x:y", "p": "${dpo-beta0.1}/final"}},
    ]}
    _, stages = load_pipeline(spec)
    assert stages[1].args["p"] == f"{tmp_path / 'run' / 'a'}.jsonl"
    assert stages[2].args["p"] == f"{tmp_path / 'run' / 'dpo-beta0.1'}/final"


@pytest.mark.parametrize("stages,message", [
    ([{"name": "a", "type": "nope"}], "unknown type 'nope'"),
    ([{"name": "a", "type": "call", "args": {"p": "${later}"}}, {"name": "later", "type": "report"}],
     "${later} names no earlier stage"),
    ([{"name": "a", "type": "report"}, {"name": "a", "type": "report"}], "used twice"),
    ([{"name": "s", "type": "sft", "config": {"train": {"lr": -1}}}], "stage 's': config.train.lr"),
    ([{"name": "s", "type": "sft", "confg": {}}], "unknown key(s) confg"),
    ([{"name": "a", "type": "report"}, {"name": "c", "type": "call", "args": {"x": 1}}],
     "stage 'c': args.function is required"),
])
def test_bad_pipelines_fail_before_anything_runs_and_name_the_stage(tmp_path, stages, message):
    with pytest.raises(PipelineError) as e:
        run_pipeline({"output_dir": str(tmp_path / "run"), "stages": stages})
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()  # validated up front: nothing was created


def test_finished_stages_are_skipped_and_a_failed_one_leaves_nothing(tmp_path, callmod):
    out = tmp_path / "run"
    spec = {"output_dir": str(out), "stages": [
        {"name": "one", "type": "call", "args": {"function": "pipe_calls:write", "text": "first"}},
        {"name": "two", "type": "call", "args": {"function": "pipe_calls:write", "text": "second", "fail": True}},
    ]}
    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(spec, log=lambda m: None)
    assert (out / "one" / "out.txt").read_text() == "first"
    assert json.loads((out / "one" / "summary.json").read_text())["chars"] == 5
    assert not (out / "two").exists()  # written in a temporary folder, never renamed into place
    spec["stages"][1]["args"]["fail"] = False
    status = run_pipeline(spec, log=lambda m: None)
    assert callmod.CALLS == ["first", "second", "second"]  # "one" did not run again
    assert [s["status"] for s in status["stages"]] == ["done (skipped: finished earlier)", "done"]
    assert json.loads((out / "pipeline.json").read_text())["stages"][1]["status"] == "done"


def test_only_runs_the_named_stages_and_the_last_line_says_what_ran(tmp_path, callmod):
    """``--only`` with a stage that finished earlier ran nothing: the last line said "all stages
    finished in 0 s". It now counts what ran, what was skipped and what --only left out; an
    unknown name is refused before anything runs, with the closest stage name."""
    out = tmp_path / "run"
    spec = {"output_dir": str(out), "stages": [
        {"name": "one", "type": "call", "args": {"function": "pipe_calls:write", "text": "first"}},
        {"name": "two", "type": "call", "args": {"function": "pipe_calls:write", "text": "second"}},
        {"name": "three", "type": "call", "args": {"function": "pipe_calls:write", "text": "third"}},
    ]}
    with pytest.raises(PipelineError, match=r"--only: no stage named 'tow'; did you mean 'two'\? "
                                            r"\(stages: one, two, three\)"):
        run_pipeline(spec, only=["tow"], log=lambda m: None)
    assert not out.exists()
    lines: list[str] = []
    run_pipeline(spec, only=["one"], log=lines.append)
    def last() -> str:  # the seconds depend on the machine
        return re.sub(r"in \d+ s", "in N s", lines[-1])
    assert last() == f"[pipeline] 1 stage ran, in N s; 2 not selected by --only: {out}"
    lines.clear()
    run_pipeline(spec, only=["one", "two"], log=lines.append)
    assert last() == f"[pipeline] 1 stage ran, in N s; 1 finished earlier (skipped); 1 not selected by --only: {out}"
    lines.clear()
    run_pipeline(spec, log=lines.append)
    assert last() == f"[pipeline] 1 stage ran, in N s; 2 finished earlier (skipped): {out}"
    assert callmod.CALLS == ["first", "second", "third"]


def test_pipeline_outcome_line_when_every_stage_ran():
    from rlhf.pipeline import _outcome
    assert _outcome(["done", "done"], 12.4) == "all 2 stages ran, in 12 s"
    assert _outcome(["done (skipped: finished earlier)"], 0.2) == "0 stages ran, in 0 s; 1 finished earlier (skipped)"


def test_bradley_terry_labels_agree_at_the_logistic_rate():
    """Score gap d at temperature τ: a is chosen with probability σ(d/τ); over 20000 pairs the
    rate is within 4 standard errors. τ = 0 always picks the higher score."""
    rng = random.Random(0)
    n, d, tau = 20000, 0.3, 0.35
    labels = bradley_terry_labels([d] * n, [0.0] * n, tau, rng)
    p = 1 / (1 + math.exp(-d / tau))
    assert abs(sum(labels) / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert bradley_terry_labels([1.0, 0.0], [0.0, 1.0], 0.0, rng) == [True, False]


def test_concomitant_curve_equals_brute_force_over_subsets():
    """E[judge score of the proxy-best among a random k-subset], enumerated over all subsets."""
    proxy = [[0.3, 0.1, 0.9, 0.5, 0.7], [1.0, 2.0, 0.0, 3.0, 4.0]]
    judge = [[1.0, -1.0, 0.0, 2.0, 5.0], [0.5, 0.25, 3.0, -2.0, 1.0]]
    for k in range(1, 6):
        want = 0.0
        for p, g in zip(proxy, judge):
            subsets = list(itertools.combinations(range(5), k))
            want += sum(g[max(s, key=lambda i: p[i])] for s in subsets) / len(subsets)
        assert concomitant_curve(proxy, judge, [k])[0] == pytest.approx(want / 2, abs=1e-12)


@pytest.mark.slow
def test_quickstart_fast_beats_sft_on_gold_and_writes_the_report(quickstart_fast):
    """The built-in demo (--fast): every method beats the SFT policy on the hidden gold reward
    on held-out prompts, at a KL to SFT below 5 nats; best-of-n's proxy reward rises with n and
    its gold reward at n = 4 beats n = 1; the report embeds its three plots.
    Measured (seed 0): SFT -0.28; PPO 0.00 (KL 1.8), DPO 0.00 (0.5), RAFT -0.08 (0.9), ReST
    -0.07 (1.0), iterative DPO -0.06 (0.4), Constitutional AI -0.04 (0.6): margins set at 0.08
    (PPO, DPO) and 0.1 (the others, each measured >= 0.2); best-of-n gold -0.17 -> -0.10."""
    import base64

    out = quickstart_fast  # run by the fixture (tests/conftest.py)
    headline = json.loads((out / "eval" / "summary.json").read_text())["headline"]
    sft_gold = headline["reference"]["gold"]
    for name in ("ppo", "dpo", "raft", "rest", "iterative-dpo", "constitutional"):
        assert headline[name]["gold"] > sft_gold + (0.08 if name in ("ppo", "dpo") else 0.1), headline
        assert 0 < headline[name]["kl"] < 5.0, headline
    curve = json.loads((out / "eval" / "results.json").read_text())["best_of_n"]["best-of-n"]["curve"]
    proxy = [c["rewards"]["proxy"] for c in curve]
    assert all(a <= b for a, b in zip(proxy, proxy[1:])), proxy
    assert curve[3]["rewards"]["gold"] > curve[0]["rewards"]["gold"] + 0.04, curve
    html = (out / "report" / "report.html").read_text()
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) == 3
    for img in images:
        assert base64.b64decode(img.split('"')[0])[:8] == b"\x89PNG\r\n\x1a\n"
