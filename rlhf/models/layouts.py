"""Whether padded batches and cached decoding give a model's own numbers: decided by probes.

rlhf computes a sequence's log-probs on several layouts and treats them as one number: the
sampler decodes left-padded prompts token by token through a KV cache (and, in fp32, its logits
are PPO's π_old: ``ppo.old_logps``), the no-grad passes and the update run full forwards over
left-padded rollouts, SFT/DPO/RM batches are right-padded. That holds for attention models whose
mask hides the padding. It does not hold everywhere: a state-space or convolution layer that
does not read the attention mask carries the pad tokens' state into the real ones (left padding
leaks), and a hybrid model's cached decoding can disagree with its own full forward (measured
on tiny random models of transformers 5.24: see tests/conformance). rlhf then trained on numbers
other than the model's, with exit 0 (issue 22: a step-1 KL of +451 from π_old).

So, as for packing (rlhf/models/packing.py), no architecture is assumed: a probe runs the first
time a (class, attention implementation, dtype) is seen and compares, token by token, the final
hidden states (or logits) of three fixed sequences of different lengths run alone with

* :func:`padding_difference`: the same sequences in one left-padded and one right-padded batch
  (attention mask, positions counting real tokens only, as rlhf's collators make them);
* :func:`decoding_difference`: the sampler's path: the left-padded prompts' forward with a cache,
  then fixed continuation tokens fed one at a time (mask grown by one column, next position).

A layout is accepted when every token agrees to within the dtype's rounding
(:func:`rlhf.models.packing.tolerance`). :func:`padding_unsupported` and
:func:`decoding_unsupported` return None or the reason (cached); :func:`check_rollout_layouts`
is PPO's call: it refuses (one line) a policy that leaks through left padding (every pass over a rollout
is left-padded) and takes π_old from a full forward where cached decoding disagrees, one line
each.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from rlhf.models.packing import tolerance, trunk_of

__all__ = ["padding_difference", "decoding_difference", "padding_unsupported", "decoding_unsupported",
           "check_rollout_layouts", "clear_cache"]

logger = logging.getLogger(__name__)

PROMPT_LENGTHS = (5, 9, 4)  # different, so the batch is padded on every row but one
CONTINUATION = 4  # tokens fed one at a time through the cache

_Key = tuple[type, str, "torch.dtype | None"]
_PADDING: dict[_Key, dict[str, float] | str] = {}
_DECODING: dict[_Key, float | str] = {}
_LOGGED: set[tuple[str, _Key]] = set()



_CACHE_KWARG: dict[type, str] = {}


def cache_kwarg(model: nn.Module) -> str:
    """The forward's keyword for the KV cache: ``cache`` since transformers 5.2x (where
    ``past_key_values`` is deprecated, to be removed in 5.40), ``past_key_values`` before. A
    wrapper whose forward takes ``**kwargs`` (peft's PeftModel) passes them to its base model,
    whose signature decides. Looked up once per class."""
    cls = type(model)
    if cls not in _CACHE_KWARG:
        get_base = getattr(model, "get_base_model", None)
        base = get_base() if callable(get_base) else model
        params = inspect.signature(type(base).forward).parameters
        _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[cls]


def clear_cache() -> None:
    _PADDING.clear()
    _DECODING.clear()
    _LOGGED.clear()


def _key(module: nn.Module) -> _Key:
    param = next(module.parameters(), None)
    return (type(module), str(getattr(getattr(module, "config", None), "_attn_implementation", None)),
            None if param is None else param.dtype)


def _model_type(module: nn.Module) -> str:
    return str(getattr(getattr(module, "config", None), "model_type", type(module).__name__))


def _ids(vocab: int, device: torch.device) -> list[torch.Tensor]:
    """Fixed, distinct token ids: the prompts followed by CONTINUATION tokens each."""
    out, start = [], 3
    for n in PROMPT_LENGTHS:
        out.append((torch.arange(start, start + n + CONTINUATION, device=device) * 7919) % max(vocab, 4))
        start += n + CONTINUATION
    return out


def _vocab(module: nn.Module) -> int:
    config = getattr(module, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    vocab = getattr(text, "vocab_size", None)
    if vocab:
        return int(vocab)
    emb = next((m for m in module.modules() if isinstance(m, nn.Embedding)), None)
    return emb.num_embeddings if emb is not None else 4


def _pad_id(module: nn.Module) -> int:
    config = getattr(module, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    pad = getattr(text, "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


def _batch(seqs: list[torch.Tensor], pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, positions counting real tokens) of ``seqs`` padded on ``side``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long, device=seqs[0].device)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, cols], mask[i, cols] = s, 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max over rows of ||a - b|| / ||b|` (float64)."""
    a, b = a.double(), b.double()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-30)).max())


class _EvalMode:
    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc: Any) -> None:
        for m, training in self.modes:
            m.training = training


def _hidden(trunk: nn.Module, **kwargs: Any) -> torch.Tensor:
    out = trunk(**kwargs, use_cache=False)
    hidden = getattr(out, "last_hidden_state", None)
    return (out.logits if hidden is None else hidden).float()


@torch.no_grad()
def padding_difference(model: Any) -> dict[str, float]:
    """{"left": d, "right": d}: max over real tokens of ``||h_padded - h_alone|| / ||h_alone||``
    (the trunk's final hidden states) for the probe sequences in one left- / right-padded batch."""
    trunk = trunk_of(model)
    device = next(trunk.parameters()).device
    seqs = _ids(_vocab(trunk), device)
    with_pos = "position_ids" in inspect.signature(trunk.forward).parameters
    with _EvalMode(trunk):
        alone = [_hidden(trunk, input_ids=s[None])[0] for s in seqs]
        out = {}
        for side in ("left", "right"):
            ids, mask, pos = _batch(seqs, _pad_id(trunk), side)
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if with_pos:
                kwargs["position_ids"] = pos
            h = _hidden(trunk, **kwargs)
            out[side] = max(_rel(h[i][mask[i].bool()], alone[i]) for i in range(len(seqs)))
    return out


@torch.no_grad()
def decoding_difference(model: nn.Module) -> float:
    """Max over steps and rows of ``||logits_cached - logits_full|| / ||logits_full||``: the
    left-padded prompts run with a cache, then CONTINUATION fixed tokens one at a time (as the
    built-in sampler decodes), against each full sequence run alone."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    seqs = _ids(_vocab(model), device)
    prompts = [s[:n] for s, n in zip(seqs, PROMPT_LENGTHS)]
    cache_kw = cache_kwarg(model)
    with _EvalMode(model):
        alone = [model(input_ids=s[None], use_cache=False).logits[0].float() for s in seqs]  # (n+C, V)
        ids, mask, pos = _batch(prompts, _pad_id(model), "left")
        try:
            cache = DynamicCache(config=model.config)
        except TypeError:
            cache = DynamicCache()
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kw: cache})
        steps = [out.logits[:, -1].float()]  # predicts continuation token 0
        nxt = pos[:, -1] + 1
        for t in range(CONTINUATION - 1):
            tok = torch.stack([s[n + t] for s, n in zip(seqs, PROMPT_LENGTHS)])
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=nxt[:, None], use_cache=True,
                        **{cache_kw: cache})
            steps.append(out.logits[:, -1].float())
            nxt = nxt + 1
    diff = 0.0
    for t, logits in enumerate(steps):
        ref = torch.stack([a[n - 1 + t] for a, n in zip(alone, PROMPT_LENGTHS)])  # (B, V)
        diff = max(diff, _rel(logits, ref))
    return diff


def padding_unsupported(model: Any, side: str = "left") -> str | None:
    """None when ``side``-padded batches give ``model``'s trunk its one-sequence numbers (to within
    its dtype's rounding), else the reason. Probed once per (trunk class, attention, dtype)."""
    trunk = trunk_of(model)
    key = _key(trunk)
    if key not in _PADDING:
        try:
            _PADDING[key] = padding_difference(model)
        except Exception as e:  # a model that cannot run a padded batch at all
            _PADDING[key] = f"{type(e).__name__}: {e}"
    got = _PADDING[key]
    where = f"model_type {_model_type(trunk)!r} ({key[0].__name__}, attention {key[1]}, {key[2]})"
    if isinstance(got, str):
        return f"{where} cannot run a padded batch: {got}"
    tol = tolerance(key[2] or torch.float32)
    if got[side] <= tol:
        return None
    return (f"{where}: a {side}-padded batch and each sequence alone differ by {got[side]:.3g} (relative, "
            f"final hidden states) on a probe, more than {key[2]} rounding ({tol:.2g}): padding leaks "
            "into the real tokens")


def decoding_unsupported(model: nn.Module) -> str | None:
    """None when cached token-by-token decoding of left-padded prompts gives ``model``'s full-forward
    logits (to within its dtype's rounding), else the reason. Probed once per (class, attention, dtype)."""
    from rlhf.models.packing import _inner

    inner = _inner(model)
    key = _key(inner)
    if key not in _DECODING:
        try:
            _DECODING[key] = decoding_difference(inner)
        except Exception as e:
            _DECODING[key] = f"{type(e).__name__}: {e}"
    got = _DECODING[key]
    where = f"model_type {_model_type(inner)!r} ({key[0].__name__}, attention {key[1]}, {key[2]})"
    if isinstance(got, str):
        return f"{where} cannot decode with a cache: {got}"
    tol = tolerance(key[2] or torch.float32)
    if got <= tol:
        return None
    return (f"{where}: cached decoding and the full forward differ by {got:.3g} (relative, logits) on a "
            f"probe, more than {key[2]} rounding ({tol:.2g})")


def _once(kind: str, module: nn.Module, msg: str) -> None:
    k = (kind, _key(module))
    if k not in _LOGGED:
        _LOGGED.add(k)
        logger.warning(msg)


def check_rollout_layouts(policy: nn.Module, sampler_logps: bool, *, lean: bool = False) -> bool:
    """PPO's check before its first rollout. Raises :class:`LayoutError` when the policy leaks
    through left padding (the sampler's prompts and every pass over a rollout are left-padded:
    no number of the run would be the model's). Returns whether π_old may still come from the
    sampler's logits: False, said once, when cached decoding disagrees with the full forward
    (π_old is then recomputed with a full forward, ppo.old_logps=forward). ``lean``: the sampler
    decodes with rlhf's lean forward (exact for the models it allows, tested on its own). The
    refusal is a :class:`rlhf.config.ConfigError` on ``model.name_or_path`` (one line, exit 2)."""
    from rlhf.config import ConfigError

    reason = padding_unsupported(policy, "left")
    if reason is not None:
        raise ConfigError("model.name_or_path", f"{reason}; rlhf's rollouts are left-padded, so this model "
                          "type cannot be trained with PPO/GRPO here (its log-probs would not be its own)")
    if not sampler_logps or lean:
        return sampler_logps
    reason = decoding_unsupported(policy)
    if reason is None:
        return True
    _once("decoding", policy, f"π_old from a full forward, not the sampler (as ppo.old_logps=forward): {reason}")
    return False
