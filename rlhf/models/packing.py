"""Whether a model may run on the packed layout: decided by evidence, once per model class.

The packed layout (:class:`rlhf.data.collate.PackedLayout`: sequences back to back in one row,
``position_ids`` restarting at 0 per sequence, no ``attention_mask``) gives each sequence its own
numbers only when the model takes positions from ``position_ids`` *and* builds the
block-diagonal causal mask from them (transformers' ``find_packed_sequence_indices``). Llama,
Qwen, GPT-2, GPT-NeoX... do; OPT takes positions from the attention mask, BLOOM and MPT take
ALiBi from it, BioGPT numbers positions itself: there a packed row silently leaks attention
across sequences and shifts positions (0.4-0.9 nats per token on tiny models).

So no architecture is assumed. :func:`packing_unsupported` runs a probe the first time it sees a
model class: three short sequences of different lengths, packed in one row and each run alone,
through the model's trunk (the module a causal LM and a reward model of the same family share),
without gradient, in eval mode, with fixed token ids (no randomness, so no RNG state moves). It
compares the final hidden states token by token and accepts the layout when every token agrees
to within float rounding of the model's dtype (see :func:`tolerance`). The verdict is cached per
(trunk class, attention implementation). :func:`use_packed` is what the training paths call:
it returns False, with ONE logged line per class naming the model type and the measured
difference, where packing would be wrong, and the caller runs the padded batch instead.

tests/conformance/test_conformance.py keeps the probe honest: for every architecture of the
conformance suite, the probe's verdict must match an independent float64 comparison of packed
and one-sequence-at-a-time log-probs.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

__all__ = ["packing_unsupported", "use_packed", "tolerance", "probe_difference", "clear_cache", "trunk_of"]

logger = logging.getLogger(__name__)

# Probe sequence lengths: different, so a model that numbers positions over the whole row (OPT)
# or attends across sequences (ALiBi from an all-ones mask) is caught on the 2nd and 3rd ones.
PROBE_LENGTHS = (5, 9, 4)

# (trunk class, attention implementation, parameter dtype) -> None (packing is exact) or the
# reason it is not.
_Key = tuple[type, str, "torch.dtype | None"]
_VERDICTS: dict[_Key, str | None] = {}
_LOGGED: set[_Key] = set()


def clear_cache() -> None:
    """Forget every verdict (tests)."""
    _VERDICTS.clear()
    _LOGGED.clear()


def _inner(model: Any) -> nn.Module:
    """The transformers model inside a ReferenceModel / DDP / peft wrapper."""
    from rlhf.models.load import ReferenceModel, unwrap_model

    if isinstance(model, ReferenceModel):
        model = model.module
    model = getattr(model, "module", model)  # DistributedDataParallel
    return unwrap_model(model)


def trunk_of(model: Any) -> nn.Module:
    """The base transformer (``model.model``, ``model.transformer``...) of a causal LM or a
    scalar model: what computes positions and the attention mask. A module that is not a
    transformers model (a custom wrapper) is its own trunk."""
    base = _inner(model)
    prefix = getattr(base, "base_model_prefix", None)
    return getattr(base, prefix) if prefix and isinstance(getattr(base, prefix, None), nn.Module) else base


def tolerance(dtype: torch.dtype) -> float:
    """Largest per-token relative difference ``||h_packed - h_alone|| / ||h_alone||`` accepted as
    float rounding: sqrt(eps) of the dtype (half its significant digits): 3.5e-4 in fp32, 0.088
    in bf16, 0.031 in fp16, 1.5e-8 in fp64.

    Measured on the 15 conformance architectures (tests/conformance: tiny models, weights scaled
    so attention is far from uniform): exact layouts differ by <= 5e-7 in fp32 and <= 0.011 in
    bf16 (kernels reduce in another order); wrong ones by 0.134 (BLOOM) and 0.80 (OPT) in both.
    """
    return float(torch.finfo(dtype).eps) ** 0.5


def _probe_ids(vocab_size: int, device: torch.device) -> list[torch.Tensor]:
    """Fixed, distinct token ids per probe sequence (a stride through the vocabulary)."""
    out, start = [], 3
    for n in PROBE_LENGTHS:
        ids = (torch.arange(start, start + n, device=device) * 7919) % max(vocab_size, 1)
        out.append(ids)
        start += n
    return out


@torch.no_grad()
def probe_difference(model: Any) -> float:
    """Max over tokens of ``||h_packed - h_alone|| / ||h_alone||`` on the probe sequences (the
    trunk's final hidden states). Runs in eval mode without gradient; restores the modules'
    train/eval flags. Raises what the model raises when it cannot take the packed inputs."""
    trunk = trunk_of(model)
    param = next(trunk.parameters())
    seqs = _probe_ids(_vocab_size(trunk), param.device)
    with_pos = "position_ids" in inspect.signature(trunk.forward).parameters
    modes = [(m, m.training) for m in trunk.modules()]
    trunk.eval()
    try:
        def run(ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            kwargs: dict[str, Any] = {"input_ids": ids[None], "use_cache": False}
            if with_pos:
                kwargs["position_ids"] = pos[None]
            out = trunk(**kwargs)
            hidden = getattr(out, "last_hidden_state", None)
            return (out.logits if hidden is None else hidden)[0].float()  # (n, H), or (n, V) for a wrapper

        alone = [run(s, torch.arange(len(s), device=s.device)) for s in seqs]
        packed = run(torch.cat(seqs), torch.cat([torch.arange(len(s), device=s.device) for s in seqs]))
    finally:
        for m, training in modes:
            m.training = training
    ref = torch.cat(alone)  # (n, H)
    rel = (packed - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-30)
    return float(rel.max())


def _vocab_size(trunk: nn.Module) -> int:
    config = getattr(trunk, "config", None)
    if config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        if getattr(text, "vocab_size", None):
            return int(text.vocab_size)
    emb = next((m for m in trunk.modules() if isinstance(m, nn.Embedding)), None)
    return emb.num_embeddings if emb is not None else 1


def _key(model: Any) -> _Key:
    # The dtype is part of the key: the probe's tolerance is the dtype's rounding, so a verdict
    # reached in bf16 (tolerance 0.088) must not be reused for the same class in fp32 (3.5e-4).
    trunk = trunk_of(model)
    param = next(trunk.parameters(), None)
    return (type(trunk), str(getattr(getattr(trunk, "config", None), "_attn_implementation", None)),
            None if param is None else param.dtype)


def packing_unsupported(model: Any) -> str | None:
    """None when ``model`` (a causal LM or scalar model, possibly wrapped) gives each sequence of a
    packed row the numbers it gets alone, else the reason. Probed once per (trunk class,
    attention implementation), then cached."""
    key = _key(model)
    if key in _VERDICTS:
        return _VERDICTS[key]
    trunk = trunk_of(model)
    dtype = next(trunk.parameters()).dtype
    model_type = getattr(getattr(trunk, "config", None), "model_type", type(trunk).__name__)
    try:
        diff = probe_difference(model)
    except Exception as e:  # a model that cannot take the packed inputs at all
        verdict: str | None = (f"model_type {model_type!r} ({key[0].__name__}, attention {key[1]}) cannot "
                               f"run packed rows: {type(e).__name__}: {e}")
    else:
        tol = tolerance(dtype)
        verdict = None if diff <= tol else (
            f"model_type {model_type!r} ({key[0].__name__}, attention {key[1]}): packed and "
            f"one-sequence-at-a-time hidden states differ by {diff:.3g} (relative) on a probe, more "
            f"than {dtype} rounding ({tol:.2g}); it does not build its attention mask and positions "
            f"from restarting position_ids")
    _VERDICTS[key] = verdict
    return verdict


def use_packed(requested: bool, *models: Any) -> bool:
    """``requested`` and every model in ``models`` (None entries skipped) supports the packed
    layout. The first time a model class is refused, one warning line says why and that the
    padded batch is used instead."""
    if not requested:
        return False
    ok = True
    for m in models:
        if m is None:
            continue
        reason = packing_unsupported(m)
        if reason is not None:
            ok = False
            key = _key(m)
            if key not in _LOGGED:
                _LOGGED.add(key)
                logger.warning("packed layout off, using padded batches: %s", reason)
    return ok
