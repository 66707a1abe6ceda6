"""A lean no-grad forward for Llama-family decoders: the hot path of a rollout.

Online RL spends about half of every step sampling, one token at a time, and at the sizes
people run on a laptop or in a quick GPU experiment that loop is bound by per-call overhead,
not arithmetic: transformers' generic forward builds an attention mask, a cache object and an
output dataclass at every token, and spends more time in Python than in matrix products. This
module runs the same computation with fewer operations:

* a key/value cache allocated once for the whole episode and written in place (no growing by
  concatenation);
* the rotary tables of every position of the episode computed once, by the model's own rotary
  module (so any rope variant it implements is honoured), and sliced per token;
* q and k rotated together, ``rotate_half`` as one ``roll`` with the sign folded into the sine;
* attention for one new token as two batched matrix products over the key/value head groups,
  with the padding mask as an additive bias built once (prompts are left-padded);
* logits for the last position only while decoding, and only for the positions a caller asks
  for when scoring.

It reads the model's weights where they are (no copies: the policy trains between rollouts) and
never builds a graph: training forwards stay transformers' own (autograd, gradient
checkpointing, DDP, LoRA). Supported: ``llama``, ``mistral``, ``qwen2`` and ``qwen3`` models
whose linear layers are plain ``nn.Linear`` (no LoRA wrappers, no quantised layers) without
module hooks (no accelerate offloading), with full attention over the lengths asked for (no
sliding window shorter than the episode) and a rope type other than ``dynamic``; for anything
else :func:`lean_unsupported` says why and callers fall back to transformers.

Equal to transformers' forward up to float rounding: tests/models/test_lean.py compares logits and
log-probs with the transformers forward for each supported architecture, with left padding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LeanLM", "lean_unsupported", "lean_for"]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _submodule(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def lean_unsupported(model: Any, max_length: int | None = None) -> str | None:
    """Why the lean forward cannot run ``model`` (a causal LM), or None when it can.

    ``max_length``: the longest sequence it will see (a sliding window shorter than that
    changes the attention pattern, which the lean forward does not implement).
    """
    if not isinstance(model, nn.Module):
        return f"{type(model).__name__} is not a torch module"
    if hasattr(model, "peft_config"):
        return "a peft (LoRA) model"
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    trunk = getattr(model, "model", None)
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if trunk is None or type(head) is not nn.Linear:
        return f"{type(model).__name__} is not a causal LM with a linear output layer"
    for name in ("embed_tokens", "norm", "rotary_emb", "layers"):
        if getattr(trunk, name, None) is None:
            return f"the trunk has no {name}"
    for i, layer in enumerate(trunk.layers):
        for name in _LINEARS:
            if type(_submodule(layer, name)) is not nn.Linear:
                return f"layer {i} {name} is {type(_submodule(layer, name)).__name__}, not nn.Linear"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type == "dynamic":
        return "dynamic rope scaling (its tables depend on the running length)"
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    sliding = window is not None and (layer_types is None or "sliding_attention" in layer_types)
    if model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        sliding = False
    if sliding and (max_length is None or max_length > window):  # type: ignore[operator]  # sliding => window set
        return f"a sliding attention window of {window} tokens"
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return f"{type(m).__name__} has forward hooks (e.g. accelerate offloading)"
    return None


def lean_for(model: Any, max_length: int | None = None, engine: str = "auto") -> LeanLM | None:
    """A :class:`LeanLM` over ``model`` if ``engine`` allows and the model is supported, else
    None (use transformers). ``model`` may be a ``ReferenceModel`` holding a separate copy.
    ``engine``: ``auto`` (lean when supported), ``lean`` (error when not), ``transformers``."""
    if engine == "transformers":
        return None
    from rlhf.models.load import ReferenceModel

    if isinstance(model, ReferenceModel):
        model = None if model.adapters_disabled else model.module
    reason = "a LoRA reference (the policy with adapters off)" if model is None else lean_unsupported(
        model, max_length)
    if reason is None:
        return LeanLM(model)
    if engine == "lean":
        raise ValueError(f"sampling.engine=lean cannot run this model: {reason}; use engine=auto")
    return None


class _LayerWeights:
    """One decoder layer's tensors: (weight, bias) pairs, (norm weight, eps) pairs, activation."""

    # Set by name in __init__ (the loop over the seven projections); declared for the type checker.
    q: tuple[torch.Tensor, torch.Tensor | None]
    k: tuple[torch.Tensor, torch.Tensor | None]
    v: tuple[torch.Tensor, torch.Tensor | None]
    o: tuple[torch.Tensor, torch.Tensor | None]
    gate: tuple[torch.Tensor, torch.Tensor | None]
    up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]

    def __init__(self, layer: Any):  # a transformers decoder layer (duck-typed: its attributes are read)
        a, m = layer.self_attn, layer.mlp
        for name, lin in (("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj), ("o", a.o_proj),
                          ("gate", m.gate_proj), ("up", m.up_proj), ("down", m.down_proj)):
            setattr(self, name, (lin.weight, lin.bias))
        self.ln1 = (layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon))
        self.ln2 = (layer.post_attention_layernorm.weight, float(layer.post_attention_layernorm.variance_epsilon))
        qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        self.q_norm = None if qn is None else (qn.weight, float(qn.variance_epsilon))
        self.k_norm = None if kn is None else (kn.weight, float(kn.variance_epsilon))
        self.act = m.act_fn


class LeanLM:
    """The lean forward over a supported causal LM's own weights (see the module docstring).

    A call sequence for one episode: :meth:`rotary` for the position grid, :meth:`new_cache`,
    :meth:`forward` on the prompt (``start=0``), then :meth:`decode_step` per new token.
    :meth:`score` runs a whole sequence without a cache.
    """

    def __init__(self, model: Any):  # a supported causal LM (lean_unsupported says which)
        reason = lean_unsupported(model, max_length=0)
        if reason is not None:
            raise ValueError(f"LeanLM cannot run this model: {reason}")
        self.model = model
        trunk = model.model
        self.embed = trunk.embed_tokens
        self.layers = list(trunk.layers)
        self.norm = trunk.norm
        self.rotary_emb = trunk.rotary_emb
        self.head = model.get_output_embeddings()
        attn = self.layers[0].self_attn
        q, k = attn.q_proj, attn.k_proj
        self.head_dim = int(getattr(attn, "head_dim", None)
                            or model.config.hidden_size // model.config.num_attention_heads)
        self.n_heads = q.out_features // self.head_dim
        self.n_kv = k.out_features // self.head_dim
        self.scaling = float(getattr(attn, "scaling", self.head_dim ** -0.5))
        # References to each layer's tensors (not copies), read once: module attribute lookups
        # cost more than the small matrix products they feed.
        self._w = [_LayerWeights(layer) for layer in self.layers]
        self._norm = (self.norm.weight, float(self.norm.variance_epsilon))

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """transformers' RMSNorm: normalise in float32, scale in the input dtype."""
        if x.dtype == torch.float32:
            return weight * (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps))
        h = x.float()
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)

    def rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin (B, T, D) for ``position_ids`` (B, T), by the model's own
        rotary module. ``rotate_half(x) * sin == x.roll(D/2) * sin_signed``."""
        probe = self.embed.weight[:1]
        cos, sin = self.rotary_emb(probe, position_ids)
        half = self.head_dim // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        return cos, sin

    def new_cache(self, batch: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values for ``length`` positions, (B, KV, T, D) per layer, allocated once."""
        shape = (batch, self.n_kv, length, self.head_dim)
        dtype = (torch.get_autocast_dtype(self.device.type) if torch.is_autocast_enabled(self.device.type)
                 else self.dtype)
        return [(torch.zeros(shape, dtype=dtype, device=self.device),
                 torch.zeros(shape, dtype=dtype, device=self.device)) for _ in self.layers]

    def _qkv(self, w: _LayerWeights, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated q (B, S, H, D), k (B, S, KV, D) and v (B, S, KV, D) of the residual stream h (B, S, E)."""
        B, S = h.shape[:2]
        D, H, KV = self.head_dim, self.n_heads, self.n_kv
        x = self._rms(h, *w.ln1)
        q = F.linear(x, *w.q).view(B, S, H, D)
        k = F.linear(x, *w.k).view(B, S, KV, D)
        v = F.linear(x, *w.v).view(B, S, KV, D)
        if w.q_norm is not None:  # qwen3: RMSNorm of each head's q and k
            q, k = self._rms(q, *w.q_norm), self._rms(k, *w.k_norm)  # type: ignore[misc]  # set together
        qk = torch.cat([q, k], dim=2)  # rotate both at once
        qk = qk * cos[:, :, None] + qk.roll(D // 2, -1) * sin[:, :, None]
        return qk[:, :, :H], qk[:, :, H:], v

    def _rest(self, w: _LayerWeights, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """The layer after attention: output projection, residual, MLP, residual."""
        h = h + F.linear(o, *w.o)
        x = self._rms(h, *w.ln2)
        return h + F.linear(w.act(F.linear(x, *w.gate)) * F.linear(x, *w.up), *w.down)

    # ------------------------------------------------------------------ whole sequences

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, key_mask: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                sequence_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, S, E) (after the last norm) of ``input_ids`` (B, S).

        ``key_mask`` (B, S) bool: real tokens (padding is never attended to); or, for packed
        rows, ``sequence_ids`` (B, S): a token attends only to earlier tokens with the same id
        (rlhf.data.collate.PackedLayout.sequence). ``cos``/``sin`` (B, S, D) from
        :meth:`rotary`. With ``cache`` the keys and values land in its first S positions (the
        prompt of an episode).
        """
        B, S = input_ids.shape
        causal = torch.ones(S, S, dtype=torch.bool, device=input_ids.device).tril()
        if sequence_ids is not None:
            allowed = sequence_ids[:, :, None] == sequence_ids[:, None, :]  # (B, S, S)
        else:
            assert key_mask is not None, "forward needs key_mask or sequence_ids"
            allowed = key_mask[:, None, :].expand(B, S, S)
        # A padding position attends to itself only: its output is never read, and a row with
        # nothing to attend to would come out NaN and poison the cache through 0 * NaN.
        mask = (causal[None] & allowed) | torch.eye(S, dtype=torch.bool, device=input_ids.device)
        mask = mask[:, None]  # (B, 1, S, S)
        h = self.embed(input_ids)
        for i, w in enumerate(self._w):
            q, k, v = self._qkv(w, h, cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, S, D)
            if cache is not None:
                cache[i][0][:, :, :S] = k
                cache[i][1][:, :, :S] = v
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling,
                                               enable_gqa=self.n_kv != self.n_heads)
            h = self._rest(w, h, o.transpose(1, 2).reshape(B, S, -1))
        return self._rms(h, *self._norm)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
              keep: slice | torch.Tensor = slice(None), sequence_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of whole sequences (no cache) at ``keep``: a slice of positions -> (B, len, V),
        or a (B, S) bool mask -> (n, V) in row-major order. Padded rows take ``attention_mask``,
        packed rows ``sequence_ids`` (see :meth:`forward`)."""
        cos, sin = self.rotary(position_ids)
        hidden = self.forward(input_ids, None if attention_mask is None else attention_mask.bool(), cos, sin,
                              sequence_ids=sequence_ids)
        return self.logits(hidden[keep] if torch.is_tensor(keep) else hidden[:, keep])

    # ------------------------------------------------------------------ one token at a time

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, column: int, cos: torch.Tensor, sin: torch.Tensor,
                    cache: list[tuple[torch.Tensor, torch.Tensor]], bias: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the next token after ``tokens`` (B,), which sit at cache column
        ``column``. ``cos``/``sin`` (B, D) for their positions; ``bias`` (B * KV, 1, T) with
        T > ``column``: 0 where a key may be attended to, -inf on padding (see :meth:`key_bias`)."""
        B = tokens.shape[0]
        D, H, KV = self.head_dim, self.n_heads, self.n_kv
        T = column + 1
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, D): broadcast over heads
        bias = bias[..., :T].to(cache[0][0].dtype)  # baddbmm wants one dtype (a no-op in fp32)
        h = F.embedding(tokens, self.embed.weight)  # (B, E)
        for w, (kc, vc) in zip(self._w, cache):
            x = self._rms(h, *w.ln1)
            q = F.linear(x, *w.q).view(B, H, D)
            k = F.linear(x, *w.k).view(B, KV, D)
            if w.q_norm is not None:
                q, k = self._rms(q, *w.q_norm), self._rms(k, *w.k_norm)  # type: ignore[misc]  # set together
            qk = torch.cat([q, k], dim=1)
            qk = qk * cos + qk.roll(D // 2, -1) * sin
            kc[:, :, column] = qk[:, H:]
            vc[:, :, column] = F.linear(x, *w.v).view(B, KV, D)
            # The H query heads as KV groups of G = H/KV (transformers' repeat_kv order: query
            # head j reads key/value head j // G): (B*KV, G, D) @ (B*KV, D, T) -> (B*KV, G, T).
            qg = qk[:, :H].reshape(B * KV, H // KV, D)
            keys = kc.view(B * KV, -1, D)[:, :T]
            att = torch.baddbmm(bias, qg, keys.transpose(1, 2), alpha=self.scaling)
            o = torch.bmm(torch.softmax(att, -1, dtype=torch.float32).to(vc.dtype), vc.view(B * KV, -1, D)[:, :T])
            h = self._rest(w, h, o.view(B, H * D))
        return F.linear(self._rms(h, *self._norm), self.head.weight, self.head.bias)

    def key_bias(self, key_mask: torch.Tensor) -> torch.Tensor:
        """The additive attention bias of :meth:`decode_step` for ``key_mask`` (B, T) bool (True
        = may be attended to): (B * KV, 1, T), 0 or -inf."""
        B, T = key_mask.shape
        bias = torch.zeros((B, T), dtype=torch.float32, device=key_mask.device).masked_fill_(~key_mask, float("-inf"))
        return bias.repeat_interleave(self.n_kv, dim=0)[:, None].contiguous()
