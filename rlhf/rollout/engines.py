"""Rollout engines: what draws the samples, behind one interface and one registry.

A recipe reads the same whichever engine runs under it::

    engine = rollout_engine(model, tokenizer, cfg.sampling)   # step 0: the engine
    ro = engine.sample(tokenizer, prompts, prompt_ids, cfg.sampling, with_logps=True)
    ...                                                       # score, update the policy
    sync = engine.sync(model)                                 # the engine sees the new weights

:data:`ENGINES` maps an engine's name to its factory; ``sampling.engine`` names one through
:func:`engine_kind` (auto / lean / transformers are the built-in sampler's forwards):

* ``builtin``: the project's own sampler, :func:`rlhf.rollout.sampler.sample_builtin`, running
  the trained model's weights in place, so ``sync`` only counts the version.
* ``vllm`` (:mod:`rlhf.rollout.vllm`): vLLM in the training process with its own copy of the
  weights; ``sync`` writes the policy's weights (LoRA merged), reloads them into vLLM and checks a
  log-prob probe against the trainer, with a timeout.

Stages that only sample (generate, eval, best-of-n, RAFT/ReST, iterative DPO, the constitutional
and hindsight recipes, labelling) call :func:`sample`, the one door: the built-in sampler, or
the cached engine of :func:`engine_for` when ``sampling.engine`` names another one (one cached
engine per model, synced again automatically if the model's parameters were changed in place
since: the parameters' version counters moved).

vLLM is an optional extra (``pip install rlhf[vllm]``): this package imports without it, and
only building a vLLM engine imports it (:func:`rlhf.rollout.vllm.import_vllm`, one clear error).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rlhf.rollout.episode import Rollout
from rlhf.rollout.interface import RolloutEngine, stamp_version
from rlhf.rollout.sampler import sample_builtin

__all__ = ["RolloutEngine", "BuiltinEngine", "ENGINES", "engine_kind", "rollout_engine", "engine_for", "sample",
           "forward_engine", "is_builtin", "close_cached", "param_versions"]


def engine_kind(engine: str) -> str:
    """The :data:`ENGINES` entry that ``sampling.engine`` names: ``builtin`` for the built-in
    sampler's forwards (auto, lean, transformers), else the name itself."""
    return "builtin" if engine in ("auto", "lean", "transformers") else engine


def is_builtin(engine: str) -> bool:
    """True for the names of the built-in sampler's forwards (auto, lean, transformers)."""
    return engine_kind(engine) == "builtin"


def forward_engine(engine: str) -> str:
    """The trainer-side forward (rlhf.models.lean.lean_for) to score rollouts with: the engine
    name itself for the built-in sampler, ``auto`` when another engine samples."""
    return engine if is_builtin(engine) else "auto"


class BuiltinEngine(RolloutEngine):
    """The project's sampler (rlhf.rollout.sampler.sample_builtin) over the trained model's own weights."""

    name = "builtin"

    def __init__(self, model: nn.Module):
        self.model = model

    def sample(self, tokenizer: Any, prompts: Sequence[Any], prompt_ids: Sequence[list[int]], cfg: Any, *,
               greedy: bool = False, num_samples: int | None = None, generator: torch.Generator | None = None,
               with_logps: bool = False) -> Rollout:
        ro = sample_builtin(self.model, tokenizer, prompts, prompt_ids, cfg, greedy=greedy, num_samples=num_samples,
                            generator=generator, with_logps=with_logps)
        return stamp_version(ro, self.version)

    def sync(self, model: nn.Module) -> dict[str, float]:
        # The sampler reads the weights where they are: nothing to copy. A different module
        # object (a re-wrapped model) simply becomes the one sampled from.
        self.model = model
        self.version += 1
        return {}


def _vllm_engine(model: nn.Module, tokenizer: Any, sampling: Any) -> RolloutEngine:
    from rlhf.rollout.vllm import VLLMEngine  # imports vLLM only when one is built
    return VLLMEngine(model, tokenizer, sampling)


# The registry: an engine's name -> its factory (model, tokenizer, sampling config) -> engine.
ENGINES: dict[str, Callable[[nn.Module, Any, Any], RolloutEngine]] = {
    "builtin": lambda model, tokenizer, sampling: BuiltinEngine(model),
    "vllm": _vllm_engine,
}


def rollout_engine(model: nn.Module, tokenizer: Any, sampling: Any) -> RolloutEngine:
    """The engine ``sampling.engine`` names (:data:`ENGINES`), loaded with ``model``'s current
    weights. A recipe that trains ``model`` calls ``engine.sync(model)`` after each update."""
    kind = engine_kind(sampling.engine)
    if kind not in ENGINES:
        raise ValueError(f"unknown rollout engine {sampling.engine!r}; expected one of "
                         f"auto, lean, transformers, {', '.join(k for k in ENGINES if k != 'builtin')}")
    return ENGINES[kind](model, tokenizer, sampling)


# One cached engine for the stages that call rlhf.rollout.sample with engine=vllm: building a
# vLLM engine costs seconds, and those stages sample in many small batches from one model.
_cached: dict[str, Any] = {}


def engine_for(model: nn.Module, tokenizer: Any, sampling: Any) -> RolloutEngine:
    """The cached engine for ``model`` (built on first use, replacing an engine of another model
    or other settings), synced first if ``model``'s parameters were modified in place since the
    engine last saw them."""
    key = (sampling.engine, sampling.vllm)
    ref = _cached.get("model")
    engine = _cached.get("engine")
    if engine is not None and _cached.get("key") == key and (ref is None or ref() is not model) \
            and engine.can_load(model):
        # Another model of the same architecture (eval's reference after its policy, the next
        # round's policy): load its weights instead of starting a second engine.
        engine.sync(model)
        _cached.update(model=weakref.ref(model), version=param_versions(model))
    elif engine is not None and (ref is None or ref() is not model or _cached.get("key") != key):
        close_cached()
        engine = None
    if engine is None:
        engine = rollout_engine(model, tokenizer, sampling)
        _cached.update(model=weakref.ref(model), engine=engine, key=key, version=param_versions(model))
    elif _cached.get("version") != param_versions(model):
        engine.sync(model)
        _cached["version"] = param_versions(model)
    return engine


def close_cached() -> None:
    """Close and forget the cached engine (frees vLLM's memory)."""
    engine = _cached.pop("engine", None)
    _cached.clear()
    if engine is not None:
        engine.close()


def param_versions(model: nn.Module) -> tuple[int, ...]:
    """The parameters' in-place version counters: every optimizer step (and any in-place write
    such as load_state_dict) moves them, so an unchanged tuple means unchanged weights."""
    return tuple(p._version for p in model.parameters())


@torch.no_grad()
def sample(model: nn.Module, tokenizer: Any, prompts: Sequence[Any], prompt_ids: Sequence[list[int]],
           cfg: Any, *, greedy: bool = False, num_samples: int | None = None,
           generator: torch.Generator | None = None, with_logps: bool = False) -> Rollout:
    """Sample ``num_samples`` (default ``cfg.num_samples``) completions for each prompt with the
    engine ``cfg.engine`` names: the built-in sampler over ``model``'s weights in place, or the
    cached engine of :func:`engine_for`.

    ``prompts`` are the original prompts (text or messages; handed to reward sources as is) and
    ``prompt_ids`` their token ids as the policy sees them (rlhf.data.tokenize.encode_prompt).
    The model is put in eval mode for sampling and its previous mode restored. ``greedy``
    takes the argmax at each step (ReMax's baseline; pass ``num_samples=1``, since every
    greedy sample of a prompt is the same). ``with_logps`` also keeps each action's log-prob and
    entropy from the sampler's own logits (``Rollout.logps`` / ``Rollout.entropy``).
    """
    if is_builtin(cfg.engine):
        return sample_builtin(model, tokenizer, prompts, prompt_ids, cfg, greedy=greedy, num_samples=num_samples,
                              generator=generator, with_logps=with_logps)
    return engine_for(model, tokenizer, cfg).sample(tokenizer, prompts, prompt_ids, cfg, greedy=greedy,
                                                    num_samples=num_samples, generator=generator,
                                                    with_logps=with_logps)
