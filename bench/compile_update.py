"""Eager against ``torch.compile`` on the PPO family's update pass for a small policy: forward of
a packed micro-batch, the log-probs of its tokens, backward. Prints one JSON object.

    .venv/bin/python bench/compile_update.py --threads 1        # setting A's policy (bench/ppo_vs_trl.py)
    .venv/bin/python bench/compile_update.py --smoke            # a smaller model, eager only: still runs

Setting A's policy is a random Llama of 2 layers, width 128, vocabulary 512. A GRPO step there
trains 32 completions of up to 40 tokens after prompts of about 8. So each iteration packs
``--rows`` sequences of one length into one row, with restarting position ids, as the update
does. The lengths cycle through ``--lengths``, because a rollout's lengths change from step to
step. ``compile`` is ``torch.compile(model)``, which recompiles when a shape changes;
``compile-dynamic`` is ``torch.compile(model, dynamic=True)``.

Reported per mode:
- ``first_call_s``: the first iteration, compilation included;
- ``median_s`` and ``max_s``: the iterations after it;
- ``break_even_steps``: the iterations after which the compiled mode's total time (compilation
  included) falls below eager's, or null where it never does.

This is the measurement behind issue 24's note on a compiled update for small models.
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

MODES = ("eager", "compile", "compile-dynamic")


def run_mode(model, mode: str, rows: int, lengths: list[int], iters: int, vocab: int) -> dict:
    import torch

    fn = model if mode == "eager" else torch.compile(model, dynamic=mode == "compile-dynamic")

    def one(i: int) -> float:
        n = lengths[i % len(lengths)]
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(3, vocab, (1, rows * n), generator=g)
        pos = torch.arange(n).repeat(rows)[None]
        t0 = time.perf_counter()
        logits = fn(input_ids=ids, position_ids=pos, use_cache=False).logits[0, :-1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:, None])
        logps.sum().backward()
        for p in model.parameters():
            p.grad = None
        return time.perf_counter() - t0

    first = one(0)
    later = [one(i) for i in range(1, iters + 1)]
    return {"first_call_s": round(first, 3), "median_s": round(statistics.median(later), 4),
            "max_s": round(max(later), 4), "times_s": [round(t, 4) for t in later]}


def break_even(eager: dict, other: dict) -> int | None:
    """Iterations after which ``other``'s cumulative time (first call included) drops below eager's,
    at the two modes' median rates."""
    saved = eager["median_s"] - other["median_s"]
    if saved <= 0:
        return None
    extra = other["first_call_s"] - eager["first_call_s"]
    return max(0, int(extra / saved) + 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--rows", type=int, default=32, help="sequences packed into the micro-batch")
    p.add_argument("--lengths", default="40,44,48,45,41,47", help="tokens per sequence, cycled over iterations")
    p.add_argument("--iters", type=int, default=20, help="timed iterations after the first")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--smoke", action="store_true", help="width 32, 1 layer, 4 rows, eager only, 2 iterations: "
                   "the bench still runs (compiling takes half a minute), no figure")
    a = p.parse_args(argv)
    from bench._bench import refuse_with_smoke

    refuse_with_smoke(p, a, ["hidden_size", "num_layers", "rows", "iters", "modes"])
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or "eager" not in modes:
        p.error(f"--modes: {', '.join(unknown) or 'eager is needed'} (choose from {', '.join(MODES)}; "
                "eager is the baseline)")
    if a.smoke:
        a.hidden_size, a.num_layers, a.rows, a.iters, modes = 32, 1, 4, 2, ["eager"]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench._bench import meta

    if a.threads:
        torch.set_num_threads(a.threads)
    lengths = [int(x) for x in a.lengths.split(",")]
    cfg = LlamaConfig(vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=4 * a.hidden_size,
                      num_hidden_layers=a.num_layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=max(lengths), attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    results = {m: run_mode(model, m, a.rows, lengths, a.iters, a.vocab_size) for m in modes}
    for m in modes:
        if m != "eager":
            results[m]["break_even_steps"] = break_even(results["eager"], results[m])
            results[m]["median_vs_eager"] = round(results["eager"]["median_s"] / results[m]["median_s"], 3)
    out = {"bench": "compile_update", **({"smoke": True} if a.smoke else {}), "meta": meta(argv),
           "model": {"hidden_size": a.hidden_size, "num_layers": a.num_layers, "vocab_size": a.vocab_size,
                     "parameters": sum(q.numel() for q in model.parameters())},
           "rows": a.rows, "lengths": lengths, "iters": a.iters, "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "results": results}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
