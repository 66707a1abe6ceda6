"""Issue 22 items 12 and 14: one rule for records that cannot be tokenized (every stage),
prompts kept from unusable pairs, chat roles outside the mapping refused, and ``max_samples``
reading only the head of a file where the format allows."""

from __future__ import annotations

import json
import logging

import pytest

# --------------------------------------------------------------------------- item 12: data rules


def test_one_untokenizable_record_is_skipped_by_dpo_and_rm_as_by_sft(tok, caplog):
    """DPO and RM encoded record by record, so one bad record of one was '100% skipped' and a
    long file logged its truncation line once per record; now the run's rule applies once."""
    from rlhf.data.config import DataConfig
    from rlhf.data.errors import SkipReport
    from rlhf.data.records import PreferenceRecord
    from rlhf.recipes.dpo import _encode
    from rlhf.recipes.rm import build_groups

    cfg = DataConfig(chat_template="none", max_length=4, max_skip_fraction=0.5)
    good = [PreferenceRecord("hi there", "good good good", "bad", ("f.jsonl", i)) for i in range(1, 4)]
    bad = PreferenceRecord([{"role": "user", "content": "hi"}], "good", "bad", ("f.jsonl", 4))
    for encode in (_encode, lambda r, t, c, rep: [e for g in build_groups(r, t, c, rep) for e in g]):
        report = SkipReport()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            out = encode([*good, bad], tok, cfg, report)
        assert len(out) == 3 and report.counts == {"cannot be tokenized": 1}
        truncation = [r for r in caplog.records if "truncated to data.max_length" in r.getMessage()]
        assert len(truncation) == 1 and "3 of 3 examples" in truncation[0].getMessage()


def test_ppo_prompts_from_pairs_keep_prompts_of_unusable_pairs(tmp_path):
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_records

    f = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "p1", "response_a": "x", "response_b": "y", "winner": "a"},
            {"prompt": "p2", "response_a": "x", "response_b": "y", "winner": "tie"},
            {"prompt": "p3", "response_a": "same", "response_b": "same", "winner": "b"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts, report = load_records(DataConfig(train=str(f)), "prompt")
    assert [p.prompt for p in prompts] == ["p1", "p2", "p3"]
    assert report.notes == {"prompt kept, its responses unusable": 2}
    pairs, _ = load_records(DataConfig(train=str(f), max_skip_fraction=1.0), "preference")
    assert [p.prompt for p in pairs] == ["p1"]  # training on pairs still drops them


@pytest.mark.parametrize("role", ["function_call", "observation", "humna"])
def test_sharegpt_roles_outside_the_mapping_are_refused(tmp_path, role):
    from rlhf.data.config import DataConfig
    from rlhf.data.errors import DataError
    from rlhf.data.load import load_records

    f = tmp_path / "sg.jsonl"
    conv = [{"from": "human", "value": "hi"}, {"from": role, "value": "x"}, {"from": "gpt", "value": "ok"}]
    f.write_text(json.dumps({"conversations": conv}) + "\n")
    with pytest.raises(DataError, match=rf"sg.jsonl:1: messages: .* \(got role '{role}'; map it, e.g. "
                                        rf"data.roles=\{{{role}: user\}}"):
        load_records(DataConfig(train=str(f), strict=True), "sft")
    recs, _ = load_records(DataConfig(train=str(f), roles={role: "user"}), "sft")
    assert [m["role"] for m in recs[0].prompt] == ["user", "user"]


# --------------------------------------------------------------------------- item 14: streaming


def test_max_samples_reads_only_the_head_of_a_jsonl_file(tmp_path):
    """The tail of the file is garbage (not JSON, not UTF-8): with max_samples=4 it is never
    read, so nothing is skipped or refused; without, the garbage is found."""
    from rlhf.data.config import DataConfig
    from rlhf.data.errors import DataError
    from rlhf.data.load import load_records

    f = tmp_path / "big.jsonl"
    head = "".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) + "\n" for i in range(6))
    f.write_bytes(head.encode() + b"\xff\xfe not json at all\n" * 50)
    recs, report = load_records(DataConfig(train=str(f), max_samples=4), "sft")
    assert [r.prompt for r in recs] == ["p0", "p1", "p2", "p3"]
    assert report.rows_read == 4 and not report.counts
    with pytest.raises(DataError, match="rows to be skipped as bad"):
        load_records(DataConfig(train=str(f)), "sft")


def test_max_samples_reads_on_when_head_rows_are_skipped(tmp_path):
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_records

    f = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "p0", "completion": ""}] + [{"prompt": f"p{i}", "completion": "c"} for i in range(1, 6)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs, report = load_records(DataConfig(train=str(f), max_samples=3, max_skip_fraction=0.5), "sft")
    assert [r.prompt for r in recs] == ["p1", "p2", "p3"]
    assert report.counts == {"empty field": 1}


def test_max_samples_reads_only_the_head_of_a_csv_file(tmp_path):
    """CSV is read lazily (the text decoder reads blocks of a few KB): with a limit, the
    undecodable, unterminated tail 200 KB into the file is never reached; without, it is."""
    from rlhf.data.errors import DataError
    from rlhf.data.io import read_rows

    f = tmp_path / "big.csv"
    f.write_bytes(b"prompt,completion\n" + b"".join(b"p%d,c%d\n" % (i, i) for i in range(20_000))
                  + b'"never closed,\xff\xfe\n' * 20)
    assert f.stat().st_size > 200_000
    rows = read_rows(str(f), limit=3)
    assert [r.data["prompt"] for r in rows] == ["p0", "p1", "p2"] and [r.number for r in rows] == [2, 3, 4]
    with pytest.raises(DataError, match=r"big.csv:20002: line: text in utf-8 \(byte 0xff"):
        read_rows(str(f))


# --------------------------------------------------------------------------- item 12: every assistant turn


def _conv():
    return [{"role": "system", "content": "good"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how are you"},
            {"role": "assistant", "content": "fine thanks"}]


def test_sft_assistant_turns_all_matches_a_hand_built_mask(tok, ids):
    """<|system|> good </s> <|user|> hi </s> <|assistant|> hello </s> <|user|> how are you </s>
    <|assistant|> fine thanks </s>: 'last' trains on the final reply, 'all' on both replies, each
    with the EOS that closes it (the default template, word-level tokenizer: one word, one id)."""
    from rlhf.data.config import DataConfig
    from rlhf.data.records import SFTRecord
    from rlhf.data.tokenize import encode_sft

    msgs = _conv()
    rec = SFTRecord(msgs[:-1], [msgs[-1]])
    want_ids = ids("<|system|> good </s> <|user|> hi </s> <|assistant|> hello </s> <|user|> how are you </s> "
                   "<|assistant|> fine thanks </s>")
    #           sys good </s> usr  hi </s> ast hello </s> usr how are you </s> ast fine thanks </s>
    last_mask = [0,  0,   0,   0,   0,  0,   0,  0,    0,   0,  0,  0,  0,   0,  0,  1,   1,     1]
    all_mask = [0,  0,   0,   0,   0,  0,   0,  1,    1,   0,  0,  0,  0,   0,  0,  1,   1,     1]
    last = encode_sft(rec, tok, DataConfig())
    every = encode_sft(rec, tok, DataConfig(assistant_turns="all"))
    assert last["input_ids"] == every["input_ids"] == want_ids
    assert last["completion_mask"] == last_mask
    assert every["completion_mask"] == all_mask
    # a prompt cut from the left keeps the mask of the ids it kept
    cut = encode_sft(rec, tok, DataConfig(assistant_turns="all", max_prompt_length=8))
    assert cut["input_ids"] == want_ids[7:]
    assert cut["completion_mask"] == [0] + all_mask[8:]
    # plain text, or a conversation with one assistant turn, is the same either way
    one = SFTRecord(msgs[:2], [msgs[2]])
    assert encode_sft(one, tok, DataConfig(assistant_turns="all")) == encode_sft(one, tok, DataConfig())


def test_sft_assistant_turns_all_refuses_a_template_that_is_not_prefix_stable(make_tok):
    from rlhf.data.config import DataConfig
    from rlhf.data.errors import DataError
    from rlhf.data.records import SFTRecord
    from rlhf.data.tokenize import encode_sft

    # like templates that strip the reasoning of earlier replies: an assistant turn renders in
    # full only as the last message, so "up to this turn" is not a prefix of the conversation
    tok = make_tok(chat_template=(
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<|assistant|> a ' }}"
        "{% else %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' ' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"))
    msgs = _conv()
    last = encode_sft(SFTRecord(msgs[:-1], [msgs[-1]]), tok, DataConfig())
    assert sum(last["completion_mask"]) == 3  # fine thanks </s>
    with pytest.raises(DataError, match="assistant_turns: all needs a chat template that renders each"):
        encode_sft(SFTRecord(msgs[:-1], [msgs[-1]]), tok, DataConfig(assistant_turns="all", strict=True))
