"""Tiny models with random weights and a tokenizer trained on the spot: for tests and demos.

Nothing here downloads anything. A checkpoint made by :func:`make_tiny_checkpoint` is an
ordinary Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files), so the
same loading code path serves tiny test models and real hub checkpoints.

Parameter counts at the default size (hidden 64, 2 layers, 4 heads, intermediate 4 x hidden,
vocabulary 512, 512 positions), counting tied weights once; ``DEFAULT_PARAM_COUNTS`` holds the
same numbers and a test checks them:

==========  =========  ==================================================================
arch        params     notes
==========  =========  ==================================================================
llama       ~189k      RMSNorm, RoPE, SwiGLU, grouped-query attention (2 KV heads), untied
gpt2        ~166k      LayerNorm, learned positions, GELU MLP, Conv1D layers, tied
qwen2       ~156k      as llama with q/k/v biases, tied (like the small Qwen2 models)
gpt_neox    ~166k      parallel attention + MLP, partial rotary, biases, untied
mistral     ~189k      as llama (sliding-window attention, window >= positions here)
gemma       ~156k      as llama with GeGLU, scaled embeddings, tied
phi         ~166k      parallel attention + MLP, partial rotary, biased LM head, untied
==========  =========  ==================================================================
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "TINY_ARCHITECTURES",
    "DEFAULT_PARAM_COUNTS",
    "TINY_CHAT_TEMPLATE",
    "PAD_TOKEN",
    "EOS_TOKEN",
    "BOS_TOKEN",
    "train_tokenizer",
    "build_tiny_model",
    "make_tiny_checkpoint",
    "tiny_corpus",
    "read_texts",
]

TINY_ARCHITECTURES: tuple[str, ...] = ("llama", "gpt2", "qwen2", "gpt_neox", "mistral", "gemma", "phi")

# Exact counts for build_tiny_model(arch, 512) with the defaults (see the module docstring).
DEFAULT_PARAM_COUNTS: dict[str, int] = {
    "llama": 188_736,
    "gpt2": 165_632,
    "qwen2": 156_224,
    "gpt_neox": 165_632,
    "mistral": 188_736,
    "gemma": 155_968,
    "phi": 165_888,
}

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|startoftext|>"

# A minimal chat format for tests: role tags are plain text, each turn ends with EOS, so an
# assistant completion rendered by the template ends with the EOS token the policy must learn.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}" + EOS_TOKEN + "\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    *,
    chat_template: str | None = None,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (GPT-2 style pre-tokenization).

    Special tokens, in this id order: ``<|pad|>`` = 0 (pad), ``<|endoftext|>`` = 1 (eos),
    ``<|startoftext|>`` = 2 (bos). pad != eos on purpose, so that tests notice code that
    confuses padding with end of sequence. No unk token: every byte has a token, so any text
    round-trips (``decode(encode(s)) == s``). Nothing is added automatically when encoding
    (no BOS/EOS): the data layer decides where EOS goes. Padding is on the right by default.

    ``vocab_size`` is an upper bound: on a small corpus BPE may run out of merges, so use
    ``len(tokenizer)`` as the model's vocabulary size. It must be >= 259 (256 bytes + 3
    special tokens).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN]
    n_min = 256 + len(specials)
    if vocab_size < n_min:
        raise ValueError(f"vocab_size must be >= {n_min} (256 bytes + {len(specials)} special "
                         f"tokens) for a byte-level tokenizer (got {vocab_size})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,  # get ids 0, 1, 2 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        padding_side="right",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # else decode("a .") == "a." and round trips break
    )
    if chat_template is not None:
        out.chat_template = chat_template
    return out


def _arch_config(arch: str, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                 num_kv_heads: int, intermediate_size: int, max_position_embeddings: int,
                 ) -> dict[str, Any]:
    """transformers config kwargs for one architecture, every dropout set to 0."""
    head_dim = hidden_size // num_heads
    llama_like = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, head_dim=head_dim,
        max_position_embeddings=max_position_embeddings, attention_dropout=0.0,
    )
    if arch == "llama":
        return dict(llama_like, tie_word_embeddings=False)
    if arch == "mistral":
        return dict(llama_like, tie_word_embeddings=False, sliding_window=max_position_embeddings)
    if arch == "qwen2":
        return dict(llama_like, tie_word_embeddings=True, use_sliding_window=False)
    if arch == "gemma":
        return dict(llama_like, tie_word_embeddings=True)
    if arch == "gpt2":
        return dict(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
                    n_inner=intermediate_size, n_positions=max_position_embeddings,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                    tie_word_embeddings=True)
    if arch == "gpt_neox":
        return dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                    num_attention_heads=num_heads, intermediate_size=intermediate_size,
                    max_position_embeddings=max_position_embeddings, attention_dropout=0.0,
                    hidden_dropout=0.0, classifier_dropout=0.0, tie_word_embeddings=False)
    if arch == "phi":
        return dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                    num_attention_heads=num_heads, num_key_value_heads=num_heads,
                    intermediate_size=intermediate_size,
                    max_position_embeddings=max_position_embeddings, resid_pdrop=0.0,
                    embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHITECTURES)}")


def build_tiny_model(
    arch: str,
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    pad_token_id: int,
    eos_token_id: int,
    bos_token_id: int | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised causal LM of architecture ``arch`` (one of ``TINY_ARCHITECTURES``).

    Deterministic: the same arguments give bit-identical weights, and the global torch RNG is
    left untouched. Every dropout is 0. ``intermediate_size`` defaults to 4 x hidden;
    ``num_kv_heads`` (grouped-query attention, llama-family only) defaults to num_heads // 2
    when num_heads is even. Word embeddings are tied where the family usually ties them
    (gpt2, qwen2, gemma). Weights are fp32; returned in eval mode.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if num_kv_heads is None:
        num_kv_heads = num_heads // 2 if num_heads % 2 == 0 else num_heads
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    kwargs = _arch_config(arch, vocab_size, hidden_size, num_layers, num_heads, num_kv_heads,
                          intermediate_size or 4 * hidden_size, max_position_embeddings)
    config = AutoConfig.for_model(arch, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                                  bos_token_id=bos_token_id, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # The generation defaults must agree with the tokenizer, or generate() stops at the wrong id.
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = pad_token_id, eos_token_id, bos_token_id
    return model.eval()


def make_tiny_checkpoint(
    out_dir: str | Path,
    arch: str,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    chat_template: str | None = None,
    **model_kwargs: Any,
) -> Path:
    """Train a tokenizer on ``texts``, build a matching tiny model, save both to ``out_dir``.

    The folder loads with ``load_causal_lm(ModelConfig(name_or_path=out_dir))`` and with
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` / ``AutoTokenizer.from_pretrained``.
    ``model_kwargs`` go to :func:`build_tiny_model`. Returns ``Path(out_dir)``.
    """
    from rlhf.models.load import save_model

    max_len = model_kwargs.get("max_position_embeddings", 512)
    tokenizer = train_tokenizer(texts, vocab_size, chat_template=chat_template,
                                model_max_length=max_len)
    model = build_tiny_model(arch, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.bos_token_id, **model_kwargs)
    return save_model(model, tokenizer, out_dir)


_SUBJECTS = ["the cat", "a dog", "my friend", "the robot", "our teacher", "a small bird", "the model"]
_VERBS = ["likes", "sees", "writes", "finds", "reads", "wants", "builds"]
_OBJECTS = ["a red ball", "the answer", "some bread", "a long story", "the green door",
            "three apples", "a quiet song"]
_ENDS = [".", "!", "?", ", then rests.", " every day.", " again."]


def read_texts(path: str | Path, fields: Sequence[str] | None = None) -> list[str]:
    """Texts to train a tiny tokenizer on: the lines of a .txt file, or from a .jsonl file
    either every string field of each row (``fields`` None) or the named fields of each row
    joined into one text. Bad lines stop with ``file:line: ...``."""
    import json

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    lines = path.read_text().splitlines()
    if path.suffix != ".jsonl":
        return lines
    texts: list[str] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object")
        if fields is None:
            texts += [v for v in row.values() if isinstance(v, str)]
        else:
            texts.append("".join(str(row.get(f, "")) for f in fields))
    return texts


def tiny_corpus(n: int = 200, seed: int = 0) -> list[str]:
    """``n`` short, deterministic English-like sentences to train a tiny tokenizer on."""
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            f"{rng.choice(_ENDS)}" for _ in range(n)]
