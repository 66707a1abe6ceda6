"""Settings of the vLLM rollout engine (``sampling.vllm``). Plain dataclasses: importing this
module never imports vLLM, so every config loads (and ``rlhf --help`` works) without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.config import opt

__all__ = ["VLLMConfig", "ENGINE_NAMES", "EngineName"]

EngineName = Literal["auto", "lean", "transformers", "vllm"]
ENGINE_NAMES = ("auto", "lean", "transformers", "vllm")


@dataclass(frozen=True)
class VLLMConfig:
    """How the vLLM engine runs (``sampling.engine: vllm``); see docs/rollout-engines.md."""

    memory_fraction: float = opt(0.3, "GPU: share of the accelerator's memory vLLM may take for weights and "
                                      "KV cache (its gpu_memory_utilization); the trainer keeps the rest",
                                 gt=0, le=1)
    cpu_kv_cache_gib: float = opt(1.0, "CPU: KV-cache size in GiB (sets VLLM_CPU_KVCACHE_SPACE unless it "
                                       "is already set)", gt=0)
    sleep: bool = opt(False, "free vLLM's weights and KV cache between rollouts (sleep level 1) and wake "
                             "it for the next; CUDA only (an error elsewhere)")
    multiprocessing: bool = opt(False, "run vLLM's engine core in a process of its own (the calling script "
                                       "then needs an `if __name__ == '__main__':` guard); false = in the "
                                       "training process")
    enforce_eager: bool = opt(False, "GPU: no CUDA graphs (faster start, slower decoding)")
    max_model_len: int | None = opt(None, "longest prompt + completion vLLM plans for; null = the model's "
                                          "max_position_embeddings", gt=0)
    weights_dir: str | None = opt(None, "folder the policy is written to at start for vLLM to load (later "
                                        "syncs hand the tensors over in memory); null = a fresh temporary "
                                        "folder (in /dev/shm where it exists), removed at the end")
    sync_timeout_s: float = opt(300.0, "a weight sync (in-place reload, then the probe) that takes longer "
                                       "fails the run with an error instead of hanging", gt=0)
    sync_check: Literal["probe", "off"] = opt(
        "probe", "after each weight sync, score a probe sequence with vLLM and with the trainer and fail "
                 "if their log-probs differ by more than sync_tolerance; off = trust the reload")
    sync_tolerance: float | None = opt(None, "largest |Δ log-prob| per probe token accepted after a sync; "
                                             "null = 1e-3 for fp32 weights, 5e-2 for bf16/fp16", gt=0)
