"""rlhf/console.py and what a run prints: key metrics per logged step, no third-party noise."""

from __future__ import annotations

import logging

import pytest

from rlhf.console import bar_postfix, step_line, warnings_collector


def test_step_line_shows_the_stage_key_metrics_in_order():
    m = {"score": 0.0995, "kl": 2.384e-07, "beta": 0.02, "loss": -0.0015, "lr": 5e-4, "track/gold": -0.1225,
         "entropy": 1.05, "updates": 2}
    assert step_line("ppo", 5, 12, m) == \
        "[ppo] step 5/12  loss -0.0015  reward 0.0995  gold -0.1225  kl 2.38e-07  β 0.02  lr 5.00e-04"
    # rm: accuracy under one label, the eval one separately; booleans and non-numbers ignored
    assert step_line("rm", 3, None, {"loss": 0.6931, "accuracy_mean": 0.5, "eval_accuracy": 0.75, "x": True}) == \
        "[rm] step 3  loss 0.6931  acc 0.5  eval_acc 0.75"
    assert bar_postfix({"loss": 1.0, "lr": 1e-3, "kl": 0.5}) == {"loss": "1", "kl": "0.5"}


def test_warnings_are_collected_per_run():
    c = warnings_collector()
    start = len(c.messages)
    log = logging.getLogger("rlhf.somewhere")
    log.warning("data: 3 rows skipped")
    log.warning("data: 3 rows skipped")
    log.info("not a warning")
    log.warning("another")
    assert c.since(start) == ["data: 3 rows skipped", "another"]


@pytest.mark.slow
def test_a_run_prints_one_line_per_logged_step_no_hf_bars_and_repeats_warnings(tmp_path, tiny_llama, capsys,
                                                                                 instruction_data):
    """An SFT run through the CLI: a line per logged step with the loss, no transformers
    'Loading weights' / 'Writing model shards' bars, and a warning raised during the run printed
    again after 'done'. Then a reward model from the causal LM: no LOAD REPORT table."""
    from rlhf.cli import main
    from rlhf.models import load as load_mod

    original = load_mod.count_parameters

    def noisy_count(model):  # a warning in the middle of the run
        logging.getLogger("rlhf.test").warning("something worth repeating")
        return original(model)

    load_mod_count = load_mod.count_parameters
    import rlhf.recipes.sft as sft_mod
    sft_mod.count_parameters = noisy_count
    try:
        code = main(["sft", f"model.name_or_path={tiny_llama}", f"data.train={instruction_data['train']}",
                     "data.chat_template=none", "data.max_samples=64", "train.batch_size=16", "train.log_every=2",
                     "train.progress=false", f"output_dir={tmp_path / 'sft'}"])
    finally:
        sft_mod.count_parameters = load_mod_count
    assert code == 0
    cap = capsys.readouterr()
    text = cap.out + cap.err
    lines = [x for x in cap.out.splitlines() if x.startswith("[sft] step ")]
    assert [x.split()[2] for x in lines] == ["2/4", "4/4"]
    assert all("  loss " in x and "  lr " in x for x in lines)
    assert "Loading weights" not in text and "Writing model shards" not in text
    after_done = cap.out.split("[sft] done:")[1]
    assert "warning (repeated from above): something worth repeating" in after_done

    # transformers' own handler holds the stderr of import time (not capsys's): listen on its logger.
    from rlhf.models.config import ModelConfig
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    report_log = logging.getLogger("transformers.modeling_utils")  # from_pretrained logs the report there
    report_log.addHandler(handler)
    try:
        load_mod.load_scalar_model(ModelConfig(name_or_path=str(tiny_llama)))
    finally:
        report_log.removeHandler(handler)
    assert not [r for r in records if "LOAD REPORT" in r.getMessage()]


def test_quiet_third_party_drops_noise_only(monkeypatch, caplog):
    """Issue 23 item 6: the tensor-parallel plan check's "not sharded" lines and the tokenizer's
    length warning (rlhf truncates itself) are dropped; other transformers warnings stay; bars are
    off when stderr is not a terminal (pytest captures it)."""
    import logging

    from rlhf.console import quiet_third_party

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    quiet_third_party()
    import os
    assert os.environ.get("TQDM_DISABLE") == "1"
    monkeypatch.delenv("TQDM_DISABLE")
    # A handler on each logger itself: transformers stops propagation to the root logger once its
    # own logging is configured (an earlier test may have done so), which would hide every record
    # from caplog and let the assertion below pass or fail for the wrong reason.
    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    tp = logging.getLogger("transformers.distributed.tensor_parallel")
    tok = logging.getLogger("transformers.tokenization_utils_base")
    keep = Keep(level=logging.WARNING)
    for log in (tp, tok):
        log.addHandler(keep)
    # The tokenizer's logger at WARNING itself: an earlier test may have set transformers' verbosity
    # to error, which would drop "something else" by level before the filter under test sees it.
    monkeypatch.setattr(tok, "level", logging.WARNING)
    tok.manager._clear_cache()
    try:
        tp.warning("The following layers were not sharded: x")
        tok.warning("Token indices sequence length is longer than the specified maximum sequence length (9 > 8)")
        tok.warning("something else")
    finally:
        for log in (tp, tok):
            log.removeHandler(keep)
    assert got == ["something else"], got


def test_pass_progress_shows_rate_and_eta_and_can_be_off(capsys, monkeypatch):
    from rlhf.console import pass_progress

    # A CLI test earlier in this process may have set TQDM_DISABLE (quiet_third_party: stderr is not a
    # terminal under pytest); tqdm reads it as its default.
    monkeypatch.delenv("TQDM_DISABLE", raising=False)

    with pass_progress("dpo: reference log-probs", 4, unit="example") as bar:
        for _ in range(4):
            bar.update(1)
    err = capsys.readouterr().err
    # tqdm redraws at most once a second: the first draw shows the count, the ETA slot (<) and the rate
    assert "dpo: reference log-probs" in err and "/4 [" in err and "<" in err and "example/s" in err
    with pass_progress("x", 4, enabled=False) as bar:
        bar.update(4)
    assert capsys.readouterr().err == ""


def test_pass_progress_is_off_in_a_redirected_log(capsys, monkeypatch):
    """quiet_third_party sets TQDM_DISABLE when stderr is not a terminal; a long pass's bar then
    leaves no fragments in the log (the demo's log had 25 'scoring with ...' bar lines)."""
    from rlhf.console import pass_progress

    monkeypatch.setenv("TQDM_DISABLE", "1")
    with pass_progress("dpo: reference log-probs", 4, unit="example") as bar:
        for _ in range(4):
            bar.update(1)
    assert capsys.readouterr().err == ""



def test_line_progress_prints_every_half_minute_with_rate_and_eta():
    """Issue 25 item 6: in a redirected log a long pass prints plain lines (a bar would leave
    fragments), at most one per ``every`` seconds, with the rate and an ETA worked out here by hand;
    a pass shorter than that prints nothing; the closing line only follows earlier ones."""
    import io

    from rlhf.console import LineProgress

    t = [0.0]
    out = io.StringIO()
    with LineProgress("dpo: reference log-probs", 100, unit="example", every=30.0,
                      clock=lambda: t[0], stream=out) as bar:
        for now, n in ((10.0, 10), (31.0, 10), (40.0, 10), (75.0, 20)):
            t[0] = now
            bar.update(n)
        t[0] = 200.0
        bar.update(50)  # the last update: the closing line says it
    lines = out.getvalue().splitlines()
    # at 31 s: 20 done, 20/31 = 0.645 example/s, 80 left -> 124 s; at 75 s: 50 done, 0.667/s, 75 s left
    assert lines == ["dpo: reference log-probs: 20/100 examples (20%), 0.645 example/s, ETA 2 min 4 s",
                     "dpo: reference log-probs: 50/100 examples (50%), 0.667 example/s, ETA 1 min 15 s",
                     "dpo: reference log-probs: 100/100 examples in 3 min 20 s"]

    quiet = io.StringIO()
    with LineProgress("x", 4, every=30.0, clock=lambda: 5.0, stream=quiet) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


def test_pass_progress_prints_lines_only_where_rlhf_turned_the_bars_off(monkeypatch):
    import rlhf.console as console

    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(console, "_REDIRECTED", True)
    assert isinstance(console.pass_progress("eval", 10), console.LineProgress)
    assert not isinstance(console.pass_progress("eval", 10, enabled=False), console.LineProgress)
    monkeypatch.setattr(console, "_REDIRECTED", False)  # the user's own TQDM_DISABLE: silence
    assert not isinstance(console.pass_progress("eval", 10), console.LineProgress)
