"""The dimensions of the real models the shipped recipes name, and random-weight stand-ins for them.

A recipe for ``Qwen/Qwen2.5-0.5B`` is tested here without downloading it: :func:`stand_in` builds
a random-weight checkpoint of the same architecture family, either shrunk (tiny dimensions: the
recipe's code path runs in seconds) or at the real dimensions (bench/recipe_step.py measures a
step's time and memory with it). The tokenizer is trained on the spot, so its vocabulary is
small; at real dimensions the model keeps the real vocabulary size (the output layer's cost is
then the real one; token ids beyond the tokenizer's are simply never produced as inputs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Shape", "REAL_SHAPES", "stand_in"]


@dataclass(frozen=True)
class Shape:
    arch: str  # a rlhf.models.tiny architecture (transformers model_type)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int


# From each model's config.json on the Hugging Face Hub.
_QWEN25_05B = Shape("qwen2", 896, 24, 14, 2, 4864, 151936)
_QWEN25_15B = Shape("qwen2", 1536, 28, 12, 2, 8960, 151936)
_LLAMA32_1B = Shape("llama", 2048, 16, 32, 8, 8192, 128256)
REAL_SHAPES: dict[str, Shape] = {
    "Qwen/Qwen2.5-0.5B": _QWEN25_05B, "Qwen/Qwen2.5-0.5B-Instruct": _QWEN25_05B,
    "Qwen/Qwen2.5-1.5B": _QWEN25_15B, "Qwen/Qwen2.5-1.5B-Instruct": _QWEN25_15B,
    "meta-llama/Llama-3.2-1B": _LLAMA32_1B, "meta-llama/Llama-3.2-1B-Instruct": _LLAMA32_1B,
}


def stand_in(model_id: str, out: str | Path, texts: Iterable[str], *, shrink: bool = True,
             max_position_embeddings: int = 2048, seed: int = 0) -> Path:
    """A random-weight checkpoint standing in for ``model_id``, with a tokenizer trained on ``texts``
    (and the default chat template, as chat models have one). ``shrink``: hidden 64, 2 layers,
    4 heads (2 key/value heads: grouped-query attention as in the family); else the real shape."""
    from rlhf.models.load import save_model
    from rlhf.models.tiny import build_tiny_model, train_tokenizer

    if model_id not in REAL_SHAPES:
        raise ValueError(f"no known shape for {model_id!r}; known: {', '.join(REAL_SHAPES)}")
    s = REAL_SHAPES[model_id]
    tok = train_tokenizer(list(texts), 512, model_max_length=max_position_embeddings)
    from rlhf.data.tokenize import DEFAULT_CHAT_TEMPLATE
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    dims = (dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
            if shrink else dict(hidden_size=s.hidden_size, num_layers=s.num_layers, num_heads=s.num_heads,
                                num_kv_heads=s.num_kv_heads, intermediate_size=s.intermediate_size))
    vocab = len(tok) if shrink else s.vocab_size
    model = build_tiny_model(s.arch, vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             bos_token_id=tok.bos_token_id, max_position_embeddings=max_position_embeddings,
                             seed=seed, **dims)
    return save_model(model, tok, out)
