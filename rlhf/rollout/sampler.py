"""The built-in sampler: the policy acts in the RLHF environment, with the KV cache.

:func:`sample_builtin` runs one batched episode per (prompt, sample) and returns a
:class:`rlhf.rollout.episode.Rollout`: prompts left-padded so that every prompt ends at the same
column ``P`` and generation starts there, completions right-padded after it::

    column:   0 .. P-1                  P .. P+L-1
    row i:    [pad pad p p p p]         [c c c EOS pad pad]
              attention_mask 0 0 1 1 1 1   1 1 1 1  0 0
              completion_mask 0 ...     0  1 1 1 1  0 0     (1 = an action, house rule 5)

Position ids count real tokens only (``cumsum(attention_mask) - 1``), so a left-padded prompt
is seen at the same positions as an unpadded one, during sampling and in every later forward.

The sampler is our own loop rather than ``model.generate``: it applies exactly the
temperature / top-k / top-p transformation documented here and nothing else (no generation
defaults shipped with a checkpoint, such as a repetition penalty, can change the distribution
behind the recipe's back), and it is lighter per token on small models. Tokens are drawn by
inverse CDF (:func:`inverse_cdf`, one uniform number per row); Llama-family models decode
through the lean forward of rlhf/models/lean.py (``SamplingConfig.engine``), the rest through
the model's own forward with a DynamicCache.

A prompt's K samples share its prefill: the distinct prompts of a batch are prefilled once and
their KV cache (and first-token logits) copied to each of their rows (:func:`_shared_rows`), so
a step prefills ``B/K`` prompts instead of ``B``. Each row attends to the same keys and values
as when its prompt was prefilled on its own row, so the samples are those of the unshared prefill
(tested: the same tokens under a seed, lean and transformers paths). A transformers cache that
holds more than per-row keys and values (the cache classes of linear-attention or quantized
layers) is not shared: such a model prefills every row, said once per class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rlhf.logprobs import entropy_from_logp
from rlhf.models.layouts import cache_kwarg
from rlhf.rollout.config import SamplingConfig
from rlhf.rollout.episode import Rollout, assemble_rollout, end_of_completion, eos_ids

__all__ = ["sample_builtin", "filter_logits", "inverse_cdf"]

logger = logging.getLogger(__name__)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
                  ) -> torch.Tensor:
    """The sampling distribution's logits: ``logits / temperature``, then top-k, then top-p
    (nucleus: the smallest set of most likely tokens whose probability reaches ``top_p``; the
    token that crosses the threshold is kept). Removed tokens get -inf. (B, V) -> (B, V) float32.
    """
    logits = logits.float() / temperature
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Mass of the tokens strictly before each one; drop a token once that already reaches top_p.
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _new_cache(model: nn.Module):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signature
        return DynamicCache()


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative-probability interval holds ``u * total``: (B, V) probs (any
    non-negative weights), (B,) u in (0, 1] -> (B,) long.

    Token i is drawn when ``cdf[i-1] < u * total <= cdf[i]``, so with u uniform on (0, 1] each
    token comes with probability proportional to its weight, and a token of weight 0 (removed by
    top-k/top-p) has an empty interval and can never come. u in (0, 1] (not [0, 1)) keeps the
    point above 0 and at most ``total``, the last entry of the cdf itself, so the search always
    lands on a token of positive weight, whatever the rounding of the cumulative sum.
    """
    cdf = probs.cumsum(-1)
    point = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, point).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _draw(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None, greedy: bool,
          with_logps: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One token per row, and with ``with_logps`` its log-prob and the entropy under the policy's
    own distribution softmax(logits / T) (before top-k/top-p, as rollout_logps scores it).

    Sampling is inverse-CDF with one uniform number per row (``torch.multinomial`` draws one
    exponential per vocabulary entry: a fifth of a small model's decode step), from the
    :func:`filter_logits` distribution. One log-softmax serves the draw and both statistics.
    """
    logp = None
    if with_logps or not (greedy or cfg.top_k or cfg.top_p < 1.0):
        z = logits.float() / cfg.temperature
        logp = z - torch.logsumexp(z, -1, keepdim=True)
    if greedy:
        tok = logits.argmax(-1)
    else:
        filtered = cfg.top_k or cfg.top_p < 1.0
        probs = torch.softmax(filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p), -1) if filtered \
            else logp.exp()  # type: ignore[union-attr]  # logp is computed whenever unfiltered
        # Uniforms come from the generator's own device (a seeded CPU generator works for a
        # model on an accelerator, and draws the same numbers there): B numbers per token.
        where = generator.device if generator is not None else probs.device
        u = 1.0 - torch.rand(probs.shape[0], generator=generator, device=where).to(probs.device)  # (0, 1]
        tok = inverse_cdf(probs, u)
    if not with_logps:
        return tok, None, None
    assert logp is not None  # computed above whenever with_logps
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1), entropy_from_logp(logp)


def _shared_rows(rows: list[list[int]]) -> tuple[list[int], list[int]] | None:
    """The rows to prefill and, for each row, which of them holds its prompt: (first row of each
    distinct prompt, (B,) index into those), or None when every prompt differs (nothing to share)."""
    slot: dict[tuple[int, ...], int] = {}
    first: list[int] = []
    index = []
    for i, r in enumerate(rows):
        key = tuple(r)
        if key not in slot:
            slot[key] = len(first)
            first.append(i)
        index.append(slot[key])
    return (first, index) if len(first) < len(rows) else None


# Cache layers known to hold nothing but per-row keys and values (plus scalar lengths): a row of
# them can be copied to other rows. Filled on first use (transformers is imported lazily).
_ROW_LAYERS: tuple[type, ...] = ()
_UNSHAREABLE: set[type] = set()  # model classes whose cache was found not shareable (said once each)


def _expand_cache(model: nn.Module, cache: Any, index: torch.Tensor) -> bool:
    """Copy row ``index[i]`` of a prefilled DynamicCache to row i; False (cache untouched, said
    once per model class, remembered) when a layer's state is not just per-row keys and values."""
    global _ROW_LAYERS
    if not _ROW_LAYERS:
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
        _ROW_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) not in _ROW_LAYERS for layer in layers):
        if type(model) not in _UNSHAREABLE:
            _UNSHAREABLE.add(type(model))
            kinds = sorted({type(layer).__name__ for layer in layers or []}) or ["no layers"]
            logger.warning("[sample] %s: its KV cache (%s) is not only per-row keys and values, so a prompt's "
                           "samples do not share its prefill (each row prefills its prompt)",
                           type(model).__name__, ", ".join(kinds))
        return False
    cache.batch_select_indices(index)
    return True


class _TransformersDecoder:
    """Next-token logits through the model's own forward and a DynamicCache. With ``share``
    (:func:`_shared_rows`) the distinct prompts are prefilled once and the cache copied to
    their rows (the unshared prefill where the cache does not allow it: :func:`_expand_cache`)."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor,
                 share: tuple[list[int], list[int]] | None = None):
        self.model, self.attn, self.next_pos = model, attn, pos[:, -1] + 1
        self.cache, self.cache_kwarg = _new_cache(model), cache_kwarg(model)
        self.prefill_rows = ids.shape[0]
        if share is not None and type(model) not in _UNSHAREABLE:
            first = torch.tensor(share[0], device=ids.device)
            index = torch.tensor(share[1], device=ids.device)
            out = model(input_ids=ids[first], attention_mask=attn[first], position_ids=pos[first], use_cache=True,
                        **{self.cache_kwarg: self.cache})
            if _expand_cache(model, self.cache, index):
                self.first = out.logits[:, -1].index_select(0, index)
                self.prefill_rows = len(share[0])
                return
            self.cache = _new_cache(model)  # not shareable: the unshared prefill below (the try counted too)
            self.prefill_rows += len(share[0])
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                    **{self.cache_kwarg: self.cache})
        self.first = out.logits[:, -1]

    def step(self, tok: torch.Tensor, t: int) -> torch.Tensor:
        B = tok.shape[0]
        self.attn = torch.cat([self.attn, torch.ones((B, 1), dtype=self.attn.dtype, device=tok.device)], dim=1)
        out = self.model(input_ids=tok[:, None], attention_mask=self.attn, position_ids=self.next_pos[:, None],
                         use_cache=True, **{self.cache_kwarg: self.cache})
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1]


class _LeanDecoder:
    """Next-token logits through :class:`rlhf.models.lean.LeanLM`: the cache, rotary tables and
    padding bias of the whole episode are made once. With ``share`` (:func:`_shared_rows`) the
    distinct prompts are prefilled once into their own cache, copied to their rows of the
    episode's cache."""

    def __init__(self, lean, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, max_new_tokens: int,
                 share: tuple[list[int], list[int]] | None = None):
        B, P = ids.shape
        T = P + max_new_tokens
        self.lean, self.P = lean, P
        steps = torch.arange(1, max_new_tokens + 1, device=ids.device)
        self.cos, self.sin = lean.rotary(torch.cat([pos, pos[:, -1:] + steps], dim=1))  # (B, T, D)
        self.cache = lean.new_cache(B, T)
        keys = torch.cat([attn.bool(), torch.ones((B, max_new_tokens), dtype=torch.bool, device=ids.device)], 1)
        self.bias = lean.key_bias(keys)
        if share is None:
            self.prefill_rows = B
            hidden = lean.forward(ids, attn.bool(), self.cos[:, :P], self.sin[:, :P], self.cache)
            self.first = lean.logits(hidden[:, -1])
            return
        first = torch.tensor(share[0], device=ids.device)
        index = torch.tensor(share[1], device=ids.device)
        self.prefill_rows = len(share[0])
        prompt_cache = lean.new_cache(len(share[0]), P)
        hidden = lean.forward(ids[first], attn[first].bool(), self.cos[first, :P], self.sin[first, :P], prompt_cache)
        for (k, v), (pk, pv) in zip(self.cache, prompt_cache):
            k[:, :, :P] = pk.index_select(0, index)
            v[:, :, :P] = pv.index_select(0, index)
        self.first = lean.logits(hidden[:, -1]).index_select(0, index)

    def step(self, tok: torch.Tensor, t: int) -> torch.Tensor:
        c = self.P + t  # completion token t sits at column P + t
        return self.lean.decode_step(tok, c, self.cos[:, c], self.sin[:, c], self.cache, self.bias)


# Rows prefilled by the built-in sampler since the process started (prompt rows run through the
# model: a prompt shared by K samples counts once); tests and benches read it.
PREFILL_COUNTS = {"rows": 0, "tokens": 0}


@torch.no_grad()
def _sample_chunk(model: nn.Module, prompt_ids: list[list[int]], pad_id: int, stop_ids: list[int],
                  cfg: SamplingConfig, greedy: bool, generator: torch.Generator | None,
                  with_logps: bool = False, share_prompts: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None, torch.Tensor | None]:
    """Sample one completion per row. Returns (ids (B, P+L), attention (B, P+L), P, and with
    ``with_logps`` the sampled tokens' log-probs and entropies (B, L), else None, None).
    ``share_prompts``: rows with the same prompt share one prefill (the same samples)."""
    from rlhf.data.collate import PromptCollator
    from rlhf.models.lean import lean_for

    device = next(model.parameters()).device
    B = len(prompt_ids)
    # Left padding: every prompt ends at column P - 1; positions count real tokens only.
    batch = PromptCollator(pad_id, "left")([{"prompt_input_ids": p} for p in prompt_ids])
    ids, attn, pos = (batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids"))
    P = ids.shape[1]
    stop = torch.tensor(stop_ids, device=device)
    lean = lean_for(model, P + cfg.max_new_tokens, cfg.engine)
    share = _shared_rows(prompt_ids) if share_prompts else None
    decoder: _LeanDecoder | _TransformersDecoder = (
        _LeanDecoder(lean, ids, attn, pos, cfg.max_new_tokens, share) if lean is not None
        else _TransformersDecoder(model, ids, attn, pos, share))
    PREFILL_COUNTS["rows"] += decoder.prefill_rows
    PREFILL_COUNTS["tokens"] += decoder.prefill_rows * P
    logits = decoder.first  # (B, V) distribution of the first completion token
    done = torch.zeros(B, dtype=torch.bool, device=device)
    new_tokens, new_attn, lps, ents = [], [], [], []
    for t in range(cfg.max_new_tokens):
        tok, lp, ent = _draw(logits, cfg, generator, greedy, with_logps)  # (B,) each
        if with_logps:
            assert lp is not None and ent is not None
            lps.append(lp)
            ents.append(ent)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        new_tokens.append(tok)
        new_attn.append((~done).long())
        done = done | torch.isin(tok, stop)
        if bool(done.all()) or len(new_tokens) == cfg.max_new_tokens:
            break
        logits = decoder.step(tok, t)
    gen = torch.stack(new_tokens, dim=1)  # (B, L)
    gen_attn = torch.stack(new_attn, dim=1)
    gen_lps = torch.stack(lps, dim=1) if with_logps else None
    gen_ents = torch.stack(ents, dim=1) if with_logps else None
    return torch.cat([ids, gen], dim=1), torch.cat([attn, gen_attn], dim=1), P, gen_lps, gen_ents


@torch.no_grad()
def sample_builtin(model: nn.Module, tokenizer: Any, prompts: Sequence[Any], prompt_ids: Sequence[list[int]],
           cfg: SamplingConfig, *, greedy: bool = False, num_samples: int | None = None,
           generator: torch.Generator | None = None, with_logps: bool = False) -> Rollout:
    """The built-in sampler (``sampling.engine`` auto / lean / transformers): ``num_samples``
    (default ``cfg.num_samples``) completions for each prompt. Call it through
    :func:`rlhf.rollout.sample`, which hands other engines' names to their engine; the arguments
    are described there."""
    if len(prompts) != len(prompt_ids):
        raise ValueError(f"sample: {len(prompts)} prompts but {len(prompt_ids)} prompt_ids")
    if not prompts:
        raise ValueError("sample: no prompts")
    K = num_samples or cfg.num_samples
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError("the tokenizer has no pad_token_id; set one (e.g. tokenizer.pad_token = eos)")
    stops = eos_ids(tokenizer, model)
    rows_prompt = [p for p in prompts for _ in range(K)]
    rows_ids = [list(ids) for ids in prompt_ids for _ in range(K)]
    was_training = model.training
    model.eval()
    try:
        chunks = [_sample_chunk(model, rows_ids[s:s + cfg.batch_size], pad, stops, cfg, greedy, generator,
                                with_logps) for s in range(0, len(rows_ids), cfg.batch_size)]
    finally:
        model.train(was_training)
    completions_tok: list[list[int]] = []
    ended: list[bool] = []
    for ids, _, p, _, _ in chunks:
        for row in ids[:, p:].tolist():
            toks, end = end_of_completion(tokenizer, row, stops, cfg.stop_strings)
            ended.append(end)
            completions_tok.append(toks)
    row_logps = row_ents = None
    if with_logps:
        row_logps, row_ents = [], []
        for _, _, _, c_lps, c_ents in chunks:
            assert c_lps is not None and c_ents is not None  # sampled with_logps
            row_logps += list(c_lps.unbind(0))
            row_ents += list(c_ents.unbind(0))
    return assemble_rollout(tokenizer, rows_prompt, rows_ids, completions_tok, ended, K,
                            next(model.parameters()).device, logps=row_logps, entropy=row_ents)
