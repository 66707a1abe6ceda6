"""The rollout's no-grad work, engine by engine: sampling and scoring a rollout with the lean
forward (rlhf.models.lean) against transformers' own forward, padded against packed.

    .venv/bin/python bench/sampler.py --threads 1                       # tiny random Llama
    .venv/bin/python bench/sampler.py --threads 1 --policy runs/quickstart/sft/final

Prints one JSON object: milliseconds per call (the fastest of ``--repeats`` after a warm-up) of
``rlhf.rollout.sample`` (``--prompts`` x ``--num-samples`` rows, ``--max-new-tokens``, with
the sampler's log-probs as PPO asks for them) and of ``rlhf.rollout.rollout_logps`` over that
rollout (the reference pass), per engine; and how far the engines' numbers are apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(min(times) * 1000, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=None, help="a causal LM folder (default: a tiny random Llama)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="does it still run? (2 prompts x 2, 4 tokens; no figures)")
    a = p.parse_args()
    if a.smoke:
        a.prompts, a.num_samples, a.max_new_tokens, a.repeats = 2, 2, 4, 1
    torch.set_num_threads(a.threads)

    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.rollout import SamplingConfig, rollout_logps, sample
    from rlhf.testbed.reviews import make_prompts

    with tempfile.TemporaryDirectory() as tmp:
        policy = a.policy
        if policy is None:
            from rlhf.models.tiny import make_tiny_checkpoint
            from rlhf.testbed.reviews import make_sft_records

            texts = [r["prompt"] + " " + r["completion"] for r in make_sft_records(2000, seed=a.seed)]
            policy = make_tiny_checkpoint(Path(tmp) / "policy", "llama", texts,
                                          vocab_size=512, hidden_size=128, num_layers=2, num_heads=4,
                                          max_position_embeddings=128)
        mcfg = ModelConfig(name_or_path=str(policy))
        model, tok = load_causal_lm(mcfg, for_training=False), load_tokenizer(mcfg)
        model.eval()
        prompts = make_prompts(a.prompts, seed=a.seed)
        ids = [tok(x, add_special_tokens=False)["input_ids"] for x in prompts]

        out: dict = {"bench": "sampler", "smoke": a.smoke, "argv": sys.argv[1:],
                     "policy": str(a.policy or "tiny random llama"),
                     "rows": a.prompts * a.num_samples, "max_new_tokens": a.max_new_tokens,
                     "torch_threads": torch.get_num_threads(), "ms": {}}
        rollouts = {}
        for engine in ("transformers", "lean"):
            cfg = SamplingConfig(num_samples=a.num_samples, max_new_tokens=a.max_new_tokens, engine=engine)

            def draw(cfg=cfg):
                return sample(model, tok, prompts, ids, cfg, generator=torch.Generator().manual_seed(a.seed),
                              with_logps=True)

            out["ms"][f"sample/{engine}"] = best_ms(draw, a.repeats)
            rollouts[engine] = ro = draw()
            for packed in (False, True):
                out["ms"][f"rollout_logps/{engine}/{'packed' if packed else 'padded'}"] = best_ms(
                    lambda e=engine, pk=packed, r=ro: rollout_logps(model, r, 1.0, engine=e, packed=pk), a.repeats)
        ro = rollouts["lean"]
        mask = ro.completion_mask.bool()
        ref = rollout_logps(model, ro, 1.0, engine="transformers")
        out["completion_length_mean"] = round(float(ro.lengths.float().mean()), 2)
        out["same_tokens_as_transformers"] = bool(torch.equal(ro.input_ids, rollouts["transformers"].input_ids))
        out["max_abs_diff_logps"] = {
            "sampler_lean_vs_transformers_forward": float((ro.logps - ref)[mask].abs().max()),
            "lean_packed_vs_transformers_padded": float(
                (rollout_logps(model, ro, 1.0, engine="lean", packed=True) - ref)[mask].abs().max())}
        out["speedup"] = {
            "sample": round(out["ms"]["sample/transformers"] / out["ms"]["sample/lean"], 2),
            "rollout_logps": round(out["ms"]["rollout_logps/transformers/padded"]
                                   / out["ms"]["rollout_logps/lean/packed"], 2)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
