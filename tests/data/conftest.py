"""Fixtures for the data tests: a word-level tokenizer whose ids can be written by hand."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# id = position in this list. Specials first; "</s>" (1) is EOS, "<pad>" (0) is padding.
VOCAB = [
    "<pad>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "###", "user",
    "assistant", "system", "hello", "world", "hi", "there", "how", "are", "you", "fine",
    "thanks", "good", "bad", "Human:", "Assistant:", "a", "b", "c", "d", "e", "f", "g", "h",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "<s>",
]
ID = {w: i for i, w in enumerate(VOCAB)}


def _ids(text: str) -> list[int]:
    return [ID[w] for w in text.split()]


def make_tokenizer(bos: bool = False, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """WordLevel + WhitespaceSplit: every whitespace-separated word is one token. Special
    tokens are matched before splitting, so "there</s>" is two tokens. With ``bos=True`` the
    tokenizer prepends "<s>" when ``add_special_tokens=True`` (like Llama's)."""
    tok = Tokenizer(models.WordLevel(vocab=ID, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", ID["<s>"])])
    kw = {"bos_token": "<s>"} if bos else {}
    t = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                unk_token="<unk>", **kw)
    if chat_template is not None:
        t.chat_template = chat_template
    return t


@pytest.fixture
def tok() -> PreTrainedTokenizerFast:
    """The word-level tokenizer, without BOS or chat template."""
    return make_tokenizer()


@pytest.fixture
def make_tok():
    """``make_tok(bos=False, chat_template=None)``: a fresh word-level tokenizer."""
    return make_tokenizer


@pytest.fixture
def ids():
    """``ids("hi there </s>") == [12, 13, 1]``: ids of whitespace-separated words, looked up
    in VOCAB by hand (no tokenizer involved)."""
    return _ids
