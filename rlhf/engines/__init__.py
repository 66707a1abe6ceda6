"""Moved: the rollout engines live in :mod:`rlhf.rollout` (one interface, one registry:
rlhf/rollout/engines.py). These names are kept so that existing imports keep working."""

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
)
from rlhf.rollout.interface import RolloutEngine

__all__ = ["RolloutEngine", "BuiltinEngine", "ENGINES", "engine_kind", "rollout_engine", "engine_for",
           "forward_engine", "is_builtin", "close_cached", "param_versions"]
