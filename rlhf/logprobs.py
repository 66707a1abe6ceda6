"""Per-token log-probabilities of the tokens that were actually there.

``log p(x_t | x_<t) = logit[x_t] - logsumexp(logits)``: gathering one logit and subtracting the
log-partition avoids materialising a full (B, T, V) ``log_softmax`` (a second vocab-sized
tensor, and its gradient) only to read one entry per position. The logsumexp is taken in
float32 even for bf16 logits, since bf16 has ~3 significant digits and log-probs of long
sequences are sums of many terms.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, overload

import torch

if TYPE_CHECKING:
    from rlhf.data.collate import PackedLayout
    from rlhf.models.lean import LeanLM

__all__ = ["token_logps", "shifted_token_logps", "entropy_from_logits", "entropy_from_logp", "forward_logps",
           "sequence_logps", "packed_completion_logits", "packed_sequence_logps", "bucketed_sequence_logps",
           "chunked_head_logps", "target_logps", "CHUNK_ELEMENTS"]


def token_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of ``targets`` under ``softmax(logits / temperature)``.

    logits: (..., V); targets: (...) long. Returns (...) float32.
    Rows are processed one at a time along the batch when the batch is large, to bound the
    float32 copy of the logits to one row.
    """
    if logits.dim() == 3 and logits.shape[0] > 1 and logits.dtype != torch.float32:
        # (B, T, V) in bf16: upcast one row at a time instead of the whole tensor.
        return torch.stack([token_logps(row, tgt, temperature) for row, tgt in zip(logits, targets)])
    # Upcast before dividing by the temperature: bf16 division would round the scaled logits
    # (~0.05 on log-probs at T = 0.7) and disagree with the sampler, which scales in float32.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


# --------------------------------------------------------------------------- the head in chunks
#
# At a real vocabulary (49k-152k) the (n, V) logits of a batch's n predicted positions are the
# largest tensor of a step, twice over in training (the logits and their gradient). When only
# the log-prob of one token per position is wanted, the head can run on CHUNK_ELEMENTS-sized
# slices of the rows: per slice the logits are made, reduced to (picked - logsumexp), dropped.
# In training each slice is recomputed in the backward (activation checkpointing), so the whole
# (n, V) never exists; the price is one more head forward (a third of the head's work). A frozen
# head (LoRA) needs no recompute: the gradient with respect to the hidden states is made per
# slice in the forward (_FrozenHeadLogps), at the cost the whole-logits backward would pay.

CHUNK_ELEMENTS = 1 << 23  # logits per slice (8M: 32 MiB in float32); fewer rows x V than this: one slice


def _head_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                temperature: float) -> torch.Tensor:
    return token_logps(torch.nn.functional.linear(hidden, weight, bias), targets, temperature)


class _FrozenHeadLogps(torch.autograd.Function):
    """Head slices for a frozen head (LoRA, or the head excluded from training): only ``hidden``
    needs a gradient, and d log p(t | h) / dh = (W[t] - Σ_v p_v W_v) / temperature is an (n, H)
    tensor the forward can make per slice from the slice's probabilities. The backward is then
    one multiplication: no logits kept, none recomputed."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, temperature: float, rows: int) -> torch.Tensor:
        w32 = weight.float()
        outs, grads = [], []
        for i in range(0, hidden.shape[0], rows):
            t = targets[i:i + rows]
            logits = torch.nn.functional.linear(hidden[i:i + rows], weight, bias).float()
            if temperature != 1.0:
                logits = logits / temperature
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            outs.append(logits.gather(-1, t.unsqueeze(-1)).squeeze(-1) - lse.squeeze(-1))
            p = torch.exp(logits - lse)  # (r, V)
            grads.append((w32[t] - p @ w32) / temperature)  # (r, H)
        ctx.save_for_backward(torch.cat(grads))
        ctx.hidden_dtype = hidden.dtype
        return torch.cat(outs)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (dlogp_dh,) = ctx.saved_tensors
        grad = grad_outputs[0]
        return (grad.unsqueeze(-1) * dlogp_dh).to(ctx.hidden_dtype), None, None, None, None, None


def chunked_head_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       bias: torch.Tensor | None = None, temperature: float = 1.0,
                       chunk_elements: int | None = None) -> torch.Tensor:
    """``token_logps(hidden @ weight.T + bias, targets, temperature)`` without ever holding the
    whole (n, V) logits: rows in slices of about ``chunk_elements`` logits (default
    :data:`CHUNK_ELEMENTS`), each slice recomputed in the backward when a gradient is needed.
    hidden: (n, H); weight: (V, H); targets: (n,) long. Returns (n,) float32."""
    n, V = hidden.shape[0], weight.shape[0]
    rows = max(1, (chunk_elements or CHUNK_ELEMENTS) // max(1, V))
    if n <= rows:
        return _head_logps(hidden, weight, bias, targets, temperature)
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    if torch.is_grad_enabled() and hidden.requires_grad and frozen:
        out: torch.Tensor = _FrozenHeadLogps.apply(hidden, weight, bias, targets, temperature, rows)  # type: ignore[no-untyped-call]
        return out
    grad = torch.is_grad_enabled() and (hidden.requires_grad or not frozen)
    parts = []
    for i in range(0, n, rows):
        h, t = hidden[i:i + rows], targets[i:i + rows]
        if grad:
            from torch.utils.checkpoint import checkpoint
            parts.append(checkpoint(_head_logps, h, weight, bias, t, temperature, use_reentrant=False))
        else:
            parts.append(_head_logps(h, weight, bias, t, temperature))
    return torch.cat(parts)


_CHUNKABLE = frozenset({"llama", "mistral", "qwen2", "qwen3"})  # logits = lm_head(trunk(...)): nothing else


def _head_split(model: Callable[..., Any]) -> tuple[Any, torch.nn.Linear] | None:
    """(trunk, head) when ``model`` is a transformers (or peft-wrapped) causal LM whose logits are
    exactly ``head(trunk(...).last_hidden_state)``: a listed architecture, a plain Linear head,
    no logit scaling or soft-capping. None otherwise (wrappers such as the reference model, whose
    call sets adapters and modes, included): the caller then asks the model for its logits."""
    from rlhf.models.load import unwrap_model

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "get_output_embeddings"):
        return None
    inner: Any = unwrap_model(model)
    cfg = getattr(inner, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _CHUNKABLE:
        return None
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return None
    head = inner.get_output_embeddings()
    trunk = getattr(inner, "model", None)
    if type(head) is not torch.nn.Linear or trunk is None:
        return None
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule) or isinstance(inner, FSDPModule) or isinstance(head, FSDPModule):
        return None  # sharded: the root's forward gathers the head's weights; it is not bypassed
    return trunk, head


def _completion_logps_at(model: Callable[..., Any], input_ids: torch.Tensor, position_ids: torch.Tensor,
                         keep: torch.Tensor, targets: torch.Tensor, temperature: float,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probs (n,) float32 of ``targets`` (n,) predicted at the ``keep`` (R, W) positions,
    row-major. With a model whose head can be split off (:func:`_head_split`) and more than
    CHUNK_ELEMENTS logits, the head runs in slices (:func:`chunked_head_logps`); else the model's
    logits at ``keep`` (:func:`_logits_at`)."""
    from rlhf.models.load import ReferenceModel

    if isinstance(model, ReferenceModel):  # its call sets no-grad, eval mode and adapters off: so here
        with model.context() as module:
            return _completion_logps_at(module, input_ids, position_ids, keep, targets, temperature, attention_mask)
    split = _head_split(model)
    n = int(keep.sum())
    if split is None or n * split[1].out_features <= CHUNK_ELEMENTS:
        return token_logps(_logits_at(model, input_ids, position_ids, keep, attention_mask), targets, temperature)
    trunk, head = split
    inputs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
    hidden = trunk(**inputs).last_hidden_state[keep]  # (n, H)
    return chunked_head_logps(hidden, head.weight, targets, head.bias, temperature)


def shifted_token_logps(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each token given the ones before it, aligned with ``input_ids``.

    logits: (B, T, V) from a causal LM on input_ids (B, T). Position 0 has no prediction, so
    the returned (B, T) tensor holds 0 there; combine it with a completion mask whose
    position 0 is always 0 (the project's convention), so alignment is never off by one.
    """
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=logits.device)
    out[:, 1:] = token_logps(logits[:, :-1], input_ids[:, 1:], temperature)
    return out


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` over the last axis, float32. (..., V) -> (...)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    return entropy_from_logp(logits - torch.logsumexp(logits, dim=-1, keepdim=True))


def entropy_from_logp(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of a distribution given as normalised log-probs over the last axis. (..., V) -> (...)."""
    p = torch.exp(logp)
    # Masked-out vocabulary entries (logit -inf, e.g. after top-k) have p = 0 and contribute 0,
    # not 0 * -inf = NaN.
    return -torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)


@overload
def forward_logps(model: Callable[..., Any], batch: dict[str, torch.Tensor], temperature: float = ...,
                  return_logits: Literal[False] = ...) -> torch.Tensor: ...
@overload
def forward_logps(model: Callable[..., Any], batch: dict[str, torch.Tensor], temperature: float = ...,
                  *, return_logits: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...
def forward_logps(model: Callable[..., Any], batch: dict[str, torch.Tensor], temperature: float = 1.0,
                  return_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on a collated batch and return per-token log-probs (B, T), aligned with input_ids.

    Only the model-input keys are passed (rlhf.data.collate.model_inputs); packed batches carry
    restarting position_ids (and an explicit block mask for architectures that need one).
    """
    from rlhf.data.collate import model_inputs

    ids = batch["input_ids"]
    split = None if return_logits else _head_split(model)
    if split is not None and ids.numel() * split[1].out_features > CHUNK_ELEMENTS:
        # The head in slices (chunked_head_logps): the (B, T, V) logits are never whole.
        trunk, head = split
        hidden = trunk(**model_inputs(batch)).last_hidden_state  # (B, T, H)
        out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        lp = chunked_head_logps(hidden[:, :-1].reshape(-1, hidden.shape[-1]), head.weight,
                                ids[:, 1:].reshape(-1), head.bias, temperature)
        out[:, 1:] = lp.view(ids.shape[0], ids.shape[1] - 1)
        return out
    logits = model(**model_inputs(batch)).logits  # (B, T, V)
    logps = shifted_token_logps(logits, ids, temperature)
    return (logps, logits) if return_logits else logps


# --------------------------------------------------------------------------- per-sequence sums
#
# Preference losses need one number per sequence: the sum of its completion tokens' log-probs.
# Three ways to compute it from the same padded (N, T) batch, equal up to float rounding:
#
# * ``padded``: one forward over the padded batch, logits at every position (the plain way).
# * ``packed``: sequences back to back in rows without padding (PackedLayout), logits only at the
#   positions that predict a completion token. Fastest: no compute on padding, and the lm_head
#   (a (H, V) matmul per position, often the largest layer of a small model) skips the prompts.
# * ``bucketed``: each sequence alone in a row padded to a multiple of ``BUCKET`` tokens, rows of
#   equal width batched together. A sequence's numbers then depend on nothing but the sequence
#   itself (not on its batch-mates, not on the batch size): the same bits whenever and however
#   it is batched. DPO's reference log-probs use it, so cached and on-the-fly values are equal
#   exactly.

BUCKET = 16


@functools.cache
def _keeps_mask_class(cls: Any) -> bool:  # a model class (hashable; typed Any: its forward is read)
    """Whether the class's forward takes ``logits_to_keep`` as a 2-D bool mask. transformers reads
    a mask there from 5.21 on, through ``modeling_utils.slice_logits_to_keep``, which each modeling
    module that supports it imports. Before 5.21, and in a modeling file that does not use it, a
    2-D tensor there indexes the sequence axis and fails."""
    import sys

    return ("logits_to_keep" in inspect.signature(cls.forward).parameters
            and hasattr(sys.modules.get(cls.__module__), "slice_logits_to_keep"))


def _keeps_mask(model: Callable[..., Any]) -> bool:
    """:func:`_keeps_mask_class` of the transformers model inside ``model`` (looked up once per
    class: this runs every training step)."""
    from rlhf.models.load import unwrap_model

    inner: Any = getattr(model, "module", model)  # ReferenceModel / DDP wrappers hold the module
    inner = getattr(inner, "module", inner)
    cls: Any = type(unwrap_model(inner))  # Any: typeshed finds a class object unhashable for the cache
    return _keeps_mask_class(cls)


def _logits_at(model: Callable[..., Any], input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (n, V) at the ``keep`` (R, W) bool positions, row-major order. Asks the model for
    those rows only (``logits_to_keep`` as a mask, :func:`_keeps_mask`) when it can; else takes
    them from the whole logits."""
    inputs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
    if _keeps_mask(model):
        logits: torch.Tensor = model(**inputs, logits_to_keep=keep).logits  # (n, V)
        return logits
    logits = model(**inputs).logits[keep]  # (n, V)
    return logits


def _predicting(target_mask: torch.Tensor) -> torch.Tensor:
    """(R, W) bool: position t-1 predicts a target at t."""
    keep = torch.zeros_like(target_mask)
    keep[:, :-1] = target_mask[:, 1:]
    return keep


def packed_completion_logits(model: Callable[..., Any], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             completion_mask: torch.Tensor, capacity: int | None = None, lean: LeanLM | None = None
                             ) -> tuple[PackedLayout, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padded batch on its packed layout (:class:`rlhf.data.collate.PackedLayout`) and the
    logits only where a completion token is predicted. Returns ``(layout, p_ids (R, W),
    targets (R, W) bool, logits (n, V))``, the logits in the row-major order of ``targets``.
    ``lean``: a :class:`rlhf.models.lean.LeanLM` to run instead of ``model`` (no gradient).
    Needs an architecture that derives the block-diagonal mask from restarting position ids
    (llama, qwen2, gpt_neox, gpt2, ...: rlhf/data/collate.py)."""
    from rlhf.data.collate import PackedLayout

    layout = PackedLayout(attention_mask, capacity)
    p_ids = layout.pack_ids(input_ids)  # (R, W)
    targets = layout.pack(completion_mask, 0).bool() & ~layout.starts  # nothing predicts a sequence's first token
    keep = _predicting(targets)
    if lean is not None:
        logits = lean.score(p_ids, None, layout.position_ids, keep=keep, sequence_ids=layout.sequence)
    else:
        logits = _logits_at(model, p_ids, layout.position_ids, keep)  # (n, V)
    return layout, p_ids, targets, logits


def target_logps(model: Callable[..., Any], input_ids: torch.Tensor, position_ids: torch.Tensor,
                 targets: torch.Tensor, temperature: float = 1.0, attention_mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Log-probs (n,) float32 of the tokens of ``input_ids`` (R, W) at the ``targets`` (R, W) bool
    positions, row-major, each predicted from the position before it (column 0 must hold no
    target). The LM head runs only at those positions (:func:`_completion_logps_at`: in slices at
    a large vocabulary). Differentiable."""
    return _completion_logps_at(model, input_ids, position_ids, _predicting(targets), input_ids[targets],
                                temperature, attention_mask)


def packed_sequence_logps(model: Callable[..., Any], batch: dict[str, torch.Tensor], temperature: float = 1.0,
                          capacity: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (N,) float32 and completion lengths (N,) of a padded batch
    (``input_ids``, ``attention_mask``, ``completion_mask``), computed on its packed layout with
    logits only where a completion token is predicted (:func:`packed_completion_logits`).
    Differentiable."""
    from rlhf.data.collate import PackedLayout

    ids, cm = batch["input_ids"], batch["completion_mask"]
    layout = PackedLayout(batch["attention_mask"], capacity)
    p_ids = layout.pack_ids(ids)  # (R, W)
    targets = layout.pack(cm, 0).bool() & ~layout.starts  # nothing predicts a sequence's first token
    lp = target_logps(model, p_ids, layout.position_ids, targets, temperature)  # (n,) float32
    sums = torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, layout.sequence[targets], lp)
    return sums, cm.sum(-1)


def bucketed_sequence_logps(model: Callable[..., Any], batch: dict[str, torch.Tensor], temperature: float = 1.0,
                            bucket: int = BUCKET) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`packed_sequence_logps`, but each sequence is computed alone, right-padded to
    the next multiple of ``bucket`` tokens (rows of equal width share a forward), so its value
    does not depend on the rest of the batch: batch-invariant to the bit."""
    ids, am, cm = batch["input_ids"], batch["attention_mask"].bool(), batch["completion_mask"]
    N = ids.shape[0]
    lengths = am.sum(-1)
    widths = ((lengths + bucket - 1) // bucket) * bucket
    sums = torch.zeros(N, dtype=torch.float32, device=ids.device)
    for w in sorted(set(widths.tolist())):
        rows = (widths == w).nonzero().squeeze(-1)  # (n_w,)
        g_am = torch.zeros((len(rows), w), dtype=torch.long, device=ids.device)
        g_ids = torch.full((len(rows), w), int(ids[0, 0]), dtype=torch.long, device=ids.device)
        g_cm = torch.zeros((len(rows), w), dtype=torch.bool, device=ids.device)
        for k, i in enumerate(rows.tolist()):
            n = int(lengths[i])
            g_ids[k, :n], g_cm[k, :n], g_am[k, :n] = ids[i][am[i]], cm[i][am[i]].bool(), 1
        g_cm[:, 0] = False
        pos = (g_am.cumsum(-1) - 1).clamp(min=0)
        lp = _completion_logps_at(model, g_ids, pos, _predicting(g_cm), g_ids[g_cm], temperature, g_am)
        owner = rows.unsqueeze(-1).expand(-1, w)[g_cm]
        sums = sums.index_add(0, owner, lp)
    return sums, cm.sum(-1)


def sequence_logps(model: Callable[..., Any], batch: dict[str, torch.Tensor], layout: str = "packed",
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (N,) float32 and completion lengths (N,) of a padded batch,
    with ``layout`` = ``packed`` | ``bucketed`` | ``padded`` (see the comment above). ``packed``
    runs ``padded`` instead for a model that packing would give wrong numbers
    (:func:`rlhf.models.packing.use_packed`: probed once per model class, one warning line)."""
    if layout == "packed":
        from rlhf.models.packing import use_packed
        if not use_packed(True, model):
            return sequence_logps(model, batch, "padded", temperature)
        return packed_sequence_logps(model, batch, temperature)
    if layout == "bucketed":
        return bucketed_sequence_logps(model, batch, temperature)
    if layout == "padded":
        from rlhf.masking import masked_sum
        logps = forward_logps(model, batch, temperature)  # (N, T)
        mask = batch["completion_mask"]
        return masked_sum(logps, mask, dim=-1), mask.sum(-1)
    raise ValueError(f"layout must be packed, bucketed or padded (got {layout!r})")
