"""``rlhf tiny-model``: write a tiny random-weight model and its locally trained tokenizer.

For trying the stages without downloading anything; the folder is an ordinary Hugging Face
checkpoint, so every stage loads it as it would load a hub model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str]) -> int:
    from rlhf.models.tiny import TINY_ARCHITECTURES, make_tiny_checkpoint, read_texts, tiny_corpus

    p = argparse.ArgumentParser(prog="rlhf tiny-model", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to create (must not exist)")
    p.add_argument("--arch", default="llama", choices=TINY_ARCHITECTURES)
    p.add_argument("--texts", help="train the tokenizer on this file: .txt lines, or .jsonl whose string fields "
                                   "are used; default: a built-in corpus")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--max-position-embeddings", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists():
        p.error(f"--out {out} already exists; not overwriting it")
    try:
        texts = read_texts(a.texts) if a.texts else tiny_corpus()
    except ValueError as e:
        p.error(f"--texts: {e}")
    make_tiny_checkpoint(out, a.arch, texts, vocab_size=a.vocab_size, hidden_size=a.hidden_size,
                         num_layers=a.num_layers, num_heads=a.num_heads,
                         max_position_embeddings=a.max_position_embeddings, seed=a.seed)
    print(f"wrote a tiny {a.arch} model and tokenizer to {out}")
    return 0
