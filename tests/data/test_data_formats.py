"""Published preference-data shapes read by configuration, and bad input reported with file:line:field.

Every sample is written out in its test. The docs (docs/data-formats.md, "Formats by
configuration") show the same samples with the config lines a user writes.
"""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from rlhf.data import DataConfig, DataError, encode_records, load_records
from rlhf.data.records import PreferenceRecord, SFTRecord, UnpairedRecord


def write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def load(tmp_path, rows, kind, **kw):
    p = write(tmp_path, rows)
    recs, report = load_records(DataConfig(train=str(p), **kw), kind)
    return recs, report, p


def sys_(t):
    return {"role": "system", "content": t}


def user(t):
    return {"role": "user", "content": t}


def bot(t):
    return {"role": "assistant", "content": t}


# --------------------------------------------------------------------------- ShareGPT


def test_sharegpt_conversations_are_chat_messages_with_system_and_multi_turn_prompt(tmp_path):
    row = {"id": "x1", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}
    (rec,), report, _ = load(tmp_path, [row], "sft")
    assert rec == SFTRecord([sys_("Be brief."), user("Hi"), bot("Hello."), user("2+2?")], [bot("4")])
    assert report.unused == {}  # an id column is not reported


def test_a_conversation_column_that_is_no_chat_list_is_not_read_as_messages(tmp_path):
    (rec,), report, _ = load(tmp_path, [{"prompt": "Hi", "completion": "Hello.", "conversation": "c-17"}], "sft")
    assert rec == SFTRecord("Hi", "Hello.") and report.unused == {}


def test_sharegpt_custom_keys_and_role_names(tmp_path):
    row = {"dialog": [{"speaker": "person", "text": "Hi"}, {"speaker": "bot", "text": "Hello."}]}
    (rec,), _, _ = load(tmp_path, [row], "sft", columns={"messages": "dialog"},
                        message_keys={"role": "speaker", "content": "text"}, roles={"person": "user"})
    assert rec == SFTRecord([user("Hi")], [bot("Hello.")])


def test_sharegpt_preference_with_chosen_rejected_as_message_object_list_or_string(tmp_path):
    conv = [{"from": "human", "value": "Hi"}]
    good, bad = {"from": "gpt", "value": "Hello!"}, {"from": "gpt", "value": "Go."}
    rows = [
        {"conversations": conv, "chosen": good, "rejected": bad},  # message objects
        {"conversations": conv, "chosen": [good], "rejected": [bad]},  # lists
        {"conversations": conv, "chosen": "Hello!", "rejected": bad},  # a string and an object
    ]
    recs, report, _ = load(tmp_path, rows, "preference")
    want = PreferenceRecord([user("Hi")], [bot("Hello!")], [bot("Go.")])
    assert recs == [want, want, want] and report.counts == {}
    # A plain-string pair keeps its strings; the rendered text is the same either way.
    (rec,), _, _ = load(tmp_path, [{"conversations": conv, "chosen": "Hello!", "rejected": "Go."}], "preference")
    assert rec == PreferenceRecord([user("Hi")], "Hello!", "Go.")


def test_system_column_becomes_the_first_message(tmp_path):
    (rec,), _, _ = load(tmp_path, [{"system": "Be brief.", "prompt": "Hi", "completion": "Hello."}], "sft")
    assert rec == SFTRecord([sys_("Be brief."), user("Hi")], "Hello.")


# --------------------------------------------------------------------------- winner / label column


def test_winner_column_1_2_picks_the_chosen_response(tmp_path):
    rows = [{"prompt": "2+2?", "response1": "4", "response2": "5", "label": 1},
            {"prompt": "3+3?", "response1": "7", "response2": "6", "label": 2}]
    recs, _, _ = load(tmp_path, rows, "preference", winner_columns=["label"])
    assert recs == [PreferenceRecord("2+2?", "4", "5"), PreferenceRecord("3+3?", "6", "7")]


def test_winner_values_a_b_and_the_winner_column_default(tmp_path):
    rows = [{"prompt": "p", "response_a": "x", "response_b": "y", "winner": "B"},
            {"prompt": "q", "response_a": "x", "response_b": "y", "winner": "model_a"}]
    recs, _, _ = load(tmp_path, rows, "preference")
    assert recs == [PreferenceRecord("p", "y", "x"), PreferenceRecord("q", "x", "y")]


def test_true_false_labels_must_be_given_a_meaning(tmp_path):
    rows = [{"prompt": "p", "response_a": "x", "response_b": "y", "a_better": True},
            {"prompt": "q", "response_a": "x", "response_b": "y", "a_better": False}]
    with pytest.raises(DataError) as e:
        load(tmp_path, rows, "preference", winner_columns=["a_better"])
    assert "d.jsonl: winner_values: to be told what the winner values ['false', 'true'] mean" in str(e.value)
    recs, _, _ = load(tmp_path, rows, "preference", winner_columns=["a_better"],
                      winner_values={"a": [True], "b": [False]})
    assert recs == [PreferenceRecord("p", "x", "y"), PreferenceRecord("q", "y", "x")]


def test_majority_of_annotator_votes_and_ties_dropped_and_counted(tmp_path):
    # A tie vote is a vote (issue 22 item 2): a response wins only with more votes than the other
    # response and than the tie votes; (b, tie, tie) once made b the chosen response.
    rows = [
        {"prompt": "p1", "response_a": "x", "response_b": "y", "v1": "A", "v2": "B", "v3": "B"},  # b 2:1
        {"prompt": "p2", "response_a": "x", "response_b": "y", "v1": "A", "v2": "B", "v3": "tie"},  # 1:1:1 tie
        {"prompt": "p3", "response_a": "x", "response_b": "y", "v1": "A", "v2": None, "v3": "tie"},  # a 1 : tie 1
        {"prompt": "p4", "response_a": "x", "response_b": "y", "v1": "tie", "v2": "tie", "v3": "tie"},
        {"prompt": "p5", "response_a": "x", "response_b": "y", "v1": "B", "v2": "tie", "v3": "tie"},  # tie 2:1
        {"prompt": "p6", "response_a": "x", "response_b": "y", "v1": "A", "v2": "A", "v3": "tie"},  # a 2:1
        {"prompt": "p7", "response_a": "x", "response_b": "y", "v1": "A", "v2": None, "v3": None},  # a 1:0
    ]
    # Most rows are ties, far above max_skip_fraction: ties are not bad rows.
    recs, report, p = load(tmp_path, rows, "preference", winner_columns=["v1", "v2", "v3"])
    assert recs == [PreferenceRecord("p1", "y", "x"), PreferenceRecord("p6", "x", "y"),
                    PreferenceRecord("p7", "x", "y")]
    assert report.counts == {"tie (row dropped)": 4}
    assert report.examples["tie (row dropped)"] == [(str(p), n) for n in (2, 3, 4, 5)]
    assert report.bad_rows == 0
    # strict mode does not turn a tie into an error
    recs, _, _ = load(tmp_path, rows, "preference", winner_columns=["v1", "v2", "v3"], strict=True)
    assert len(recs) == 3


def test_unknown_winner_value_names_row_and_column(tmp_path):
    rows = [{"prompt": "p", "response_a": "x", "response_b": "y", "winner": "A"},
            {"prompt": "q", "response_a": "x", "response_b": "y", "winner": "C"}]
    with pytest.raises(DataError) as e:
        load(tmp_path, rows, "preference", strict=True)
    assert str(e.value).startswith(f"{tmp_path / 'd.jsonl'}:2: winner: a winner value: one of ")
    assert "(got 'C'); set data.winner_values" in str(e.value)


def test_pairwise_is_not_sft_data_unless_told_which_rows_to_keep(tmp_path):
    rows = [{"prompt": "p", "response_a": "x", "response_b": "y", "winner": 2}]
    with pytest.raises(DataError) as e:
        load(tmp_path, rows, "sft")
    assert str(e.value).startswith(f"{tmp_path / 'd.jsonl'}: sft_keep: to be told which rows to train on")
    recs, _, _ = load(tmp_path, rows, "sft", sft_keep="preferred")
    assert recs == [SFTRecord("p", "y")]


# --------------------------------------------------------------------------- prompt template, Alpaca


def test_prompt_template_over_several_columns_leaves_out_empty_paragraphs(tmp_path):
    rows = [{"instruction": "Translate.", "context": "Bonjour", "answer": "Hello"},
            {"instruction": "Say hi.", "context": "", "answer": "Hi"}]
    recs, report, _ = load(tmp_path, rows, "sft", prompt_template="### Instruction:\n{instruction}\n\n"
                           "### Input:\n{context}\n\n### Response:\n", columns={"completion": "answer"})
    assert recs == [SFTRecord("### Instruction:\nTranslate.\n\n### Input:\nBonjour\n\n### Response:\n", "Hello"),
                    SFTRecord("### Instruction:\nSay hi.\n\n### Response:\n", "Hi")]
    assert report.unused == {}


def test_prompt_template_field_that_is_no_column_is_an_error(tmp_path):
    with pytest.raises(DataError) as e:
        load(tmp_path, [{"instruction": "a", "completion": "b"}], "sft", prompt_template="{instruction}\n\n{inputs}")
    assert str(e.value) == (f"{tmp_path / 'd.jsonl'}: prompt_template: fields that are columns of the source: "
                            "['inputs'] not found; the source has columns ['completion', 'instruction']")


def test_alpaca_instruction_input_output_is_detected(tmp_path):
    rows = [{"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
            {"instruction": "Say hi.", "input": "", "output": "Hi"}]
    recs, report, _ = load(tmp_path, rows, "sft")
    assert recs == [SFTRecord("Translate.\n\nBonjour", "Hello"), SFTRecord("Say hi.", "Hi")]
    assert report.unused == {}


# --------------------------------------------------------------------------- KTO


def test_kto_as_messages_plus_boolean_label(tmp_path):
    rows = [{"messages": [user("Hi"), bot("Hello!")], "label": True},
            {"messages": [user("Hi"), bot("Go away.")], "label": False}]
    recs, _, _ = load(tmp_path, rows, "unpaired")
    assert recs == [UnpairedRecord([user("Hi")], [bot("Hello!")], True),
                    UnpairedRecord([user("Hi")], [bot("Go away.")], False)]


def test_kto_prompt_completion_with_a_renamed_label_column(tmp_path):
    rows = [{"prompt": "Hi", "completion": "Hello!", "is_good": "yes"}]
    (rec,), _, _ = load(tmp_path, rows, "unpaired", columns={"label": "is_good"})
    assert rec == UnpairedRecord("Hi", "Hello!", True)


def test_sft_on_kto_rows_refuses_then_keeps_what_it_is_told(tmp_path):
    rows = [{"messages": [user("Hi"), bot("Hello!")], "label": True},
            {"messages": [user("Hi"), bot("Go away.")], "label": False}]
    with pytest.raises(DataError) as e:
        load(tmp_path, rows, "sft")
    assert "sft_keep: to be told which rows to train on: the rows carry a KTO label" in str(e.value)
    recs, report, _ = load(tmp_path, rows, "sft", sft_keep="preferred")
    assert recs == [SFTRecord([user("Hi")], [bot("Hello!")])]
    assert report.counts == {"left out by data.sft_keep": 1} and report.bad_rows == 0
    recs, _, _ = load(tmp_path, rows, "sft", sft_keep="all")
    assert len(recs) == 2


# --------------------------------------------------------------------------- nothing silently ignored


def test_unused_label_or_text_column_is_reported_once_and_strict_refuses(tmp_path, caplog):
    rows = [{"prompt": "Name a color.", "completion": "Blue.", "rating": 2, "notes": "the annotator was unsure here",
             "source": "web", "row_id": 7}] * 3
    with caplog.at_level(logging.WARNING, logger="rlhf.data"):
        _, report, p = load(tmp_path, rows, "sft")
    assert sorted(report.unused) == ["notes", "rating"]
    assert "looks like a label (its name)" in report.unused["rating"]
    assert "looks like text (several words per row)" in report.unused["notes"]
    assert caplog.text.count("column 'rating' is not used") == 1
    with pytest.raises(DataError) as e:
        load(tmp_path, rows, "sft", strict=True)
    assert str(e.value).startswith(f"{p}: column 'rating': the sft format does not read it and it looks like a label")
    _, report, _ = load(tmp_path, rows, "sft", strict=True, ignore_columns=["rating", "notes"])
    assert report.unused == {}


def test_pair_bookkeeping_beside_chosen_rejected_is_not_reported(tmp_path):
    """rlhf label / iterative DPO write scores and flags that agree with the pair; a rating is reported."""
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 2.0, "score_rejected": 1.0,
             "flipped": False, "position_consistent": True, "rating": 3}] * 2
    _, report, _ = load(tmp_path, rows, "preference")
    assert list(report.unused) == ["rating"]


def test_instruction_input_given_as_prompt_loses_nothing_silently(tmp_path):
    """The issue's case: mapping prompt=instruction leaves the input column out; it is reported."""
    rows = [{"instruction": "Translate.", "input": "Bonjour tout le monde", "output": "Hello everyone"}]
    _, report, _ = load(tmp_path, rows, "sft", format="sft", columns={"prompt": "instruction", "completion": "output"})
    assert list(report.unused) == ["input"]


# --------------------------------------------------------------------------- bad input


def test_undecodable_bytes_name_file_line_and_column_and_data_encoding_reads_them(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    with pytest.raises(DataError) as e:
        load_records(DataConfig(train=str(p), strict=True), "sft")
    assert str(e.value) == (f"{p}:2: line: text in utf-8 (byte 0xe9 at column 16 cannot be decoded; if the "
                            "file is in another encoding, set data.encoding, e.g. latin-1 or cp1252)")
    recs, _ = load_records(DataConfig(train=str(p), encoding="latin-1"), "sft")
    assert recs[1] == SFTRecord("café", "b")


def test_undecodable_bytes_in_csv_and_gzip(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"prompt,completion\na,b\nc\xff,d\n")
    with pytest.raises(DataError) as e:
        load_records(DataConfig(train=str(p)), "sft")
    assert str(e.value).startswith(f"{p}:3: line: text in utf-8 (byte 0xff at column 2 cannot be decoded")
    g = tmp_path / "d.jsonl.gz"
    g.write_bytes(gzip.compress(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff", "completion": "b"}\n'))
    recs, report = load_records(DataConfig(train=str(g), max_skip_fraction=0.5), "sft")
    assert len(recs) == 1 and report.counts == {"undecodable bytes": 1}
    assert report.examples["undecodable bytes"] == [(str(g), 2)]


@pytest.mark.parametrize("line, reason", [
    ('{"prompt": "a", "completion": "the ans',
     "a string that starts at column 31 is never closed (the line ends at column 38: cut short?) near "),
    ('{"prompt": "a\tb", "completion": "c"}',
     "a raw control character (newline, tab, ...) inside a string at column 14; JSON needs it escaped"),
    ("{'prompt': 'a', 'completion': 'b'}", "a property name in double quotes at column 2 near "),
])
def test_malformed_json_reason_is_readable(tmp_path, line, reason):
    p = tmp_path / "d.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(DataError) as e:
        load_records(DataConfig(train=str(p), strict=True), "sft")
    msg = str(e.value)
    assert msg.startswith(f"{p}:1: line: a JSON object: {reason}")
    assert " at at " not in msg


def test_max_skip_fraction_stops_a_run_that_skips_too_many_rows(tmp_path):
    good = {"prompt": "a", "completion": "b"}
    rows = [good, {"prompt": "a", "completion": ""}, good]
    with pytest.raises(DataError) as e:
        load(tmp_path, rows, "sft")
    assert "rows: at most 1.0% of the rows to be skipped as bad (data.max_skip_fraction), but 1 of 3 (33.3%) were" \
        in str(e.value)
    recs, _, _ = load(tmp_path, rows, "sft", max_skip_fraction=0.34)
    assert len(recs) == 2
    # The default lets through a rare bad row: 1 in 101 is 0.99%.
    recs, report, _ = load(tmp_path, [good] * 100 + [{"prompt": "a", "completion": ""}], "sft")
    assert len(recs) == 100 and report.bad_rows == 1


def test_truncated_rows_are_counted_with_tokens_cut(tmp_path, tok, caplog):
    from rlhf.data.errors import SkipReport
    from rlhf.data.records import SFTRecord as R

    # word-level tokenizer (conftest): one token per word, EOS appended to the completion.
    recs = [R("a b c d e f", "one two"),  # 6 + 3 = 9 > 6: prompt budget 6 - 3 = 3, cut 3
            R("a", "one two three four five six seven"),  # 1 + 8: prompt kept, completion cut to 5
            R("a b", "one")]  # 2 + 2: nothing cut
    cfg = DataConfig(max_length=6)
    report = SkipReport()
    with caplog.at_level(logging.WARNING, logger="rlhf.data"):
        out = encode_records(recs, tok, cfg, report)
    assert [len(e["input_ids"]) for e in out] == [6, 6, 4]
    assert report.truncated == {"prompt": [1, 3, 3], "completion": [1, 3, 3]}
    assert report.truncation_summary() == (
        "truncated to data.max_length: 2 of 3 examples; "
        "prompt: 1 (3 tokens cut, at most 3); completion: 1 (3 tokens cut, at most 3)")
    assert "truncated to data.max_length: 2 of 3 examples" in caplog.text


def test_ppo_prompts_that_cannot_be_tokenized_count_towards_max_skip_fraction(tmp_path, tok):
    """Chat prompts with data.chat_template none cannot be encoded; half of the prompts failing
    stops PPO before any sampling (the same limit as for rows)."""
    from types import SimpleNamespace

    from rlhf.recipes.ppo import PPOConfig, _prompts

    p = write(tmp_path, [{"prompt": "hello world"}, {"prompt": [{"role": "user", "content": "hi"}]}])
    cfg = PPOConfig(data=DataConfig(train=str(p), chat_template="none"), reward="x:y")
    printed: list[str] = []
    trainer = SimpleNamespace(print=printed.append)
    with pytest.raises(DataError, match=r"prompts: at most 1.0% of the prompts to be skipped at tokenization "
                                        r"\(data.max_skip_fraction\), but 1 of 2 were"):
        _prompts(cfg, tok, trainer)
    cfg = PPOConfig(data=DataConfig(train=str(p), chat_template="none", max_skip_fraction=0.5), reward="x:y")
    out = _prompts(cfg, tok, trainer)
    assert [e["prompt"] for e in out] == ["hello world"] and "cannot be tokenized: 1" in printed[0]


def test_sft_on_a_preference_file_says_it_once_and_rlhf_label_columns_are_not_flagged(tmp_path, caplog):
    """Issue 23 item 6: SFT on prompt/chosen/rejected trained on prompt + chosen without a word, and
    `rlhf label`'s own judge_probability column was reported as unused in every demo run."""
    import logging
    rows = [{"prompt": f"p{i}", "chosen": " good", "rejected": " bad", "judge_probability": 0.7} for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="rlhf.data"):
        recs, report, _ = load(tmp_path, rows, "sft")
    said = [r.getMessage() for r in caplog.records if "trains on prompt + chosen" in r.getMessage()]
    assert len(said) == 1 and len(recs) == 3 and all(r.completion == " good" for r in recs)
    assert "judge_probability" not in report.summary()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlhf.data"):
        _, report, _ = load(tmp_path, rows, "preference")
    assert [r.getMessage() for r in caplog.records] == []
