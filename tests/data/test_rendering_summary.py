"""The one line each stage prints about how its records reach the model (rendering_summary)."""

from __future__ import annotations

from rlhf.data.config import DataConfig
from rlhf.data.records import PreferenceRecord, SFTRecord
from rlhf.data.tokenize import rendering_summary

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_plain_and_chat_records_with_and_without_text_as_chat(make_tok):
    tok = make_tok(chat_template=CHATML)
    plain = [SFTRecord(prompt="hi", completion="yo")] * 2
    chat = [SFTRecord(prompt=[{"role": "user", "content": "hi"}], completion="yo")]
    assert rendering_summary(plain + chat, tok, DataConfig()) == (
        "rendering: 1 chat record(s) in the tokenizer's chat template; "
        "2 plain-text record(s) as raw text (data.text_as_chat false)")
    assert rendering_summary(plain, tok, DataConfig(text_as_chat=True)) == (
        "rendering: 2 plain-text record(s) as a user message in the tokenizer's chat template (data.text_as_chat)")
    assert "raw text (data.chat_template none)" in rendering_summary(plain, tok, DataConfig(chat_template="none",
                                                                                             text_as_chat=True))


def test_default_template_when_the_tokenizer_has_none(make_tok):
    pairs = [PreferenceRecord(prompt="q", chosen=[{"role": "assistant", "content": "a"}], rejected="b")]
    assert "1 chat record(s) in the default chat template" in rendering_summary(pairs, make_tok(), DataConfig())
