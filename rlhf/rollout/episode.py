"""Episodes: the :class:`Rollout` every engine returns, and the end-of-episode rule they share.

A rollout is laid out as (see rlhf/rollout/__init__.py): prompts left-padded so that every
prompt ends at the same column ``P``, completions right-padded after it. Three masks, each
(B, T):

* ``attention_mask``: every real token (prompt, completion, observation);
* ``completion_mask``: every token after the prompt;
* ``loss_mask``: the tokens the policy sampled, the only ones trained on. One turn: the
  completion mask. Several turns (rlhf/envs): holes where the environment's tokens sit.

An episode's text ends at the first EOS id (kept: the policy chose it), else at the first
prefix whose text holds a stop string (kept, like EOS), else at the length limit
(:func:`end_of_completion`, the one place that rule is written).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Rollout", "assemble_rollout", "eos_ids", "end_of_completion", "stop_string_cut"]


@dataclass
class Rollout:
    """A batch of finished episodes. Tensors are (B, T) with T = P + L (prompt width P, longest
    completion L) unless noted; row ``i`` came from ``prompts[i]`` and the ``group_size`` rows
    of one prompt are consecutive."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_mask: torch.Tensor  # 1 on every token after the prompt (EOS included), whoever wrote it
    ended: torch.Tensor  # (B,) bool: finished by EOS or a stop string (not cut at max_new_tokens)
    prompt_width: int
    prompts: list[Any]
    completions: list[str]
    group_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    # With ``sample(..., with_logps=True)``: each action's log-prob and the entropy of the
    # distribution it was drawn from (softmax(logits / temperature), before top-k/top-p), both
    # (B, T) float32 aligned with completion_mask (0 elsewhere), taken from the sampler's own
    # logits: what :func:`rollout_logps` recomputes, without a second forward pass.
    logps: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    # 1 on the tokens the policy wrote: the actions, the only ones with log-probs, advantages, KL
    # and loss. None = ``completion_mask`` (one turn: every token after the prompt is an action);
    # a multi-turn episode has holes where the environment's observation tokens sit. Read it
    # through :attr:`loss_mask`.
    policy_mask: torch.Tensor | None = None
    # (B, T) int64: the engine's weight version (its count of syncs) that drew each action, -1 on
    # every other token; None when the engine did not say.
    policy_version: torch.Tensor | None = None

    @property
    def loss_mask(self) -> torch.Tensor:
        """(B, T): 1 on the policy's own tokens (the actions), separate from ``attention_mask``
        (every real token) and ``completion_mask`` (every token after the prompt)."""
        return self.completion_mask if self.policy_mask is None else self.policy_mask

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) completion length in tokens (EOS included)."""
        return self.completion_mask.sum(-1)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def model_inputs(self, rows: slice | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        sel = slice(None) if rows is None else rows
        return {"input_ids": self.input_ids[sel], "attention_mask": self.attention_mask[sel],
                "position_ids": self.position_ids[sel]}


def eos_ids(tokenizer: Any, model: nn.Module | None = None) -> list[int]:
    """The ids that end an episode: the tokenizer's EOS plus any the model's generation config
    lists (chat models often end a turn with a token other than the tokenizer's EOS)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if extra is not None:
        ids.update(int(i) for i in (extra if isinstance(extra, (list, tuple)) else [extra]))
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id, so an episode could never end: set one")
    return sorted(ids)


def stop_string_cut(tokenizer: Any, tokens: list[int], stop_strings: Sequence[str]) -> int | None:
    """Length of the shortest prefix of ``tokens`` whose text contains a stop string, or None."""
    if not stop_strings:
        return None
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if not any(s in text for s in stop_strings):
        return None
    for k in range(1, len(tokens) + 1):
        if any(s in tokenizer.decode(tokens[:k], skip_special_tokens=True) for s in stop_strings):
            return k
    return None


def end_of_completion(tokenizer: Any, tokens: list[int], stops: Sequence[int] | set[int],
                      stop_strings: Sequence[str]) -> tuple[list[int], bool]:
    """The sampled ``tokens`` cut where the episode ends, and whether it ended (False = cut at the
    length limit): at whichever comes first of the first id in ``stops`` (kept: it is an action
    the policy took) and the shortest prefix whose text contains one of ``stop_strings`` (kept),
    as generate and vLLM stop; else not cut. (Taking the EOS first whenever one was sampled kept
    the text after a plain tool call's ``]`` up to a later EOS: the policy's own made-up result,
    then the tool's, then turns after its EOS.)"""
    eos = next((k + 1 for k, t in enumerate(tokens) if t in stops), None)
    text = stop_string_cut(tokenizer, tokens if eos is None else tokens[:eos], stop_strings)
    cut = text if text is not None else eos
    return (tokens[:cut], True) if cut is not None else (tokens, False)


def assemble_rollout(tokenizer: Any, rows_prompt: list[Any], rows_ids: list[list[int]],
                     completions_tok: list[list[int]], ended: list[bool], group_size: int,
                     device: torch.device, logps: Sequence[torch.Tensor] | None = None,
                     entropy: Sequence[torch.Tensor] | None = None) -> Rollout:
    """The :class:`Rollout` of finished episodes, whichever engine drew them: row i is prompt
    ``rows_ids[i]`` (left-padded to the widest prompt) then ``completions_tok[i]`` (its sampled
    ids, cut at EOS / a stop string, right-padded). ``logps`` / ``entropy``: per row, a 1-D
    tensor holding at least that row's completion length of values (the first n are used)."""
    from rlhf.data.collate import _pad, position_ids_from_mask

    pad = tokenizer.pad_token_id
    P = max(len(p) for p in rows_ids)
    L = max(1, max(len(c) for c in completions_tok))
    # Prompt left-padded to width P, completion right-padded to width L after it.
    input_ids = torch.cat([_pad(rows_ids, pad, "left", P), _pad(completions_tok, pad, "right", L)], dim=1)
    prompt_real = _pad([[1] * len(p) for p in rows_ids], 0, "left", P)
    comp_real = _pad([[1] * len(c) for c in completions_tok], 0, "right", L)
    attention = torch.cat([prompt_real, comp_real], dim=1)
    comp_mask = torch.cat([torch.zeros_like(prompt_real), comp_real], dim=1)
    texts = tokenizer.batch_decode(completions_tok, skip_special_tokens=True)

    def grid(values: Sequence[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=device)
        for i, v in enumerate(values):  # completion token k of row i sits at column P + k
            n = len(completions_tok[i])
            out[i, P:P + n] = v[:n].to(device=device, dtype=torch.float32)
        return out

    return Rollout(
        input_ids=input_ids.to(device), attention_mask=attention.to(device),
        position_ids=position_ids_from_mask(attention).to(device),
        completion_mask=comp_mask.to(device), ended=torch.tensor(ended, device=device),
        prompt_width=P, prompts=list(rows_prompt), completions=texts, group_size=group_size,
        logps=grid(logps) if logps is not None else None, entropy=grid(entropy) if entropy is not None else None)
