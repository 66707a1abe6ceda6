"""rlhf: align transformer language models with human (and AI) feedback.

The training stages are functions here too (``rlhf.sft``, ``rlhf.rm``, ``rlhf.dpo``,
``rlhf.ppo``, ``rlhf.best_of_n``, ...; rlhf/api.py). They are looked up lazily, so that
``import rlhf`` (and ``rlhf --help``) stays free of torch and transformers until one is called.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.6.0"

_API = ("sft", "rm", "dpo", "ppo", "best_of_n", "raft", "rest", "iterative_dpo", "constitutional", "hindsight")
__all__ = ["__version__", "Result", "run", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from rlhf.api import STAGE_FUNCTIONS
        return STAGE_FUNCTIONS[name]
    if name in ("Result", "run"):
        from rlhf import api
        return getattr(api, name)
    raise AttributeError(f"module 'rlhf' has no attribute {name!r}")
