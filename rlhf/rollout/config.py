"""Settings of rollout sampling (``sampling``) and of the vLLM engine (``sampling.vllm``). Plain
dataclasses: importing this module never imports vLLM, so every config loads (and ``rlhf --help``
works) without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.config import ConfigError, opt

__all__ = ["SamplingConfig", "VLLMConfig", "ENGINE_NAMES", "EngineName"]

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
                "supported, else transformers); or 'vllm' (rlhf.rollout.vllm: vLLM samples, its "
                "weights synced from the trainer after every update; the trainer's own scoring "
                "forward is then 'auto'; needs the rlhf[vllm] extra)")
    vllm: VLLMConfig = opt(factory=VLLMConfig, help="the vLLM engine's settings (engine=vllm)")

    def validate(self) -> None:
        if any(not s for s in self.stop_strings):
            raise ConfigError("stop_strings", "must not contain an empty string")
