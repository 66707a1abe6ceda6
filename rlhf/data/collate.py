"""Encoded examples -> batches of tensors: padding, preference batches, packing.

Every batch holds (B = rows, T = longest row)::

    input_ids        (B, T) long   token ids, padded with pad_token_id
    attention_mask   (B, T) long   1 = real token, 0 = padding (absent for packed batches)
    completion_mask  (B, T) long   1 = training target (house rule 5; 0 on padding)
    position_ids     (B, T) long   position of each token within its own sequence

``position_ids = cumsum(attention_mask) - 1`` clamped at 0, so a sequence gets positions
0, 1, 2, ... whether it is padded on the right or on the left, and a left-padded batch
computes the same logits as a right-padded one.

Packed batches (:class:`PackingCollator`) put several sequences in one row. They carry no 2D
``attention_mask``; instead ``position_ids`` restart at 0 at every sequence, and transformers
(>= 5, ``masking_utils.find_packed_sequence_indices``) builds a block-diagonal causal mask from
them, so no token attends to another sequence. It does so only when ``attention_mask`` is None
*and* no KV cache is created, hence :func:`model_inputs` passes ``use_cache=False``. Checked
(tests/data/test_data_models.py) for llama, qwen2, gpt_neox and gpt2 with sdpa and eager
attention. For a model that does not build its mask this way, ``PackingCollator(block_mask=True)``
emits an explicit 4D additive mask instead.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "PadCollator",
    "PreferenceCollator",
    "PromptCollator",
    "PackingCollator",
    "pack_examples",
    "best_fit_rows",
    "PackedLayout",
    "model_inputs",
    "position_ids_from_mask",
    "block_causal_mask",
]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counting real tokens from 0; padding gets a neighbour's (ignored) value."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _pad(seqs: Sequence[Sequence[int]], value: int, side: str, length: int) -> torch.Tensor:
    """(B, length) long tensor of ``seqs`` padded with ``value`` on ``side``."""
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        if n == 0:
            continue
        if side == "right":
            out[i, :n] = torch.as_tensor(s, dtype=torch.long)
        else:
            out[i, length - n:] = torch.as_tensor(s, dtype=torch.long)
    return out


def _pad_id(pad_token_id: int | None) -> int:
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: give the tokenizer a pad token (or use its EOS id)")
    return int(pad_token_id)


def _check_side(side: str) -> None:
    if side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left' (got {side!r})")


def _pad_batch(ids: list[list[int]], masks: list[list[int]] | None, pad_token_id: int,
               side: str) -> dict[str, torch.Tensor]:
    for i, s in enumerate(ids):
        if not s:
            raise ValueError(f"example {i} has no tokens")
        if masks is not None and len(masks[i]) != len(s):
            raise ValueError(f"example {i}: completion_mask has {len(masks[i])} entries for {len(s)} tokens")
    T = max(len(s) for s in ids)
    batch = {"input_ids": _pad(ids, pad_token_id, side, T)}  # (B, T)
    batch["attention_mask"] = _pad([[1] * len(s) for s in ids], 0, side, T)  # (B, T)
    if masks is not None:
        batch["completion_mask"] = _pad(masks, 0, side, T)  # (B, T)
    batch["position_ids"] = position_ids_from_mask(batch["attention_mask"])  # (B, T)
    return batch


class PadCollator:
    """Pad ``{"input_ids", "completion_mask"}`` examples (from ``encode_sft``/``encode_unpaired``)
    into a batch; a ``label`` key (KTO) becomes a (B,) bool tensor."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        _check_side(padding_side)
        self.pad_token_id = _pad_id(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        ids = [e["input_ids"] for e in examples]
        masks = [e["completion_mask"] for e in examples] if "completion_mask" in examples[0] else None
        batch = _pad_batch(ids, masks, self.pad_token_id, self.padding_side)
        if "label" in examples[0]:
            batch["label"] = torch.tensor([bool(e["label"]) for e in examples], dtype=torch.bool)  # (B,)
        return batch


class PreferenceCollator:
    """Pad ``encode_preference`` examples into ONE batch of 2B rows: rows ``[:B]`` are the chosen
    sequences and rows ``[B:]`` the rejected ones, in the same order (one forward pass scores
    both). ``margin`` (B,) float is included when any example has one; a missing margin is 0."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad = PadCollator(pad_token_id, padding_side)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        seqs = [{"input_ids": e[f"{k}_input_ids"], "completion_mask": e[f"{k}_completion_mask"]}
                for k in ("chosen", "rejected") for e in examples]
        batch = self.pad(seqs)  # (2B, T) each
        margins = [e.get("margin") for e in examples]
        if any(m is not None for m in margins):
            batch["margin"] = torch.tensor([0.0 if m is None else float(m) for m in margins],
                                           dtype=torch.float32)  # (B,)
        return batch


class PromptCollator:
    """Pad ``encode_prompt`` examples for generation: ``input_ids``, ``attention_mask``,
    ``position_ids`` (B, T). Left padding by default, so every prompt ends at column T-1 and
    generated tokens line up."""

    def __init__(self, pad_token_id: int, padding_side: str = "left"):
        _check_side(padding_side)
        self.pad_token_id = _pad_id(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        return _pad_batch([e["prompt_input_ids"] for e in examples], None, self.pad_token_id,
                          self.padding_side)


# --------------------------------------------------------------------------- packing


def best_fit_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign items of the given lengths to rows of at most ``capacity``: best-fit decreasing.

    Items are taken longest first (ties in input order) and each goes into the open row with the
    least room that still fits it, else into a new row: deterministic, and it wastes little room.
    Returns the item indices of each row, in placement order. An item longer than ``capacity``
    gets a row of its own (callers that forbid this check first).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free tokens, row index) of every row
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(room, (n, -1))  # the row with the least room >= n
        if k < len(room):
            free, r = room.pop(k)
            rows[r].append(i)
            bisect.insort(room, (free - n, r))
        else:
            rows.append([i])
            bisect.insort(room, (max(capacity - n, 0), len(rows) - 1))
    return rows


def pack_examples(examples: list[dict[str, Any]], max_length: int) -> list[dict[str, list[int]]]:
    """Pack encoded SFT examples into rows of at most ``max_length`` tokens.

    Rows are filled by :func:`best_fit_rows` (best-fit decreasing, deterministic); within a
    row, sequences keep their input order.
    Each packed example holds ``input_ids``, ``completion_mask`` (0 on the first token of
    every sequence), ``position_ids`` (0.. per sequence) and ``seq_lengths``.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1 (got {max_length})")
    lengths = [len(e["input_ids"]) for e in examples]
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"example {i} has no tokens")
        if len(examples[i]["completion_mask"]) != n:
            raise ValueError(f"example {i}: completion_mask has {len(examples[i]['completion_mask'])} "
                             f"entries for {n} tokens")
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens, more than the packing length {max_length}; "
                             "encode with the same max_length")
    rows = best_fit_rows(lengths, max_length)
    packed = []
    for members in rows:
        members.sort()
        ids: list[int] = []
        mask: list[int] = []
        pos: list[int] = []
        for i in members:
            e = examples[i]
            m = list(e["completion_mask"])
            m[0] = 0  # the first token of a sequence is predicted by nothing in it
            ids += list(e["input_ids"])
            mask += m
            pos += list(range(lengths[i]))
        packed.append({"input_ids": ids, "completion_mask": mask, "position_ids": pos,
                       "seq_lengths": [lengths[i] for i in members]})
    return packed


class PackedLayout:
    """Where each real token of a padded (N, T) batch goes when its sequences are packed back to
    back into R rows of at most ``capacity`` tokens (default T, the batch width).

    Padding costs a transformer as much as real tokens; preference batches (chosen and rejected
    of different lengths, 2B rows padded to the longest) are often half padding. Packing
    removes it without changing any sequence's numbers beyond float rounding: positions restart
    at 0 per sequence and no attention_mask is passed, so transformers builds the block-diagonal
    causal mask (module doc). With ``capacity = T`` attention never spans more than the padded
    batch did. Left and right padding give the same layout (only attention_mask == 1 tokens move).

    ``pack(x, fill)`` moves any (N, T) tensor into the (R, W) layout (``pack_ids`` for token
    ids) and ``unpack(y, fill)`` back (both differentiable: a gather and a scatter).
    ``position_ids`` (R, W) restart per sequence (trailing padding is a block of
    its own); ``sequence`` (R, W) holds each token's source row, -1 on padding; ``starts`` (R, W)
    is True at each sequence's first token; ``last`` (N,) is the flat (R*W) index of each
    sequence's last token.
    """

    def __init__(self, attention_mask: torch.Tensor, capacity: int | None = None):
        am = attention_mask.bool()
        N, T = am.shape
        lengths = am.sum(-1).tolist()
        empty = [i for i, n in enumerate(lengths) if n < 1]
        if empty:
            raise ValueError(f"rows {empty} of the batch have no real token (attention_mask all 0); "
                             "every row needs at least one to be packed")
        rows = best_fit_rows(lengths, capacity or T)
        fill = [sum(lengths[i] for i in r) for r in rows]
        R, W = len(rows), max(fill)
        dev = am.device
        base = [0] * N  # flat (R*W) offset of each sequence's first token
        for r, members in enumerate(rows):
            start = r * W
            for i in sorted(members):  # within a row, sequences keep their batch order
                base[i] = start
                start += lengths[i]
        lens = torch.tensor(lengths, device=dev)
        offsets = torch.cumsum(lens, 0) - lens  # (N,) first token of each row in the flat list
        within = torch.arange(int(lens.sum()), device=dev) - offsets.repeat_interleave(lens)  # (n,)
        self.src = am.reshape(-1).nonzero().squeeze(-1)  # (n,) flat (N*T) index, row-major order
        self.dst = torch.tensor(base, device=dev).repeat_interleave(lens) + within  # (n,) flat (R*W)
        self.shape = (R, W)
        self.batch_shape = (N, T)
        self.lengths = lengths
        seq = torch.full((R * W,), -1, dtype=torch.long, device=dev)
        seq[self.dst] = torch.arange(N, device=dev).repeat_interleave(lens)
        pos = torch.zeros(R * W, dtype=torch.long, device=dev)
        pos[self.dst] = within
        for r, used in enumerate(fill):  # trailing padding: positions 0.. of its own block
            pos[r * W + used:(r + 1) * W] = torch.arange(W - used, device=dev)
        self.sequence = seq.view(R, W)
        self.position_ids = pos.view(R, W)
        starts = torch.zeros(R * W, dtype=torch.bool, device=dev)
        starts[self.dst[within == 0]] = True
        self.starts = starts.view(R, W)
        self.last = self.dst[offsets + lens - 1]  # (N,) flat (R*W) index of each sequence's last token

    def pack(self, x: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """(N, T, ...) -> (R, W, ...): real tokens moved into the packed rows, ``fill`` elsewhere."""
        flat = x.reshape(-1, *x.shape[2:])
        out = flat.new_full((self.shape[0] * self.shape[1], *x.shape[2:]), fill)
        out = out.index_copy(0, self.dst, flat.index_select(0, self.src))
        return out.view(*self.shape, *x.shape[2:])

    def pack_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, T) token ids -> (R, W). Trailing padding takes the batch's first id: it forms a
        block of its own, so no real token attends to it, and it is never a target."""
        return self.pack(input_ids, int(input_ids[0, 0]))

    def unpack(self, y: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """(R, W, ...) -> (N, T, ...): the inverse of :meth:`pack`, ``fill`` where the padded
        batch had padding (differentiable: a gather and a scatter)."""
        flat = y.reshape(-1, *y.shape[2:])
        out = flat.new_full((self.batch_shape[0] * self.batch_shape[1], *y.shape[2:]), fill)
        out = out.index_copy(0, self.src, flat.index_select(0, self.dst))
        return out.view(*self.batch_shape, *y.shape[2:])


class PackingCollator:
    """Batch packed examples (from :func:`pack_examples`) without cross-sequence attention.

    Emits ``input_ids``, ``completion_mask``, ``position_ids`` and ``sequence_ids`` (B, T)
    (index of the sequence within its row, -1 on padding: for per-sequence loss reduction).
    Rows are right-padded; the padding gets positions 0, 1, ... of its own so that it forms
    a separate block and never joins the last sequence.

    ``block_mask=False`` (default): no ``attention_mask``; transformers derives the
    block-diagonal causal mask from ``position_ids`` (see the module doc).
    ``block_mask=True``: ``attention_mask`` is an explicit (B, 1, T, T) additive mask (0 =
    attend, dtype-min = blocked) in ``mask_dtype``, which must match the model's dtype; for
    architectures that do not derive the mask from position ids.
    """

    def __init__(self, pad_token_id: int, block_mask: bool = False, mask_dtype: torch.dtype = torch.float32):
        self.pad_token_id = _pad_id(pad_token_id)
        self.block_mask = block_mask
        self.mask_dtype = mask_dtype

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        T = max(len(e["input_ids"]) for e in examples)
        B = len(examples)
        input_ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        completion_mask = torch.zeros((B, T), dtype=torch.long)
        position_ids = torch.zeros((B, T), dtype=torch.long)
        sequence_ids = torch.full((B, T), -1, dtype=torch.long)
        for b, e in enumerate(examples):
            n = len(e["input_ids"])
            lens = e.get("seq_lengths", [n])
            if sum(lens) != n or len(e["completion_mask"]) != n:
                raise ValueError(f"example {b}: {n} tokens but seq_lengths sum to {sum(lens)} and "
                                 f"completion_mask has {len(e['completion_mask'])} entries")
            input_ids[b, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            completion_mask[b, :n] = torch.as_tensor(e["completion_mask"], dtype=torch.long)
            start = 0
            for s, L in enumerate(lens):
                position_ids[b, start:start + L] = torch.arange(L)
                sequence_ids[b, start:start + L] = s
                completion_mask[b, start] = 0
                start += L
            position_ids[b, n:] = torch.arange(T - n)  # padding: a block of its own
        batch = {"input_ids": input_ids, "completion_mask": completion_mask,
                 "position_ids": position_ids, "sequence_ids": sequence_ids}
        if self.block_mask:
            batch["attention_mask"] = block_causal_mask(sequence_ids, self.mask_dtype)
        return batch


def block_causal_mask(sequence_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, T, T) additive mask: query t may attend key s iff s <= t and both tokens belong to
    the same sequence (padding, id -1, is one more block, so no row is fully masked)."""
    T = sequence_ids.shape[1]
    same = sequence_ids[:, :, None] == sequence_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
    allowed = same & causal  # (B, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # (B, 1, T, T)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keys of ``batch`` to pass to a causal LM's forward: ``input_ids``, ``position_ids``,
    ``attention_mask`` when present, and ``use_cache=False`` (training needs no KV cache, and
    transformers only detects packed sequences when it creates none)."""
    out: dict[str, Any] = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    out["use_cache"] = False
    return out
