"""Exact token ids and completion masks for hand-checked examples (word-level tokenizer: one
word = one token, ids listed in conftest.VOCAB; "</s>" = 1 is EOS)."""

from __future__ import annotations

import itertools

import pytest

from rlhf.data import (
    DEFAULT_CHAT_TEMPLATE,
    DataConfig,
    DataError,
    PreferenceRecord,
    PromptRecord,
    SFTRecord,
    SkipReport,
    UnpairedRecord,
    encode_preference,
    encode_prompt,
    encode_records,
    encode_sft,
    encode_unpaired,
)

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731

# A tokenizer-owned template different from the default: "### role\ncontent\n" per message,
# no EOS, generation prompt "### assistant\n".
OWN = ("{% for m in messages %}{{ '### ' + m['role'] + '\\n' + m['content'] + '\\n' }}{% endfor %}"
       "{% if add_generation_prompt %}{{ '### assistant\\n' }}{% endif %}")


def test_plain_text_is_concatenated_with_eos(tok):
    out = encode_sft(SFTRecord("hello world", "hi there"), tok, DataConfig())
    # hello world | hi there </s>
    assert out == {"input_ids": [10, 11, 12, 13, 1], "completion_mask": [0, 0, 1, 1, 1]}


def test_default_template_renders_role_headers_and_eos(tok):
    rec = SFTRecord([U("hello world")], [A("hi there")])
    out = encode_sft(rec, tok, DataConfig())
    # prompt text "<|user|>\nhello world</s>\n<|assistant|>\n", completion text "hi there</s>"
    # (the template's trailing "\n" after EOS is dropped, no second EOS appended)
    assert out["input_ids"] == [4, 10, 11, 1, 5, 12, 13, 1]
    assert out["completion_mask"] == [0, 0, 0, 0, 0, 1, 1, 1]
    rendered = tok.apply_chat_template([U("hello world"), A("hi there")], chat_template=DEFAULT_CHAT_TEMPLATE,
                                       tokenize=False)
    assert rendered == "<|user|>\nhello world</s>\n<|assistant|>\nhi there</s>\n"


def test_multi_turn_messages_train_only_the_last_reply(tok, ids):
    rec = SFTRecord([S("good"), U("hi"), A("hello"), U("how are you")], [A("fine thanks")])
    out = encode_sft(rec, tok, DataConfig())
    want = ids("<|system|> good </s> <|user|> hi </s> <|assistant|> hello </s> <|user|> how are you </s> "
               "<|assistant|> fine thanks </s>")
    assert out["input_ids"] == want
    assert out["completion_mask"] == [0] * (len(want) - 3) + [1, 1, 1]


def test_the_tokenizers_own_template_wins_in_auto_mode(make_tok):
    tok = make_tok(chat_template=OWN)
    rec = SFTRecord([U("hello world")], "hi there")  # a text completion becomes the assistant turn
    out = encode_sft(rec, tok, DataConfig())
    # "### user\nhello world\n### assistant\n" | "hi there\n" + appended EOS
    assert out["input_ids"] == [6, 7, 10, 11, 6, 8, 12, 13, 1]
    assert out["completion_mask"] == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    forced = encode_sft(rec, tok, DataConfig(chat_template="default"))
    assert forced["input_ids"] == [4, 10, 11, 1, 5, 12, 13, 1]


def test_none_mode_rejects_chat_records_and_keeps_text_plain(tok):
    cfg = DataConfig(chat_template="none", text_as_chat=True)
    assert encode_sft(SFTRecord("hello", "hi"), tok, cfg)["input_ids"] == [10, 12, 1]
    with pytest.raises(DataError) as e:
        encode_sft(SFTRecord([U("hello")], [A("hi")], ("f.jsonl", 3)), tok, cfg)
    assert str(e.value).startswith("f.jsonl:3: prompt: plain text: data.chat_template is 'none'")


def test_text_as_chat_wraps_plain_text_in_the_template(tok):
    a = encode_sft(SFTRecord("hello world", "hi there"), tok, DataConfig(text_as_chat=True))
    b = encode_sft(SFTRecord([U("hello world")], [A("hi there")]), tok, DataConfig())
    assert a == b


def test_bos_is_added_once(make_tok):
    tok = make_tok(bos=True)
    assert encode_sft(SFTRecord("hello", "hi"), tok, DataConfig())["input_ids"] == [39, 10, 12, 1]
    # a template that writes BOS itself gets no second one
    tok.chat_template = "{{ bos_token }}" + OWN
    assert encode_sft(SFTRecord([U("hello")], "hi"), tok, DataConfig())["input_ids"] == [39, 6, 7, 10, 6, 8, 12, 1]


def test_add_eos_false_and_full_loss(tok):
    out = encode_sft(SFTRecord("hello world", "hi there"), tok, DataConfig(add_eos=False))
    assert out == {"input_ids": [10, 11, 12, 13], "completion_mask": [0, 0, 1, 1]}
    out = encode_sft(SFTRecord("hello world", "hi there"), tok, DataConfig(completion_only_loss=False))
    assert out == {"input_ids": [10, 11, 12, 13, 1], "completion_mask": [0, 1, 1, 1, 1]}


def test_eos_already_in_the_text_is_not_doubled(tok):
    assert encode_sft(SFTRecord("hello", "hi</s>"), tok, DataConfig())["input_ids"] == [10, 12, 1]


def test_hh_text_tokenizes_at_the_split(tok):
    rec = PreferenceRecord("\n\nHuman: hello\n\nAssistant:", " hi there", " bad")
    out = encode_preference(rec, tok, DataConfig())
    assert out["chosen_input_ids"] == [21, 10, 22, 12, 13, 1]
    assert out["chosen_completion_mask"] == [0, 0, 0, 1, 1, 1]
    assert out["rejected_input_ids"] == [21, 10, 22, 20, 1]
    assert out["rejected_completion_mask"] == [0, 0, 0, 1, 1]
    assert out["margin"] is None


# --------------------------------------------------------------------------- truncation

LONG_PROMPT = "a b c d e f g h"  # 8 tokens, ids 23..30
LONG_COMPLETION = "one two three four five six"  # 6 tokens + EOS = 7, ids 31..36


@pytest.mark.parametrize("kw, want_prompt, want_completion", [
    # max_prompt_length None, L=6: prompt budget 6 - min(7, 6 // 2) = 3, completion gets 3
    ({}, "f g h", "one two three"),
    ({"prompt_truncation": "right"}, "a b c", "one two three"),
    ({"completion_truncation": "left"}, "f g h", "five six </s>"),
    ({"max_prompt_length": 2}, "g h", "one two three four"),
    ({"max_prompt_length": 5}, "d e f g h", "one"),
])
def test_truncation_sides_and_budgets(tok, kw, want_prompt, want_completion, ids):
    out = encode_sft(SFTRecord(LONG_PROMPT, LONG_COMPLETION), tok, DataConfig(max_length=6, **kw))
    assert out["input_ids"] == ids(want_prompt) + ids(want_completion)
    n_c = len(want_completion.split())
    assert out["completion_mask"] == [0] * (6 - n_c) + [1] * n_c


def test_short_sides_are_not_truncated_needlessly(tok, ids):
    # long prompt, short completion "hi </s>": the prompt may use 6 - 2 = 4 tokens
    out = encode_sft(SFTRecord(LONG_PROMPT, "hi"), tok, DataConfig(max_length=6))
    assert out["input_ids"] == ids("e f g h hi </s>")
    # short prompt, long completion: the completion takes all the room left
    out = encode_sft(SFTRecord("hello", LONG_COMPLETION), tok, DataConfig(max_length=6))
    assert out["input_ids"] == ids("hello one two three four five")


def test_truncation_invariants_over_a_grid(tok, ids):
    """Whatever the lengths: total <= max_length, prompt <= max_prompt_length, >= 1 target,
    mask[0] == 0, and the kept tokens are a prefix/suffix of the untruncated ones."""
    words = ["a", "b", "c", "d", "e", "f", "g", "h"]
    for n_p, n_c, L, mpl in itertools.product([1, 3, 8], [1, 4, 8], [2, 3, 7, 12], [None, 1, 2, 6]):
        if mpl is not None and mpl >= L:
            continue
        cfg = DataConfig(max_length=L, max_prompt_length=mpl)
        p, c = " ".join(words[:n_p]), " ".join(words[:n_c])
        out = encode_sft(SFTRecord(p, c), tok, cfg)
        x, m = out["input_ids"], out["completion_mask"]
        n_tgt = sum(m)
        kept_p, kept_c = x[: len(x) - n_tgt], x[len(x) - n_tgt:]
        assert len(x) <= L and m[0] == 0 and n_tgt >= 1
        assert mpl is None or len(kept_p) <= mpl
        assert kept_p == ids(p)[len(ids(p)) - len(kept_p):]  # prompt keeps its end
        assert kept_c == (ids(c) + [1])[: len(kept_c)]  # completion keeps its start
        assert len(x) == min(L, n_p + n_c + 1) or (mpl is not None and len(kept_p) == mpl)


def test_preference_shares_the_prompt_truncated_for_the_longer_completion(tok, ids):
    rec = PreferenceRecord(LONG_PROMPT, LONG_COMPLETION, "hi", margin=0.5)
    out = encode_preference(rec, tok, DataConfig(max_length=6))
    assert out["chosen_input_ids"] == ids("f g h one two three")
    assert out["rejected_input_ids"] == ids("f g h hi </s>")
    assert out["rejected_completion_mask"] == [0, 0, 0, 1, 1]
    assert out["margin"] == 0.5


def test_unpaired_and_prompt_encoders(tok, ids):
    out = encode_unpaired(UnpairedRecord("hello", "hi", False), tok, DataConfig())
    assert out == {"input_ids": [10, 12, 1], "completion_mask": [0, 1, 1], "label": False}
    assert encode_prompt(PromptRecord([U("hello world")]), tok, DataConfig()) == {"prompt_input_ids": [4, 10, 11, 1, 5]}
    assert encode_prompt(PromptRecord(LONG_PROMPT), tok, DataConfig(max_length=4)) == {"prompt_input_ids": ids("f g h")}
    assert encode_prompt(PromptRecord(LONG_PROMPT), tok, DataConfig(max_length=6, max_prompt_length=2,
                                                                     prompt_truncation="right")) == {
        "prompt_input_ids": ids("a b")}


def test_a_template_that_does_not_prefix_the_conversation_is_reported(tok):
    # generation prompt "### assistant:\n" but turns rendered as "### assistant\n": no exact split
    tok.chat_template = OWN.replace("'### assistant\\n'", "'### assistant:\\n'")
    recs = [SFTRecord([U("hello")], [A("hi")], ("f.jsonl", 4)), SFTRecord("hello", "hi", ("f.jsonl", 5))]
    report = SkipReport()
    out = encode_records(recs, tok, DataConfig(max_skip_fraction=1.0), report)  # 1 bad in 2 on purpose
    assert out == [{"input_ids": [10, 12, 1], "completion_mask": [0, 1, 1]}]
    assert report.counts == {"cannot be tokenized": 1} and report.examples["cannot be tokenized"] == [("f.jsonl", 4)]
    with pytest.raises(DataError, match=r"^f\.jsonl:4: completion: a chat template that renders the prompt"):
        encode_records(recs, tok, DataConfig(strict=True))


def test_missing_eos_is_a_clear_error(make_tok):
    tok = make_tok()
    tok.eos_token = None
    with pytest.raises(ValueError, match="tokenizer has no eos_token"):
        encode_sft(SFTRecord("hello", "hi"), tok, DataConfig())
    assert encode_sft(SFTRecord("hello", "hi"), tok, DataConfig(add_eos=False))["input_ids"] == [10, 12]


def test_text_the_template_writes_after_eos_is_not_a_target(make_tok):
    # Like "<|im_end|>\n" in ChatML: this template closes each turn with EOS and then writes a
    # separator word "a". The reply the model must learn ends at EOS; the separator belongs to
    # no reply, so it is cut (and no second EOS is appended).
    tok = make_tok(chat_template="{% for m in messages %}{{ m['role'] + ' ' + m['content'] + eos_token + ' a ' }}"
                                 "{% endfor %}{% if add_generation_prompt %}{{ 'assistant ' }}{% endif %}")
    out = encode_sft(SFTRecord([U("hello")], [A("hi")]), tok, DataConfig())
    # prompt "user hello</s> a assistant " | completion "hi</s>"
    assert out["input_ids"] == [7, 10, 1, 23, 8, 12, 1]
    assert out["completion_mask"] == [0, 0, 0, 0, 0, 1, 1]
    raw = encode_sft(SFTRecord([U("hello")], [A("hi")]), tok, DataConfig(add_eos=False))
    assert raw["input_ids"] == [7, 10, 1, 23, 8, 12, 1, 23]  # add_eos=False: the template's text as is
