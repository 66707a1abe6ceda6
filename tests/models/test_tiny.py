"""The tiny-model builder: tokenizer properties, determinism, documented sizes, save/reload."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.models.config import ModelConfig
from rlhf.models.load import count_parameters, disable_dropout, load_causal_lm, load_tokenizer
from rlhf.models.tiny import (
    DEFAULT_PARAM_COUNTS,
    TINY_ARCHITECTURES,
    TINY_CHAT_TEMPLATE,
    build_tiny_model,
    train_tokenizer,
)

AWKWARD_TEXTS = [
    "Hello, world!",
    "  two leading spaces, a space before a dot . and trailing  ",
    "tabs\tand\nnewlines\r\n and unicode: héllo wörld, 日本語, emoji 🎉👍🏽",
    "numbers 3.14159 and symbols <>&|{}~`",
    "words never seen in training: xylophone quizzical",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus, 512, model_max_length=256)


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_tokenizer_round_trips_any_text(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    # Nothing special is added on encode: the data layer places EOS itself.
    assert tokenizer.pad_token_id not in ids and tokenizer.eos_token_id not in ids


def test_tokenizer_special_tokens_and_defaults(tokenizer):
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) == (
        "<|pad|>", "<|endoftext|>", "<|startoftext|>")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token is None
    assert tokenizer.padding_side == "right"
    assert tokenizer.model_max_length == 256
    # The corpus is small, so BPE stops before 512; every byte still has a token.
    assert 259 < len(tokenizer) <= 512
    batch = tokenizer(["a", "the cat likes a red ball"], padding=True)
    first = batch["input_ids"][0]
    assert first[-1] == tokenizer.pad_token_id and batch["attention_mask"][0][-1] == 0


def test_tokenizer_learns_merges_from_the_corpus(tokenizer):
    """A frequent corpus word needs fewer tokens than its byte count; an unseen word does not."""
    assert len(tokenizer(" apples")["input_ids"]) < len(b" apples")
    assert len(tokenizer("zqxj")["input_ids"]) == 4


def test_tokenizer_rejects_a_vocab_smaller_than_the_bytes(corpus):
    with pytest.raises(ValueError, match="vocab_size must be >= 259"):
        train_tokenizer(corpus, 100)


def test_chat_template_renders(corpus):
    tok = train_tokenizer(corpus, 300, chat_template=TINY_CHAT_TEMPLATE)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|>\nhi<|endoftext|>\n<|assistant|>\nhello<|endoftext|>\n"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nhi<|endoftext|>\n<|assistant|>\n"


def _build(arch, seed=0):
    return build_tiny_model(arch, 300, pad_token_id=0, eos_token_id=1, bos_token_id=2, seed=seed)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_builder_is_deterministic_and_leaves_global_rng_alone(arch):
    state = torch.random.get_rng_state()
    a, b, c = _build(arch), _build(arch), _build(arch, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa[next(k for k in sa if "embed" in k or "wte" in k)],
                           sc[next(k for k in sc if "embed" in k or "wte" in k)])


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_documented_sizes_dropout_and_tying(arch):
    model = build_tiny_model(arch, 512, pad_token_id=0, eos_token_id=1)
    assert count_parameters(model)["total"] == DEFAULT_PARAM_COUNTS[arch]
    assert disable_dropout(model) == 0  # nothing left to switch off
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert tied == (arch in ("gpt2", "qwen2", "gemma"))
    assert (model.config.pad_token_id, model.config.eos_token_id) == (0, 1)
    assert model.generation_config.pad_token_id == 0 and model.generation_config.eos_token_id == 1


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_checkpoint_reloads_with_identical_logits(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    tok = AutoTokenizer.from_pretrained(path)
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    fresh = build_tiny_model(arch, len(tok), pad_token_id=0, eos_token_id=1, bos_token_id=2)
    batch = dict(tok(["The cat likes a red ball.", "Our teacher builds"], padding=True,
                     return_tensors="pt"))
    with torch.no_grad():
        expected = fresh(**batch).logits  # (2, T, V)
        via_hf = AutoModelForCausalLM.from_pretrained(path).eval()(**batch).logits
        via_us = load_causal_lm(ModelConfig(name_or_path=str(path)), for_training=False)(**batch).logits
    assert torch.equal(via_hf, expected)
    assert torch.equal(via_us, expected)
    assert load_tokenizer(ModelConfig(name_or_path=str(path)))("The cat")["input_ids"] == tok("The cat")["input_ids"]
