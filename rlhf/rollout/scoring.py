"""Scoring a rollout without gradient: per-token log-probs under a policy or the reference
(:func:`rollout_logps`) and a critic's values aligned with actions (:func:`rollout_values`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlhf.rollout.episode import Rollout

__all__ = ["rollout_logps", "rollout_values", "shift_values"]


@torch.no_grad()
def rollout_logps(model: Any, rollout: Rollout, temperature: float = 1.0, batch_size: int = 64,
                  with_entropy: bool = False, engine: str = "auto", packed: bool = False
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, T) of the rollout's completion tokens under ``model`` (a policy
    or a ``ReferenceModel``), at ``temperature``, aligned with ``loss_mask`` (the actions); 0 wherever
    the mask is 0 (prompt columns, padding after EOS: no action there).

    ``with_entropy`` also returns the per-token entropy (B, T) of the temperature-scaled
    distribution each action was drawn from (top-k/top-p are not applied: the entropy and the
    log-probs are those of the policy itself, as in the PPO objective). ``engine`` as
    ``SamplingConfig.engine``: the lean forward (rlhf.models.lean) where the model allows.
    ``packed`` runs each batch's sequences back to back without padding
    (rlhf.data.collate.PackedLayout): the same numbers up to float rounding, less work when
    completions differ in length.
    """
    from rlhf.logprobs import entropy_from_logits, token_logps
    from rlhf.models.lean import lean_for
    from rlhf.models.packing import use_packed

    P = rollout.prompt_width
    lean = lean_for(model, rollout.input_ids.shape[1], engine)
    packed = packed and (lean is not None or use_packed(True, model))  # the lean forward masks by sequence ids
    out = torch.zeros(rollout.input_ids.shape, dtype=torch.float32, device=rollout.input_ids.device)
    ent = torch.zeros_like(out) if with_entropy else None
    for s in range(0, len(rollout), batch_size):
        inputs = rollout.model_inputs(slice(s, s + batch_size))
        rows = slice(s, s + inputs["input_ids"].shape[0])
        if packed:
            lp, e = _packed_logps(model, lean, inputs, rollout.loss_mask[rows], temperature, with_entropy)
            out[rows] = lp
            if with_entropy:
                assert ent is not None and e is not None
                ent[rows] = e
            continue
        keep = slice(P - 1, -1)  # the positions that predict completion tokens
        if lean is not None:
            logits = lean.score(**inputs, keep=keep)
        else:
            logits = model(**inputs, use_cache=False).logits[:, keep]
        real = rollout.loss_mask[rows, P:]  # 0 after EOS too, as in the packed layout
        out[rows, P:] = token_logps(logits, inputs["input_ids"][:, P:], temperature) * real
        if ent is not None:  # with_entropy
            ent[rows, P:] = entropy_from_logits(logits, temperature) * real
    return (out, ent) if ent is not None else out


def _packed_logps(model: Any, lean: Any, inputs: dict[str, torch.Tensor], completion_mask: torch.Tensor,
                  temperature: float, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`rollout_logps` of one padded batch, computed on its packed layout with logits only
    where a completion token is predicted. Returns (B, T) log-probs and entropies (or None)."""
    from rlhf.logprobs import entropy_from_logits, packed_completion_logits, token_logps

    layout, p_ids, targets, logits = packed_completion_logits(
        model, inputs["input_ids"], inputs["attention_mask"], completion_mask, lean=lean)

    def unpacked(values: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(layout.shape, dtype=torch.float32, device=p_ids.device)
        grid[targets] = values
        return layout.unpack(grid)

    lp = unpacked(token_logps(logits, p_ids[targets], temperature))
    return lp, unpacked(entropy_from_logits(logits, temperature)) if with_entropy else None


def shift_values(raw: torch.Tensor) -> torch.Tensor:
    """Align a critic's per-position outputs with actions: the value of the state before token t
    (the prefix ``x_<t``) is read at position t-1. (B, T) -> (B, T), 0 at position 0."""
    out = torch.zeros_like(raw)
    out[:, 1:] = raw[:, :-1]
    return out


@torch.no_grad()
def rollout_values(value_model: nn.Module, rollout: Rollout, batch_size: int = 64, packed: bool = False
                   ) -> torch.Tensor:
    """The critic's V(s_t) for every action t of the rollout, (B, T) float32 (see
    :func:`shift_values`); ``packed`` as in :func:`rollout_logps` (the critic's outputs are 0 on
    padding before the shift; action positions read real tokens either way)."""
    from rlhf.data.collate import PackedLayout
    from rlhf.models.load import score_tokens
    from rlhf.models.packing import use_packed

    packed = use_packed(packed, value_model)
    outs = []
    for s in range(0, len(rollout), batch_size):
        inputs = rollout.model_inputs(slice(s, s + batch_size))
        if packed:
            layout = PackedLayout(inputs["attention_mask"])
            raw = layout.unpack(score_tokens(value_model, layout.pack_ids(inputs["input_ids"]), None,
                                             layout.position_ids).float())
        else:
            raw = score_tokens(value_model, **inputs).float()
        outs.append(shift_values(raw))
    return torch.cat(outs)
