"""Converters from each public format, kind adaptation, every bad-input rule, train/eval splits."""

from __future__ import annotations

import json
import math

import pytest

from rlhf.data import (
    DataConfig,
    DataError,
    PreferenceRecord,
    PromptRecord,
    RankedRecord,
    SFTRecord,
    SkipReport,
    UnpairedRecord,
    load_records,
    load_train_eval,
)
from rlhf.data.formats import detect_format, split_hh
from rlhf.data.io import Row

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


def write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def load(tmp_path, rows, kind, **kw):
    """Load ``rows``; these tests skip 1 row in 3 on purpose, so data.max_skip_fraction is off
    unless ``kw`` sets it (its own tests are in test_data_formats.py)."""
    p = write(tmp_path, rows)
    recs, report = load_records(DataConfig(train=str(p), **{"max_skip_fraction": 1.0, **kw}), kind)
    return recs, report, p


# --------------------------------------------------------------------------- formats


def test_sft_text_and_conversational(tmp_path):
    rows = [{"prompt": "hello", "completion": "hi there"},
            {"prompt": [S("be nice"), U("hello")], "completion": [A("hi")]}]
    recs, _, _ = load(tmp_path, rows, "sft")
    assert recs == [SFTRecord("hello", "hi there"), SFTRecord([S("be nice"), U("hello")], [A("hi")])]


def test_messages_last_assistant_turn_is_the_completion(tmp_path):
    msgs = [S("sys"), U("q1"), A("a1"), U("q2"), A("a2")]
    recs, _, _ = load(tmp_path, [{"messages": msgs}], "sft")
    assert recs == [SFTRecord(msgs[:4], [A("a2")])]
    prompts, _, _ = load(tmp_path, [{"messages": msgs}], "prompt")
    assert prompts == [PromptRecord(msgs[:4])]


def test_preference_with_and_without_margin(tmp_path):
    rows = [{"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 2},
            {"prompt": [U("p")], "chosen": "good", "rejected": "bad"}]
    recs, _, _ = load(tmp_path, rows, "preference")
    assert recs == [PreferenceRecord("p", "good", "bad", 2.0), PreferenceRecord([U("p")], "good", "bad", None)]


def test_hh_split_at_the_last_common_assistant_marker():
    # Both dialogues share two turns and differ in the last reply, which starts the same way:
    # the prompt must end at the marker, not in the middle of the shared "Sure," reply.
    pre = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant:"
    chosen, rejected = pre + " Sure, here you go.", pre + " Sure, no."
    prompt, c, r = split_hh(chosen, rejected)
    assert (prompt, c, r) == (pre, " Sure, here you go.", " Sure, no.")
    assert prompt + c == chosen and prompt + r == rejected


def test_hh_rows_and_their_notes(tmp_path):
    pre = "\n\nHuman: hi\n\nAssistant:"
    rows = [{"chosen": pre + " a", "rejected": pre + " b"},
            # the dialogues diverge in an earlier reply: kept, completion spans several turns
            {"chosen": pre + " x\n\nHuman: more\n\nAssistant: y", "rejected": pre + " z"}]
    recs, report, p = load(tmp_path, rows, "preference")
    assert recs == [PreferenceRecord(pre, " a", " b"),
                    PreferenceRecord(pre, " x\n\nHuman: more\n\nAssistant: y", " z")]
    assert report.counts == {} and report.notes == {"completion holds further dialogue turns (kept)": 1}


def test_conversational_preference_shared_prefix_and_prompt_column(tmp_path):
    rows = [
        # UltraFeedback style: the whole conversation in chosen/rejected (+ a redundant prompt)
        {"prompt": "q", "chosen": [U("q"), A("good")], "rejected": [U("q"), A("bad")]},
        # TRL style: assistant replies only, the prompt in its own column
        {"prompt": [U("q")], "chosen": [A("good")], "rejected": [A("bad")]},
        # no prompt column: the shared messages are the prompt
        {"chosen": [S("s"), U("q"), A("good")], "rejected": [S("s"), U("q"), A("bad")]},
    ]
    recs, report, _ = load(tmp_path, rows, "preference")
    assert recs == [PreferenceRecord([U("q")], [A("good")], [A("bad")]),
                    PreferenceRecord([U("q")], [A("good")], [A("bad")]),
                    PreferenceRecord([S("s"), U("q")], [A("good")], [A("bad")])]
    assert report.counts == {}


def test_ranked_to_pairs_counts_k_choose_2_and_skips_ties(tmp_path):
    # scores 3, 1, 3, 2: pairs (0,1) (0,2)=tie (0,3) (1,2) (1,3) (2,3) -> 5 pairs, 1 tie.
    rows = [{"prompt": "p", "responses": ["r0", "r1", "r2", "r3"], "scores": [3, 1, 3, 2]}]
    recs, report, p = load(tmp_path, rows, "preference")
    assert [(r.chosen, r.rejected) for r in recs] == [
        ("r0", "r1"), ("r0", "r3"), ("r2", "r1"), ("r3", "r1"), ("r2", "r3")]
    assert report.counts == {"tie (pair skipped)": 1} and report.skipped_rows == 0
    (ranked,), _, _ = load(tmp_path, rows, "ranked")
    assert ranked.n_ties == 1 and len(ranked.to_pairs()) == 5


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_ranked_without_ties_gives_all_pairs(k):
    rec = RankedRecord("p", [f"r{i}" for i in range(k)], ranks=list(range(1, k + 1)))
    pairs = rec.to_pairs()
    assert len(pairs) == k * (k - 1) // 2
    # ranks: 1 is best, so the lower-indexed response always wins here
    assert all(int(p.chosen[1:]) < int(p.rejected[1:]) for p in pairs)


def test_unpaired_labels_and_preference_as_unpaired(tmp_path):
    rows = [{"prompt": "p", "completion": "c1", "label": True},
            {"prompt": "p", "completion": "c2", "label": 0},
            {"prompt": "p", "completion": "c3", "label": "False"}]
    recs, _, _ = load(tmp_path, rows, "unpaired")
    assert [r.label for r in recs] == [True, False, False]
    pref = [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
    recs, _, _ = load(tmp_path, pref, "unpaired")
    assert recs == [UnpairedRecord("p", "good", True), UnpairedRecord("p", "bad", False)]


def test_sft_from_preference_uses_chosen(tmp_path):
    recs, _, _ = load(tmp_path, [{"prompt": "p", "chosen": "good", "rejected": "bad"}], "sft")
    assert recs == [SFTRecord("p", "good")]


def test_prompt_kind_from_any_format(tmp_path):
    pre = "\n\nHuman: hi\n\nAssistant:"
    recs, _, _ = load(tmp_path, [{"chosen": pre + " a", "rejected": pre + " b"}], "prompt")
    assert recs == [PromptRecord(pre)]
    recs, _, _ = load(tmp_path, [{"prompt": "only"}], "prompt")
    assert recs == [PromptRecord("only")]


def test_a_format_that_cannot_give_the_kind_is_an_error(tmp_path):
    with pytest.raises(DataError) as e:
        load(tmp_path, [{"prompt": "p", "completion": "c"}], "preference")
    assert "format: a format that provides preference records" in str(e.value)
    assert "(the source is 'sft', detected from its columns)" in str(e.value)


@pytest.mark.parametrize("cols, first, fmt", [
    ({"messages"}, None, "messages"),
    ({"prompt", "chosen", "rejected"}, "x", "preference"),
    ({"chosen", "rejected"}, "x", "hh"),
    ({"chosen", "rejected"}, [A("x")], "conversational_preference"),
    ({"prompt", "responses", "scores"}, None, "ranked"),
    ({"prompt", "completion", "label"}, None, "unpaired"),
    ({"prompt", "completion"}, None, "sft"),
    ({"prompt"}, None, "prompt"),
])
def test_detect_format(cols, first, fmt):
    data = {c: "x" for c in cols}
    if first is not None:
        data["chosen"] = first
    assert detect_format([Row("f", 1, data)], "f") == fmt


def test_explicit_format_overrides_detection(tmp_path):
    # prompt+chosen+rejected would be detected as "preference"; format=hh ignores the prompt.
    pre = "\n\nHuman: hi\n\nAssistant:"
    rows = [{"prompt": "unused", "chosen": pre + " a", "rejected": pre + " b"}]
    recs, _, _ = load(tmp_path, rows, "preference", format="hh")
    assert recs == [PreferenceRecord(pre, " a", " b")]


# --------------------------------------------------------------------------- bad input

PRE = "\n\nHuman: hi\n\nAssistant:"
GOOD = {
    "preference": {"prompt": "p", "chosen": "good", "rejected": "bad"},
    "hh": {"chosen": PRE + " a", "rejected": PRE + " b"},
    "ranked": {"prompt": "p", "responses": ["a", "b"], "scores": [1, 2]},
    "sft": {"prompt": "p", "completion": "c"},
    "messages": {"messages": [U("q"), A("a")]},
    "unpaired": {"prompt": "p", "completion": "c", "label": True},
    "conversational_preference": {"chosen": [U("q"), A("a")], "rejected": [U("q"), A("b")]},
}
KIND = {"preference": "preference", "hh": "preference", "ranked": "ranked", "sft": "sft",
        "messages": "sft", "unpaired": "unpaired", "conversational_preference": "preference"}

# (format, bad row, reason, "field: expected" of the strict message)
BAD = [
    ("preference", {"prompt": "p", "chosen": "good"}, "missing field",
     "rejected: a non-empty string (the field is missing)"),
    ("preference", {"prompt": "p", "chosen": "good", "rejected": None}, "missing field",
     "rejected: a non-empty string (the field is missing)"),
    ("preference", {"prompt": "  ", "chosen": "good", "rejected": "bad"}, "empty field",
     "prompt: a non-empty string or list of chat messages (got an empty string)"),
    ("preference", {"prompt": "p", "chosen": 3, "rejected": "bad"}, "wrong type",
     "chosen: a non-empty string (got int)"),
    ("preference", {"prompt": "p", "chosen": "same ", "rejected": "same"}, "chosen identical to rejected",
     "rejected: a completion different from chosen (got the same text)"),
    ("preference", {"prompt": "p", "chosen": "good", "rejected": "bad", "margin": float("nan")},
     "NaN or infinite margin",
     "margin: a number (got NaN)"),
    ("hh", {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: ho\n\nAssistant: b"},
     "no common prompt prefix",
     'chosen: chosen and rejected to share a prompt ending in "\\n\\nAssistant:" (they have no such common prefix)'),
    ("hh", {"chosen": PRE + " ", "rejected": PRE + " b"}, "empty completion",
     'chosen: a non-empty reply after the last common "\\n\\nAssistant:" (got an empty one)'),
    ("hh", {"chosen": PRE + " a", "rejected": PRE + " a"}, "chosen identical to rejected",
     "rejected: a dialogue different from chosen (got the same text)"),
    ("ranked", {"prompt": "p", "responses": ["a", "b"], "scores": [1, float("nan")]}, "NaN score",
     "scores[1]: a number (got NaN)"),
    ("ranked", {"prompt": "p", "responses": ["a"], "scores": [1]}, "fewer than 2 responses",
     "responses: a list of at least 2 responses (got 1)"),
    ("ranked", {"prompt": "p", "responses": ["a", "b"], "scores": [1]}, "scores/ranks length differs from responses",
     "scores: one number per response (2) (got 1)"),
    ("ranked", {"prompt": "p", "responses": ["a", "b"]}, "missing field",
     "scores: a list of scores (higher is better) or ranks (1 is best) (neither field is present)"),
    ("ranked", {"prompt": "p", "responses": ["a", ""], "ranks": [1, 2]}, "empty field",
     "responses[1]: a non-empty string (got an empty string)"),
    ("messages", {"messages": [U("q")]}, "bad messages",
     "messages: a conversation with an assistant turn (got roles ['user'])"),
    ("messages", {"messages": [U("q"), A("a"), U("again")]}, "bad messages",
     "messages: a conversation that ends with an assistant turn (got trailing role 'user')"),
    ("messages", {"messages": [U("q"), {"role": "assistant"}]}, "bad messages",
     'messages[1]: a message {"role": str, "content": str} (got {"role": "assistant"})'),
    ("messages", {"messages": [U("q"), A(" ")]}, "empty completion",
     "messages[1]: a non-empty assistant message"),
    ("unpaired", {"prompt": "p", "completion": "c", "label": "maybe"}, "bad label",
     "label: true (desirable) or false (undesirable) (got 'maybe')"),
    ("conversational_preference", {"chosen": [U("q"), A("a")], "rejected": [U("x"), A("b")]},
     "no common prompt prefix",
     "chosen: chosen and rejected to share the prompt messages, or a prompt column "
     "(they share no message and there is no prompt)"),
    ("conversational_preference", {"chosen": [U("q"), A("a")], "rejected": [U("q")]}, "empty completion",
     "rejected: a reply after the shared prompt messages (got none)"),
]


@pytest.mark.parametrize("fmt, bad, reason, message", BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_row_is_skipped_and_reported_or_raises_in_strict_mode(tmp_path, fmt, bad, reason, message):
    rows = [GOOD[fmt], bad, GOOD[fmt]]  # the bad row is line 2
    recs, report, p = load(tmp_path, rows, KIND[fmt], format=fmt)
    assert len(recs) == 2
    assert report.counts == {reason: 1}
    assert report.examples[reason] == [(str(p), 2)]
    assert report.rows_read == 3 and report.records == 2
    with pytest.raises(DataError) as e:
        load(tmp_path, rows, KIND[fmt], format=fmt, strict=True)
    assert str(e.value) == f"{p}:2: {message}"
    assert (e.value.file, e.value.row, e.value.reason) == (str(p), 2, reason)


def test_summary_reports_once_with_reasons_and_first_rows():
    r = SkipReport(max_examples=2)
    r.rows_read, r.records = 10, 4
    for row in (3, 5, 9):
        r.skip("empty field", "f.jsonl", row)
    r.skip("malformed line", "f.jsonl", 7, "f.jsonl:7: line: a JSON object (Expecting value at column 1)")
    r.skip("tie (pair skipped)", "f.jsonl", 2)
    r.note("completion holds further dialogue turns (kept)", "f.jsonl", 4)
    assert r.summary() == (
        "read 10 rows, 4 records; skipped 4 rows, skipped 1 ranked pair\n"
        "  empty field: 3 (rows 3, 5, ...)\n"
        "  malformed line: 1 (row 7); e.g. f.jsonl:7: line: a JSON object (Expecting value at column 1)\n"
        "  tie (pair skipped): 1 (row 2)\n"
        "  note: completion holds further dialogue turns (kept): 1 (row 4)")
    assert r.skipped_rows == 4 and r.skipped_pairs == 1


def test_max_samples_caps_records(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "c"} for i in range(10)]
    recs, _, _ = load(tmp_path, rows, "sft", max_samples=3)
    assert [r.prompt for r in recs] == ["p0", "p1", "p2"]


# --------------------------------------------------------------------------- train / eval


def test_eval_fraction_is_deterministic_disjoint_and_keeps_rows_together(tmp_path):
    # 20 ranked rows of 3 responses -> 3 pairs each; a row's pairs must not straddle the split.
    rows = [{"prompt": f"p{i}", "responses": ["a", "b", "c"], "scores": [1, 2, 3]} for i in range(20)]
    p = write(tmp_path, rows)
    cfg = DataConfig(train=str(p), eval_fraction=0.25, seed=3)
    train, ev, report = load_train_eval(cfg, "preference")
    assert len(train) == 15 * 3 and len(ev) == 5 * 3
    tp, ep = {r.prompt for r in train}, {r.prompt for r in ev}
    assert not tp & ep and len(tp | ep) == 20
    again, ev2, _ = load_train_eval(cfg, "preference")
    assert again == train and ev2 == ev
    _, ev_other, _ = load_train_eval(DataConfig(train=str(p), eval_fraction=0.25, seed=4), "preference")
    assert {r.prompt for r in ev_other} != ep  # 15504 possible 5-subsets: equal only by a 1/15504 accident
    # input order is kept on both sides
    assert [int(r.prompt[1:]) for r in train] == sorted(int(r.prompt[1:]) for r in train)


def test_eval_from_a_file_and_from_a_split(tmp_path):
    import datasets
    tr = write(tmp_path, [{"prompt": "a", "completion": "b"}], "train.jsonl")
    ev = write(tmp_path, [{"prompt": "c", "completion": "d"}, {"prompt": "x", "completion": ""}], "eval.jsonl")
    # 1 bad row in 2 on purpose: the skip limit is off here
    train, evs, report = load_train_eval(DataConfig(train=str(tr), eval=str(ev), max_skip_fraction=1.0), "sft")
    assert train == [SFTRecord("a", "b")] and evs == [SFTRecord("c", "d")]
    assert report.counts == {"empty field": 1} and report.rows_read == 3  # one report for both
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}]),
                               "test": datasets.Dataset.from_list([{"prompt": "c", "completion": "d"}])})
    dd.save_to_disk(str(tmp_path / "dd"))
    train, evs, _ = load_train_eval(DataConfig(train=str(tmp_path / "dd"), eval_split="test"), "sft")
    assert train == [SFTRecord("a", "b")] and evs == [SFTRecord("c", "d")]
    train, evs, _ = load_train_eval(DataConfig(train=str(tr)), "sft")
    assert evs is None


def test_margins_must_be_finite_numbers_unless_text_levels_are_asked_for(tmp_path):
    """Issue 22 item 4: margins "big", "Infinity" (text), Infinity (JSON) and 'abc' in a CSV were
    accepted silently where the loss ignores margins. Each is a bad row naming file, row, field."""
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.5},
            {"prompt": "p", "chosen": "a", "rejected": "c", "margin": "big"},
            {"prompt": "p", "chosen": "a", "rejected": "d", "margin": "Infinity"},
            {"prompt": "p", "chosen": "a", "rejected": "e", "margin": float("inf")}]
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes inf as Infinity
    cfg = DataConfig(train=str(p), max_skip_fraction=1.0)
    recs, report = load_records(cfg, "preference")
    assert [r.margin for r in recs] == [1.5]
    assert report.bad_rows == 3
    for row, got in ((2, "a number (got the text 'big'"), (3, "a finite number (got 'Infinity')"),
                     (4, "a finite number (got inf)")):
        one = tmp_path / f"m{row}.jsonl"
        one.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[row - 1]) + "\n")
        with pytest.raises(DataError) as e:
            load_records(DataConfig(train=str(one), strict=True), "preference")
        assert str(e.value).startswith(f"{one}:2: margin: {got}"), str(e.value)
    csv = tmp_path / "m.csv"
    csv.write_text("prompt,chosen,rejected,score_gap\np,a,b,0.5\np,a,c,abc\n")
    with pytest.raises(DataError) as e:
        load_records(DataConfig(train=str(csv), strict=True, columns={"margin": "score_gap"}), "preference")
    assert str(e.value).startswith(f"{csv}:3: score_gap: a number (got the text 'abc'")
    # a reward model's loss.margin: mapping asks for text rating levels
    recs, _ = load_records(DataConfig(train=str(p), max_skip_fraction=1.0), "preference", margin_labels=True)
    assert [r.margin for r in recs] == [1.5, "big"]


def test_eval_split_of_one_file_is_refused_or_falls_back_to_eval_fraction(tmp_path, caplog):
    """Issue 22 item 1: data.eval_split on a local file was ignored and the file itself became the
    eval set (train_examples 24 = eval_examples 24, no word). Now: refused in one line, or, with
    data.eval_fraction, a seeded hold-out said in one line with its counts."""
    import datasets
    rows = [{"prompt": f"p{i}", "completion": "c"} for i in range(20)]
    p = write(tmp_path, rows)
    with pytest.raises(DataError) as e:
        load_train_eval(DataConfig(train=str(p), eval_split="test"), "sft")
    msg = str(e.value)
    assert msg.startswith(f"{p}: eval_split: a source with splits to read split 'test' from")
    assert "data.eval_fraction" in msg and "\n" not in msg
    with caplog.at_level("INFO", logger="rlhf.data"):
        train, ev, _ = load_train_eval(DataConfig(train=str(p), eval_split="test", eval_fraction=0.25), "sft")
    assert len(train) == 15 and len(ev) == 5
    assert not {r.prompt for r in train} & {r.prompt for r in ev}
    assert f"{p} has no split 'test': held out 5 of 20 sft records for evaluation" in caplog.text
    # a single saved Dataset has no splits either
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(DataError, match="eval_split: a source with splits"):
        load_train_eval(DataConfig(train=str(tmp_path / "one"), eval_split="test"), "sft")
    # eval = the training file itself (by another spelling) is refused too
    with pytest.raises(DataError, match="eval: held-out data, not the training source itself"):
        load_train_eval(DataConfig(train=str(p), eval=str(tmp_path / "." / "d.jsonl")), "sft")


def test_shipped_recipes_never_evaluate_on_their_training_file():
    """A recipe with data.eval_split (a hub dataset's test split) also names eval_fraction, so
    data.train=<your file> holds out rows instead of being refused or evaluating on training data."""
    import yaml

    from rlhf.configs import ROOT
    checked = 0
    for path in ROOT.glob("*/*.yaml"):
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        if data.get("eval_split") is not None and data.get("eval") is None:
            assert data.get("eval_fraction", 0) > 0, path
            checked += 1
    assert checked >= 7


def test_eval_fraction_needs_two_rows(tmp_path):
    p = write(tmp_path, [{"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match="eval_fraction: at least 2 rows to hold some out"):
        load_train_eval(DataConfig(train=str(p), eval_fraction=0.5), "sft")


def test_nan_float_is_json_nan():
    assert math.isnan(json.loads(json.dumps(float("nan"))))  # the NaN rows above really hold NaN


def test_a_source_with_no_usable_row_is_an_error_not_an_empty_dataset(tmp_path):
    with pytest.raises(DataError) as e:
        load(tmp_path, [{"prompt": "p", "completion": " "}], "sft")
    assert "rows: at least one usable row (read 1 rows, 0 records; skipped 1 row" in str(e.value)
