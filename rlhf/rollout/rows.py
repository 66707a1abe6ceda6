"""Sampling to rows: completions of any model as plain dicts (text, ids, whether EOS ended them),
through :func:`rlhf.rollout.sample`. What `rlhf generate`, the eval stage and the testbed's
figures read."""

from __future__ import annotations

from typing import Any

__all__ = ["generate"]


def generate(model, tokenizer, prompts: list, *, data_cfg=None, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, num_samples: int = 1,
             batch_size: int = 8, seed: int = 0, engine: str = "auto", vllm: Any = None) -> list[dict]:
    """Sample ``num_samples`` completions per prompt (temperature 0 = greedy). Returns one dict
    per (prompt, sample), samples of one prompt consecutive: prompt, completion, ended_with_eos,
    num_tokens (EOS not counted), prompt_ids, completion_ids (the exact sampled ids, EOS
    included when it ended). ``batch_size`` counts prompts per batch. ``engine`` / ``vllm``: the
    rollout engine (rlhf.rollout.SamplingConfig.engine; ``vllm`` samples through rlhf.rollout.engines).

    Sampling is :func:`rlhf.rollout.sample`, the project's one sampler (the one PPO uses), with
    its own seeded generator: the global torch RNG is left alone.
    """
    import torch

    from rlhf.data.config import DataConfig
    from rlhf.data.records import PromptRecord
    from rlhf.data.tokenize import encode_prompt
    from rlhf.rollout import SamplingConfig, eos_ids, sample
    from rlhf.rollout.config import VLLMConfig

    data_cfg = data_cfg or DataConfig()
    encoded = [encode_prompt(PromptRecord(prompt=p), tokenizer, data_cfg)["prompt_input_ids"] for p in prompts]
    greedy = temperature <= 0
    cfg = SamplingConfig(num_samples=num_samples, max_new_tokens=max_new_tokens,
                         temperature=1.0 if greedy else temperature, top_p=top_p, top_k=top_k,
                         batch_size=batch_size * num_samples, engine=engine,  # type: ignore[arg-type]  # a str from the caller
                         vllm=vllm or VLLMConfig())
    stops = set(eos_ids(tokenizer, model))
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(encoded), batch_size):
        part, ids = prompts[start:start + batch_size], encoded[start:start + batch_size]
        ro = sample(model, tokenizer, part, ids, cfg, greedy=greedy, num_samples=num_samples,
                    generator=generator)
        P = ro.prompt_width
        for i in range(len(ro)):
            completion_ids = ro.input_ids[i, P:][ro.completion_mask[i, P:].bool()].tolist()
            ended = bool(ro.ended[i])
            eos_at_end = ended and bool(completion_ids) and completion_ids[-1] in stops
            out.append({"prompt": ro.prompts[i], "completion": ro.completions[i], "ended_with_eos": ended,
                        "num_tokens": len(completion_ids) - int(eos_at_end),
                        "prompt_ids": ids[i // num_samples], "completion_ids": completion_ids})
    return out
