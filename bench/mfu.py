"""Model FLOPs utilisation (MFU): the machine's matmul FLOP/s and a DPO step's model FLOPs.

    .venv/bin/python bench/mfu.py                 # matmul FLOP/s, fp32 and bf16, as JSON
    .venv/bin/python bench/mfu.py --model DIR     # also the model's matmul parameter count

Peak: the best of ``--repeats`` timings of one large square ``torch.mm`` (n x n times n x n,
2·n³ FLOPs) per dtype, on this process's torch threads. It is the *achievable* dense matmul rate
of this machine and library build, not the vendor's paper peak; MFU against it says how much of
the step is spent outside large matmuls (small matmuls, attention, softmax, optimizer, Python).

Model FLOPs of one DPO step (Kaplan et al. 2020 / PaLM appendix B convention: 2·N FLOPs per
token forward, 4·N backward, attention score/value products added separately):

* N = the parameters used in matmuls: every weight except the input embedding table, which is
  a lookup (the LM head counts, tied or not);
* tokens = real (non-padding) tokens of the chosen + rejected rows of the step;
* policy forward + backward: 6·N·tokens; a reference forward run on the fly (``reference=online``
  / TRL without ``precompute_ref_log_probs``): + 2·N·tokens;
* attention (reported separately, ``with_attention``): per layer and token, QKᵀ and AV cost
  2·2·d_attn·t FLOPs forward for a token at position t (causal: t/2 on average is the usual
  approximation; we sum the actual positions), times 3 for forward + backward.

Padding tokens are not counted: work spent on them is waste, which MFU is meant to expose.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["matmul_flops_per_s", "matmul_params", "step_model_flops", "attention_flops"]


def matmul_flops_per_s(dtype_name: str, n: int = 2048, repeats: int = 7) -> dict:
    """Best-of-``repeats`` FLOP/s of an (n, n) @ (n, n) matmul in ``dtype_name`` (fp32 | bf16)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(2):  # warm-up: thread pool, oneDNN kernel selection
        torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    return {"dtype": dtype_name, "n": n, "repeats": repeats, "best_s": round(min(times), 5),
            "median_s": round(sorted(times)[len(times) // 2], 5),
            "flops_per_s": flops / min(times), "tflops_best": round(flops / min(times) / 1e12, 4),
            "tflops_median": round(flops / sorted(times)[len(times) // 2] / 1e12, 4),
            "threads": torch.get_num_threads()}


def machine_peak(dtypes=("fp32", "bf16"), sizes=(1024, 2048, 4096), repeats: int = 5) -> dict:
    """For each dtype, the best FLOP/s over a few square sizes (small sizes may not saturate)."""
    out = {}
    for d in dtypes:
        runs = [matmul_flops_per_s(d, n, repeats) for n in sizes]
        best = max(runs, key=lambda r: r["flops_per_s"])
        out[d] = {"flops_per_s": best["flops_per_s"], "tflops": best["tflops_best"], "best_n": best["n"],
                  "by_size": {r["n"]: {"tflops_best": r["tflops_best"], "tflops_median": r["tflops_median"]}
                              for r in runs},
                  "threads": best["threads"]}
    return out


def matmul_params(model) -> int:
    """Parameters used in matmuls: all, minus the input embedding table (unless it is also the
    output head, i.e. tied, in which case it is a matmul weight and counts once)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel()
    return total if tied else total - emb.numel()


def step_model_flops(n_matmul: int, tokens: int, online_reference: bool) -> float:
    """6·N·tokens (policy forward + backward), + 2·N·tokens for an on-the-fly reference forward."""
    return (6.0 + (2.0 if online_reference else 0.0)) * n_matmul * tokens


def attention_flops(lengths: list[int], num_layers: int, attn_dim: int, online_reference: bool) -> float:
    """QKᵀ and AV products of causal attention, summed over each row's real positions:
    forward 2·2·attn_dim·(t+1) per layer for the token at position t; backward twice that."""
    per_fwd = sum(4.0 * attn_dim * (L * (L + 1) / 2) for L in lengths) * num_layers
    return per_fwd * (3.0 + (1.0 if online_reference else 0.0))


def describe_model(path: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    c = model.config
    total = sum(p.numel() for p in {p.data_ptr(): p for p in model.parameters()}.values())
    return {"params_total": total, "params_matmul": matmul_params(model), "num_layers": c.num_hidden_layers,
            "hidden_size": c.hidden_size,
            "attn_dim": c.num_attention_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
            "vocab_size": c.vocab_size, "intermediate_size": getattr(c, "intermediate_size", None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--sizes", default="1024,2048,4096")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--model", default=None, help="a model folder: also print its parameter counts")
    p.add_argument("--smoke", action="store_true", help="does it still run? (fp32, n = 64, one repeat; no figures)")
    a = p.parse_args(argv)
    if a.smoke:
        a.dtypes, a.sizes, a.repeats = "fp32", "64", 1
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    out = {"bench": "mfu_peak", "smoke": a.smoke, "torch": torch.__version__,
           "peak": machine_peak(a.dtypes.split(","), [int(s) for s in a.sizes.split(",")], a.repeats)}
    if a.model:
        out["model"] = describe_model(a.model)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
