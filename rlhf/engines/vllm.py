"""Moved to :mod:`rlhf.rollout.vllm`; kept so that existing imports keep working."""

from rlhf.rollout.vllm import EngineSyncError, VLLMEngine, engine_weights, import_vllm, trainer_logps, with_timeout

__all__ = ["VLLMEngine", "EngineSyncError", "import_vllm", "engine_weights", "with_timeout", "trainer_logps"]
