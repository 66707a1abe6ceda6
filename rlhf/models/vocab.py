"""Do two tokenizers share a vocabulary? And which tokenizers does a reward source encode with?

A policy and its reward model often come from different families (a Llama policy scored by
another family's reward model). Token ids then mean different strings, so nothing may hand one
model's ids to the other: reward models score text (the rollout decodes each completion, and
:class:`rlhf.rewards.ModelReward` re-encodes prompt and completion with its own tokenizer and the
encoding, chat template included, it was trained with), and a critic initialised from such a
reward model, which would read the policy's ids, is refused (rlhf/recipes/ppo.py).

Vocabularies are compared as ``token string -> id`` maps (added and special tokens included),
not by size: two tokenizers of the same size can still disagree on every id.
"""

from __future__ import annotations

from typing import Any

__all__ = ["vocabulary_difference", "reward_model_tokenizers"]


def vocabulary_difference(a: Any, b: Any) -> str | None:
    """None when tokenizers ``a`` and ``b`` map the same strings to the same ids, else a short
    description of how they differ (sizes, and one token that differs)."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va == vb:
        return None
    if len(va) != len(vb):
        return f"{len(va)} vs {len(vb)} tokens"
    for tok, i in va.items():
        if vb.get(tok) != i:
            return f"same size {len(va)}, but {tok!r} is id {i} in one and {vb.get(tok)} in the other"
    return "the vocabularies differ"  # pragma: no cover (equal sizes, a subset of equal maps: equal)


def reward_model_tokenizers(source: Any) -> list[tuple[str, Any]]:
    """``(name, tokenizer)`` of every reward model inside a reward source (sums and safety gating
    included); none for Python functions."""
    from rlhf.rewards import ModelReward

    if isinstance(source, ModelReward):
        return [(str(source.path), source.tokenizer)]
    out: list[tuple[str, Any]] = []
    for child in list(getattr(source, "sources", [])) + [getattr(source, k, None) for k in ("helpfulness", "safety")]:
        if child is not None:
            out += reward_model_tokenizers(child)
    return out
