"""Rollouts: the policy acts in the RLHF environment.

The environment of RLHF is a bandit dressed as an MDP (see docs/ppo.md): the **state** is the
prompt plus the tokens generated so far, an **action** is the next token, the **episode** ends
at EOS (or a stop string, or the length limit), and the **reward** arrives at the end (the
reward source's score), with a per-token KL penalty added by the recipe.

:func:`sample` runs one batched episode per (prompt, sample) with the KV cache and returns a
:class:`Rollout`: prompts left-padded so that every prompt ends at the same column ``P`` and
generation starts there, completions right-padded after it::

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rlhf.config import ConfigError, opt
from rlhf.engines.config import EngineName, VLLMConfig
from rlhf.logprobs import entropy_from_logp

__all__ = ["SamplingConfig", "Rollout", "sample", "assemble_rollout", "filter_logits", "rollout_logps",
           "rollout_values", "eos_ids", "inverse_cdf"]


@dataclass(frozen=True)
class SamplingConfig:
    num_samples: int = opt(1, "completions sampled per prompt (the group size of grpo, dr_grpo and "
                              "rloo, which need >= 2)", gt=0)
    max_new_tokens: int = opt(64, "length limit of a completion in tokens (the episode is cut there)", gt=0)
    temperature: float = opt(1.0, "sampling temperature; policy and reference log-probs are computed "
                                  "at the same temperature", gt=0)
    top_p: float = opt(1.0, "nucleus sampling: keep the smallest set of tokens with this total "
                            "probability; 1 = off", gt=0, le=1)
    top_k: int = opt(0, "keep only the k most likely tokens; 0 = off", ge=0)
    stop_strings: list[str] = opt(factory=list, help="also end a completion when its text contains "
                                                     "one of these (kept in the completion, like EOS)")
    batch_size: int = opt(64, "sequences generated together (one KV cache)", gt=0)
    engine: EngineName = opt(
        "auto", "the rollout engine: the built-in sampler with the forward used for sampling and "
                "no-grad scoring: 'lean' (rlhf.models.lean: Llama-family models, fewer ops per "
                "token), 'transformers' (the model's own forward), 'auto' (lean where the model is "
                "supported, else transformers); or 'vllm' (rlhf.engines.vllm: vLLM samples, its "
                "weights synced from the trainer after every update; the trainer's own scoring "
                "forward is then 'auto'; needs the rlhf[vllm] extra)")
    vllm: VLLMConfig = opt(factory=VLLMConfig, help="the vLLM engine's settings (engine=vllm)")

    def validate(self) -> None:
        if any(not s for s in self.stop_strings):
            raise ConfigError("stop_strings", "must not contain an empty string")


@dataclass
class Rollout:
    """A batch of finished episodes. Tensors are (B, T) with T = P + L (prompt width P, longest
    completion L) unless noted; row ``i`` came from ``prompts[i]`` and the ``group_size`` rows
    of one prompt are consecutive."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_mask: torch.Tensor  # 1 on generated tokens, EOS included
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


_CACHE_KWARG: dict[type, str] = {}


def _cache_kwarg(model: nn.Module) -> str:
    """The forward's keyword for the KV cache: ``cache`` since transformers 5.2x (where
    ``past_key_values`` is deprecated, to be removed in 5.40), ``past_key_values`` before.
    Looked up once per model class."""
    cls = type(model)
    if cls not in _CACHE_KWARG:
        import inspect
        params = inspect.signature(cls.forward).parameters
        _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[cls]


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


class _TransformersDecoder:
    """Next-token logits through the model's own forward and a DynamicCache."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor):
        self.model, self.attn, self.next_pos = model, attn, pos[:, -1] + 1
        self.cache, self.cache_kwarg = _new_cache(model), _cache_kwarg(model)
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
    padding bias of the whole episode are made once."""

    def __init__(self, lean, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, max_new_tokens: int):
        B, P = ids.shape
        T = P + max_new_tokens
        self.lean, self.P = lean, P
        steps = torch.arange(1, max_new_tokens + 1, device=ids.device)
        self.cos, self.sin = lean.rotary(torch.cat([pos, pos[:, -1:] + steps], dim=1))  # (B, T, D)
        self.cache = lean.new_cache(B, T)
        keys = torch.cat([attn.bool(), torch.ones((B, max_new_tokens), dtype=torch.bool, device=ids.device)], 1)
        self.bias = lean.key_bias(keys)
        hidden = lean.forward(ids, attn.bool(), self.cos[:, :P], self.sin[:, :P], self.cache)
        self.first = lean.logits(hidden[:, -1])

    def step(self, tok: torch.Tensor, t: int) -> torch.Tensor:
        c = self.P + t  # completion token t sits at column P + t
        return self.lean.decode_step(tok, c, self.cos[:, c], self.sin[:, c], self.cache, self.bias)


@torch.no_grad()
def _sample_chunk(model: nn.Module, prompt_ids: list[list[int]], pad_id: int, stop_ids: list[int],
                  cfg: SamplingConfig, greedy: bool, generator: torch.Generator | None,
                  with_logps: bool = False) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None,
                                                     torch.Tensor | None]:
    """Sample one completion per row. Returns (ids (B, P+L), attention (B, P+L), P, and with
    ``with_logps`` the sampled tokens' log-probs and entropies (B, L), else None, None)."""
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
    decoder = (_LeanDecoder(lean, ids, attn, pos, cfg.max_new_tokens) if lean is not None
               else _TransformersDecoder(model, ids, attn, pos))
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


def _stop_string_cut(tokenizer: Any, tokens: list[int], stop_strings: Sequence[str]) -> int | None:
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


@torch.no_grad()
def sample(model: nn.Module, tokenizer: Any, prompts: Sequence[Any], prompt_ids: Sequence[list[int]],
           cfg: SamplingConfig, *, greedy: bool = False, num_samples: int | None = None,
           generator: torch.Generator | None = None, with_logps: bool = False) -> Rollout:
    """Sample ``num_samples`` (default ``cfg.num_samples``) completions for each prompt.

    ``prompts`` are the original prompts (text or messages; handed to reward sources as is) and
    ``prompt_ids`` their token ids as the policy sees them (rlhf.data.tokenize.encode_prompt).
    The model is put in eval mode for sampling and its previous mode restored. ``greedy``
    takes the argmax at each step (ReMax's baseline; pass ``num_samples=1``, since every
    greedy sample of a prompt is the same). ``with_logps`` also keeps each action's log-prob and
    entropy from the sampler's own logits (``Rollout.logps`` / ``Rollout.entropy``).
    """
    if len(prompts) != len(prompt_ids):
        raise ValueError(f"sample: {len(prompts)} prompts but {len(prompt_ids)} prompt_ids")
    if not prompts:
        raise ValueError("sample: no prompts")
    if cfg.engine == "vllm":  # another engine behind the same call (rlhf/engines)
        from rlhf.engines import engine_for
        return engine_for(model, tokenizer, cfg).sample(tokenizer, prompts, prompt_ids, cfg, greedy=greedy,
                                                        num_samples=num_samples, generator=generator,
                                                        with_logps=with_logps)
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
            # The episode ends at the first EOS (kept: it is an action the policy took) ...
            cut = next((k + 1 for k, t in enumerate(row) if t in stops), None)
            # ... or at a stop string (HF-style), else at the length limit.
            if cut is None:
                cut = _stop_string_cut(tokenizer, row, cfg.stop_strings)
            ended.append(cut is not None)
            completions_tok.append(row[:cut] if cut is not None else row)
    row_logps = row_ents = None
    if with_logps:
        row_logps, row_ents = [], []
        for _, _, _, c_lps, c_ents in chunks:
            assert c_lps is not None and c_ents is not None  # sampled with_logps
            row_logps += list(c_lps.unbind(0))
            row_ents += list(c_ents.unbind(0))
    return assemble_rollout(tokenizer, rows_prompt, rows_ids, completions_tok, ended, K,
                            next(model.parameters()).device, logps=row_logps, entropy=row_ents)


def assemble_rollout(tokenizer: Any, rows_prompt: list[Any], rows_ids: list[list[int]],
                     completions_tok: list[list[int]], ended: list[bool], group_size: int,
                     device: torch.device, logps: Sequence[torch.Tensor] | None = None,
                     entropy: Sequence[torch.Tensor] | None = None) -> Rollout:
    """The :class:`Rollout` of finished episodes, whichever engine drew them: row i is prompt
    ``rows_ids[i]`` (left-padded to the widest prompt) then ``completions_tok[i]`` (its sampled
    ids, cut at EOS / a stop string, right-padded). ``logps`` / ``entropy``: per row, a 1-D
    tensor holding at least that row's completion length of values (the first n are used)."""
    from rlhf.data.collate import _pad

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
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0).to(device),
        completion_mask=comp_mask.to(device), ended=torch.tensor(ended, device=device),
        prompt_width=P, prompts=list(rows_prompt), completions=texts, group_size=group_size,
        logps=grid(logps) if logps is not None else None, entropy=grid(entropy) if entropy is not None else None)


# --------------------------------------------------------------------------- scoring the rollout


@torch.no_grad()
def rollout_logps(model: Any, rollout: Rollout, temperature: float = 1.0, batch_size: int = 64,
                  with_entropy: bool = False, engine: str = "auto", packed: bool = False
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, T) of the rollout's completion tokens under ``model`` (a policy
    or a ``ReferenceModel``), at ``temperature``, aligned with ``completion_mask``; 0 wherever
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
            lp, e = _packed_logps(model, lean, inputs, rollout.completion_mask[rows], temperature, with_entropy)
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
        real = rollout.completion_mask[rows, P:]  # 0 after EOS too, as in the packed layout
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
