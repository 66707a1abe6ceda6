"""Time of one AdamW step (and the gradient-norm clip) over a model's parameters: torch's default
implementation, ``foreach`` and ``fused``. Prints one JSON object.

    .venv/bin/python bench/optimizer_step.py --threads 1                 # SmolLM2-135M's shape, random weights
    .venv/bin/python bench/optimizer_step.py --model-dir DIR             # a model folder of your own
    .venv/bin/python bench/optimizer_step.py --smoke                     # a tiny model: the bench still runs

The trainer uses ``fused`` where torch has it for every parameter (rlhf.train.trainer.adamw_kwargs).
Gradients are random (the step's cost does not depend on their values); the first step, which
allocates the moments, is not timed; the median of ``--repeats`` steps is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMPLEMENTATIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def time_step(params: list, impl: str, repeats: int) -> dict:
    import torch

    opt = torch.optim.AdamW(params, lr=1e-5, **IMPLEMENTATIONS[impl])
    opt.step()  # allocates the moments
    steps, clips = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        steps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        clips.append(time.perf_counter() - t0)
    return {"step_s": round(statistics.median(steps), 4), "clip_grad_norm_s": round(statistics.median(clips), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=None, help="a causal LM folder (default: SmolLM2-135M's shape)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="a tiny model, 2 repeats: the bench still runs, no figure")
    a = p.parse_args(argv)
    from bench._bench import refuse_with_smoke

    refuse_with_smoke(p, a, ["repeats", "model_dir"])
    import torch

    from bench._bench import meta
    from rlhf.models.tiny import build_tiny_model

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model_dir:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(a.model_dir)
        shape = str(a.model_dir)
    elif a.smoke:
        model = build_tiny_model("llama", 256, hidden_size=32, num_layers=2, num_heads=4, pad_token_id=0,
                                 eos_token_id=1)
        shape, a.repeats = "tiny", 2
    else:  # SmolLM2-135M's dimensions (bench/real_shape.py)
        from transformers import LlamaConfig, LlamaForCausalLM

        from bench.real_shape import SHAPES
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in SHAPES["smollm2-135m"].items() if k != "model_type"}))
        shape = "SmolLM2-135M's shape (random weights)"
    params = [q for q in model.parameters() if q.requires_grad]
    g = torch.Generator().manual_seed(0)
    for q in params:
        q.grad = torch.randn(q.shape, generator=g) * 1e-3
    out = {"bench": "optimizer_step", **({"smoke": True} if a.smoke else {}), "meta": meta(argv),
           "model": shape, "parameters": sum(q.numel() for q in params), "tensors": len(params),
           "torch_threads": torch.get_num_threads(), "repeats": a.repeats,
           "results": {impl: time_step(params, impl, a.repeats) for impl in IMPLEMENTATIONS}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
