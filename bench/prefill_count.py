"""Work count (not timing) of the shared-prompt prefill in the built-in sampler (issue 24).

For a GRPO-like step (``prompts`` prompts per step, ``K`` samples each, one sampling batch of
``sampling.batch_size`` rows) this runs the sampler's own prefill with the prompt sharing on and
off (rlhf.rollout.sampler.PREFILL_COUNTS: prompt rows and padded prompt tokens run through the
model) and prints the counts per step, with the prefill's matmul FLOPs on SmolLM2-135M's shape
(bench/real_shape.py SHAPES: 30 layers, hidden 576, 9 / 3 heads, MLP 1536, vocabulary 49,152;
the lean forward computes the LM head at the last prompt position only). Prompts are
rlhf.testbed.reviews.make_prompts (the quickstart's and bench/ppo_vs_trl.py's), tokenized by a
tiny BPE tokenizer trained on them; the count does not depend on the model's depth or width, so
a 2-layer tiny Llama runs the sampler (max_new_tokens = 1).

    PYTHONPATH=$PWD python bench/prefill_count.py [--smoke]     # --smoke: the first setting only
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import rlhf.rollout.sampler as sampler  # noqa: E402
from rlhf.models.config import ModelConfig  # noqa: E402
from rlhf.models.load import load_causal_lm, load_tokenizer  # noqa: E402
from rlhf.models.tiny import make_tiny_checkpoint  # noqa: E402
from rlhf.rollout import SamplingConfig, sample  # noqa: E402
from rlhf.testbed.reviews import make_prompts  # noqa: E402

SMOL = {"layers": 30, "hidden": 576, "heads": 9, "kv_heads": 3, "mlp": 1536, "vocab": 49152}

# (name, prompt pool, prompts per step, K, sampling.batch_size). "quickstart": 16 prompts as the
# quickstart writes them (make_prompts over 10 subjects: a batch repeats prompts, and a repeated
# prompt shares its prefill too); "distinct": 16 different prompts (the saving is K exactly).
SETTINGS = [
    ("tiny recipe (advantage=grpo sampling.num_samples=4), quickstart prompts", "quickstart", 16, 4, 64),
    ("tiny recipe (advantage=grpo sampling.num_samples=4), distinct prompts", "distinct", 16, 4, 64),
    ("ppo_vs_trl GRPO setting (8 prompts, one sampling batch), K=4", "distinct", 8, 4, 32),
    ("ppo_vs_trl GRPO setting (8 prompts, one sampling batch), K=8", "distinct", 8, 8, 64),
]


def prefill_flops(rows: int, width: int, s: dict = SMOL) -> float:
    """Matmul FLOPs of prefilling ``rows`` left-padded prompts of ``width`` tokens: the layers'
    projections and MLP per token, causal attention scores and mixing (half of the width²), and
    the LM head at the last position of each row."""
    d, hd = s["hidden"], s["hidden"] // s["heads"]
    per_token = 2 * s["layers"] * (d * d + 2 * d * hd * s["kv_heads"] + d * d + 3 * d * s["mlp"])
    attention = 2 * 2 * s["layers"] * d * width * (width + 1) / 2  # QK^T and AV, causal half
    return rows * (width * per_token + attention + 2 * d * s["vocab"])


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the first setting only (the bench still runs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    pools = {"quickstart": make_prompts(16, seed=1),
             "distinct": list(dict.fromkeys(make_prompts(2000, seed=0, instruct=True)))[:16]}
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_checkpoint(Path(tmp) / "m", "llama", [p for ps in pools.values() for p in ps] * 4,
                                    vocab_size=300, hidden_size=32,
                                    num_layers=2, num_heads=4, seed=0)
        cfg = ModelConfig(name_or_path=str(path))
        model, tok = load_causal_lm(cfg, for_training=False), load_tokenizer(cfg)
    out = []
    for name, pool, n, K, bs in SETTINGS[:1] if a.smoke else SETTINGS:
        ps = pools[pool][:n]
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in ps]
        row = {"setting": name, "prompts": n, "distinct_prompts": len(set(ps)), "K": K, "sampling_batch_size": bs,
               "prompt_tokens_mean": round(sum(map(len, ids)) / n, 2)}
        for label, shared in (("before", False), ("after", True)):
            real = sampler._shared_rows
            if not shared:
                sampler._shared_rows = lambda rows: None  # the unshared prefill: every row its prompt
            before = dict(sampler.PREFILL_COUNTS)
            try:
                sample(model, tok, ps, ids, SamplingConfig(max_new_tokens=1, num_samples=K, batch_size=bs),
                       generator=torch.Generator().manual_seed(0))
            finally:
                sampler._shared_rows = real
            rows = sampler.PREFILL_COUNTS["rows"] - before["rows"]
            tokens = sampler.PREFILL_COUNTS["tokens"] - before["tokens"]
            row[label] = {"prefill_rows": rows, "prefill_tokens": tokens,
                          "smollm2_135m_prefill_gflop": round(prefill_flops(rows, tokens // rows) / 1e9, 2)}
        row["ratio"] = round(row["before"]["prefill_tokens"] / row["after"]["prefill_tokens"], 3)
        out.append(row)
        print(json.dumps(row))
    if a.smoke:  # the harness reads the last line: a count is a count, but mark the run
        print(json.dumps({"bench": "prefill_count", "smoke": True, "settings": out}))


if __name__ == "__main__":
    main()
