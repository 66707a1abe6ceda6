"""SFT training throughput: tokens/s and examples/s of the optimizer step, and peak memory.

    .venv/bin/python bench/sft_throughput.py [--size tiny|20m] [--dtype fp32|bf16|autocast]
                                             [--batch 8] [--max-length 512] [--steps 10]
    .venv/bin/python bench/sft_throughput.py --smoke    # 1 timed step of 2 x 32 tokens: no figure

Prints one JSON object. The model is a random-weight Llama built locally (no download); the
data are built-in instructions padded/truncated so that every row has ``--max-length``
tokens of which half are completion, so the numbers measure the step, not the data.
Timing starts after 2 warm-up steps. Peak memory is the process's max RSS (Linux).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {  # (hidden, layers, heads, intermediate)
    "tiny": (64, 2, 4, 256),
    "20m": (384, 6, 6, 1536),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--dtype", choices=["fp32", "bf16", "autocast"], default="fp32",
                   help="bf16 = weights in bf16; autocast = fp32 weights, bf16 autocast")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--smoke", action="store_true", help="tiny, 2 x 32 tokens, 1 timed step: the bench still runs")
    a = p.parse_args()
    if a.smoke:
        a.size, a.batch, a.max_length, a.steps = "tiny", 2, 32, 1
    torch.set_num_threads(a.threads)

    from rlhf.config import load_config
    from rlhf.models.tiny import build_tiny_model, tiny_corpus, train_tokenizer
    from rlhf.recipes.sft import SFTConfig, _loss, _units
    from rlhf.train.trainer import Trainer

    hidden, layers, heads, inter = SIZES[a.size]
    tok = train_tokenizer(tiny_corpus(2000), vocab_size=2048 if a.size == "20m" else 512,
                          model_max_length=a.max_length)
    model = build_tiny_model("llama", len(tok), hidden_size=hidden, num_layers=layers, num_heads=heads,
                             intermediate_size=inter, max_position_embeddings=a.max_length,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    T = a.max_length
    g = torch.Generator().manual_seed(0)
    n_examples = a.batch * (a.steps + 2)
    examples = []
    for _ in range(n_examples):
        ids = torch.randint(3, len(tok), (T,), generator=g).tolist()
        examples.append({"input_ids": ids, "completion_mask": [0] * (T // 2) + [1] * (T - T // 2)})

    def collate(rows):
        ids = torch.tensor([r["input_ids"] for r in rows])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "completion_mask": torch.tensor([r["completion_mask"] for r in rows]),
                "position_ids": torch.arange(T).expand(len(rows), T)}

    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(SFTConfig, None, [
            f"output_dir={Path(d) / 'run'}", "model.name_or_path=unused", "data.train=unused",
            f"train.batch_size={a.batch}", f"train.max_steps={a.steps + 2}", "train.progress=false",
            f"train.mixed_precision={'bf16' if a.dtype == 'autocast' else 'no'}"])
        trainer = Trainer(cfg.train, cfg.output_dir, cfg, stage="sft")
        trainer.setup(model, num_examples=len(examples))
        times = []
        for _step, micro in trainer.steps(examples, collate):
            t0 = time.perf_counter()
            trainer.optimize(micro, _units, _loss)
            times.append(time.perf_counter() - t0)
    timed = times[2:]
    sec = sum(timed)
    tokens = a.batch * T * len(timed)
    # Model FLOPs of one training token: 6 x parameters (forward + backward), plus attention
    # 12 x layers x hidden x T (Kaplan et al. 2020 / PaLM appendix B).
    flops_per_token = 6 * n_params + 12 * layers * hidden * T
    smoke = {"smoke": True} if a.smoke else {}
    print(json.dumps({
        "bench": "sft_throughput", **smoke, "size": a.size, "params": n_params, "dtype": a.dtype,
        "batch": a.batch, "max_length": T, "steps_timed": len(timed), "threads": a.threads,
        "tokens_per_s": round(tokens / sec, 1), "examples_per_s": round(a.batch * len(timed) / sec, 3),
        "step_s_median": round(sorted(timed)[len(timed) // 2], 4),
        "model_tflops_per_s": round(tokens * flops_per_token / sec / 1e12, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch": torch.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
