"""Rollouts: the policy acts, an engine draws the tokens, the episodes come back as a :class:`Rollout`.

The package, bottom up (each module imports only the ones above it in this list):

* :mod:`~rlhf.rollout.config`     ``SamplingConfig`` (``sampling.*``) and ``VLLMConfig`` (``sampling.vllm.*``)
* :mod:`~rlhf.rollout.episode`    the :class:`Rollout` batch (attention, completion and loss masks, the
  policy version of each token), :func:`assemble_rollout`, and the end-of-episode rule every engine
  shares (:func:`end_of_completion`: the first EOS or stop string, else the length limit)
* :mod:`~rlhf.rollout.sampler`    the built-in sampler (KV cache, inverse-CDF draws, lean forward)
* :mod:`~rlhf.rollout.scoring`    log-probs and critic values of a rollout, without gradient
* :mod:`~rlhf.rollout.interface`  :class:`RolloutEngine`, what every engine offers
* :mod:`~rlhf.rollout.vllm`       the vLLM engine (imports vLLM only when built)
* :mod:`~rlhf.rollout.engines`    the registry :data:`ENGINES`, :func:`rollout_engine`, and
  :func:`sample`, the one door the sampling-only stages call

The environment of RLHF is a bandit dressed as an MDP (docs/ppo.md): the **state** is the prompt
plus the tokens generated so far, an **action** is the next token, the **episode** ends at EOS (or
a stop string, or the length limit), and the **reward** arrives at the end (rlhf/envs).
"""

from rlhf.rollout.config import ENGINE_NAMES, EngineName, SamplingConfig, VLLMConfig
from rlhf.rollout.engines import (
    ENGINES,
    BuiltinEngine,
    close_cached,
    engine_for,
    engine_kind,
    forward_engine,
    is_builtin,
    param_versions,
    rollout_engine,
    sample,
)
from rlhf.rollout.episode import Rollout, assemble_rollout, end_of_completion, eos_ids, stop_string_cut
from rlhf.rollout.interface import RolloutEngine
from rlhf.rollout.sampler import filter_logits, inverse_cdf, sample_builtin
from rlhf.rollout.scoring import rollout_logps, rollout_values, shift_values

__all__ = ["SamplingConfig", "VLLMConfig", "EngineName", "ENGINE_NAMES", "Rollout", "sample", "sample_builtin",
           "assemble_rollout", "end_of_completion", "stop_string_cut", "filter_logits", "rollout_logps",
           "rollout_values", "shift_values", "eos_ids", "inverse_cdf", "RolloutEngine", "BuiltinEngine", "ENGINES",
           "engine_kind", "rollout_engine", "engine_for", "forward_engine", "is_builtin", "close_cached",
           "param_versions"]
