"""Moved to :mod:`rlhf.rollout.config`; kept so that existing imports keep working."""

from rlhf.rollout.config import ENGINE_NAMES, EngineName, VLLMConfig

__all__ = ["VLLMConfig", "ENGINE_NAMES", "EngineName"]
