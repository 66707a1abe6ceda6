"""Rollout engines: what draws the samples, behind one seam.

A recipe reads the same whichever engine runs under it::

    engine = rollout_engine(model, tokenizer, cfg.sampling)   # step 0: the engine
    ro = engine.sample(tokenizer, prompts, prompt_ids, cfg.sampling, with_logps=True)
    ...                                                       # score, update the policy
    sync = engine.sync(model)                                 # the engine sees the new weights

* ``builtin`` (``sampling.engine`` auto / lean / transformers): the project's own sampler,
  :func:`rlhf.rollout.sample`, running the trained model's weights in place, so ``sync`` has
  nothing to do.
* ``vllm`` (``sampling.engine: vllm``, :mod:`rlhf.engines.vllm`): vLLM in the training process
  with its own copy of the weights; ``sync`` writes the policy's weights (LoRA merged), reloads
  them into vLLM and checks a log-prob probe against the trainer, with a timeout.

Stages that only sample (generate, eval, best-of-n, RAFT/ReST, iterative DPO, the constitutional
and hindsight recipes, labelling) call :func:`rlhf.rollout.sample`, which hands the call to
:func:`engine_for` when ``sampling.engine`` names another engine: one cached engine per model,
synced again automatically if the model's parameters were changed in place since (the
parameters' version counters moved).

vLLM is an optional extra (``pip install rlhf[vllm]``): this package imports without it, and
only building a vLLM engine imports it (:func:`rlhf.engines.vllm.import_vllm`, one clear error).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["RolloutEngine", "BuiltinEngine", "rollout_engine", "engine_for", "forward_engine", "is_builtin",
           "close_cached"]


def is_builtin(engine: str) -> bool:
    """True for the names of the built-in sampler's forwards (auto, lean, transformers)."""
    return engine != "vllm"


def forward_engine(engine: str) -> str:
    """The trainer-side forward (rlhf.models.lean.lean_for) to score rollouts with: the engine
    name itself for the built-in sampler, ``auto`` when another engine samples."""
    return engine if is_builtin(engine) else "auto"


class RolloutEngine:
    """What every engine offers. ``sample`` returns a :class:`rlhf.rollout.Rollout` laid out as
    the built-in sampler's (left-padded prompts, right-padded completions, EOS kept);
    ``sync(model)`` makes the engine sample from ``model``'s current weights and returns metrics
    (seconds, probe difference); ``can_load(model)`` says whether ``sync`` can take another model
    of the same shapes; ``close`` frees what the engine holds."""

    name = "engine"

    def sample(self, tokenizer: Any, prompts: Sequence[Any], prompt_ids: Sequence[list[int]], cfg: Any, *,
               greedy: bool = False, num_samples: int | None = None, generator: torch.Generator | None = None,
               with_logps: bool = False) -> Any:
        raise NotImplementedError

    def sync(self, model: nn.Module) -> dict[str, float]:
        return {}

    def can_load(self, model: nn.Module) -> bool:
        """True when ``sync(model)`` can take ``model``'s weights (same architecture and shapes)."""
        return False

    def close(self) -> None:
        pass


class BuiltinEngine(RolloutEngine):
    """The project's sampler (rlhf.rollout.sample) over the trained model's own weights."""

    name = "builtin"

    def __init__(self, model: nn.Module):
        self.model = model

    def sample(self, tokenizer: Any, prompts: Sequence[Any], prompt_ids: Sequence[list[int]], cfg: Any, *,
               greedy: bool = False, num_samples: int | None = None, generator: torch.Generator | None = None,
               with_logps: bool = False) -> Any:
        from rlhf.rollout import sample
        return sample(self.model, tokenizer, prompts, prompt_ids, cfg, greedy=greedy, num_samples=num_samples,
                      generator=generator, with_logps=with_logps)

    def sync(self, model: nn.Module) -> dict[str, float]:
        # The sampler reads the weights where they are: nothing to copy. A different module
        # object (a re-wrapped model) simply becomes the one sampled from.
        self.model = model
        return {}


def rollout_engine(model: nn.Module, tokenizer: Any, sampling: Any) -> RolloutEngine:
    """The engine ``sampling.engine`` names, loaded with ``model``'s current weights. A recipe
    that trains ``model`` calls ``engine.sync(model)`` after each update."""
    if is_builtin(sampling.engine):
        return BuiltinEngine(model)
    from rlhf.engines.vllm import VLLMEngine
    return VLLMEngine(model, tokenizer, sampling)


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
