"""vLLM against the built-in sampler on the same weights: throughput, agreement, weight sync.

    .venv-vllm/bin/python bench/vllm_vs_builtin.py                          # CPU, tiny random Llama
    .venv-vllm/bin/python bench/vllm_vs_builtin.py --hidden 256 --layers 4  # a larger random Llama
    .venv-vllm/bin/python bench/vllm_vs_builtin.py --smoke    # 2 prompts x 2 samples, 4 tokens, once (no figure)
    python bench/vllm_vs_builtin.py --device cuda --dtype bf16 --policy Qwen/Qwen2.5-0.5B   # on a GPU

Prints one JSON object:

* ``tokens_per_s`` per engine: generated tokens / seconds of ``sample`` (``--prompts`` x
  ``--num-samples`` rows, ``--max-new-tokens``, log-probs kept as PPO asks), the fastest of
  ``--repeats`` after a warm-up; ``vllm_import_s`` (``import vllm``) and ``vllm_start_s``
  (writing the weights, building the engine, the first probe) separately;
* ``greedy_equal``: the fraction of rows whose greedy tokens are identical in both engines, and
  the first column where they part (rounding differences flip near-ties, more so in bf16);
* ``logp_abs_diff``: max and mean |vLLM's log-prob - the trainer's forward| over the sampled
  tokens (vLLM's sample, scored by rlhf.rollout.rollout_logps), and the mismatch KL (k3);
* ``sync_s``: seconds per weight sync (in-place reload + probe), the median of 5 after a
  perturbation of every weight (2 with ``--smoke``), and the probe's |Δ log-prob| after it.

On a GPU this is the check to run when one is lent (nothing else here needs one): it needs the
``vllm`` package (``pip install 'rlhf[vllm]'``); with two GPUs the FSDP check is separate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=None, help="a causal LM folder or hub id (default: a tiny random Llama)")
    p.add_argument("--hidden", type=int, default=64, help="tiny Llama: hidden size (head_dim 32)")
    p.add_argument("--layers", type=int, default=2, help="tiny Llama: layers")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="2 prompts x 2 samples, 4 new tokens, one repeat, 2 syncs: "
                   "checks this script (tests/engines/test_vllm.py); its timings are no figure")
    a = p.parse_args()
    from bench._bench import refuse_with_smoke

    refuse_with_smoke(p, a, ["prompts", "num_samples", "max_new_tokens", "repeats"])
    if a.smoke:
        a.prompts, a.num_samples, a.max_new_tokens, a.repeats = 2, 2, 4, 1
    torch.set_num_threads(a.threads)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # stdout carries the JSON only

    from rlhf.losses.policy import truncated_importance_weights
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.models.tiny import make_tiny_checkpoint
    from rlhf.rollout import SamplingConfig, rollout_logps, sample
    from rlhf.rollout.vllm import VLLMEngine, import_vllm, trainer_logps
    from rlhf.testbed.reviews import make_prompts, make_sft_records

    tmp = tempfile.mkdtemp(prefix="bench-vllm-")
    policy = a.policy
    if policy is None:
        texts = [r["prompt"] + " " + r["completion"] for r in make_sft_records(1000, seed=0)]
        policy = str(make_tiny_checkpoint(Path(tmp) / "tiny", "llama", texts, vocab_size=512, hidden_size=a.hidden,
                                          num_heads=max(2, a.hidden // 32), num_layers=a.layers,
                                          max_position_embeddings=512))
    mc = ModelConfig(name_or_path=policy, dtype=a.dtype)
    tok = load_tokenizer(mc)
    model = load_causal_lm(mc, for_training=False).to(a.device)
    n_params = sum(p.numel() for p in model.parameters())
    prompts = make_prompts(a.prompts, seed=1)
    ids = [tok(x)["input_ids"] for x in prompts]
    cfg = SamplingConfig(engine="vllm", num_samples=a.num_samples, max_new_tokens=a.max_new_tokens,
                         batch_size=a.prompts * a.num_samples)
    builtin_cfg = SamplingConfig(num_samples=a.num_samples, max_new_tokens=a.max_new_tokens,
                                 batch_size=a.prompts * a.num_samples)
    t0 = time.perf_counter()
    import_vllm()
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = VLLMEngine(model, tok, cfg)
    start_s = time.perf_counter() - t0

    out: dict = {"smoke": a.smoke, "device": a.device, "dtype": a.dtype,
                 "policy": a.policy or f"tiny llama h{a.hidden} l{a.layers}", "parameters": n_params,
                 "rows": a.prompts * a.num_samples, "max_new_tokens": a.max_new_tokens,
                 "threads": a.threads, "vllm_import_s": round(import_s, 2),
                 "vllm_start_s": round(start_s, 2)}
    gen = torch.Generator().manual_seed(0)
    t_b, ro_b = _timed(lambda: sample(model, tok, prompts, ids, builtin_cfg, generator=gen, with_logps=True),
                       a.repeats)
    t_v, ro_v = _timed(lambda: engine.sample(tok, prompts, ids, cfg, generator=gen, with_logps=True), a.repeats)
    out["tokens_per_s"] = {"builtin": round(float(ro_b.lengths.sum()) / t_b, 1),
                           "vllm": round(float(ro_v.lengths.sum()) / t_v, 1)}
    out["sample_s"] = {"builtin": round(t_b, 4), "vllm": round(t_v, 4)}

    g_b = sample(model, tok, prompts, ids, builtin_cfg, greedy=True, num_samples=1)
    g_v = engine.sample(tok, prompts, ids, cfg, greedy=True, num_samples=1)
    same = [torch.equal(x, y) for x, y in zip(g_b.input_ids, g_v.input_ids, strict=True)] \
        if g_b.input_ids.shape == g_v.input_ids.shape else [g_b.completions[i] == g_v.completions[i]
                                                            for i in range(len(g_b))]
    out["greedy_equal"] = round(sum(same) / len(same), 4)

    mask = ro_v.completion_mask.bool()
    mine = rollout_logps(model, ro_v)
    diff = (mine - ro_v.logps)[mask].abs()
    _, tm = truncated_importance_weights(mine, ro_v.logps, ro_v.completion_mask, cap=2.0)
    out["logp_abs_diff"] = {"max": float(diff.max()), "mean": float(diff.mean()), "tokens": int(mask.sum()),
                            "mismatch_kl": float(tm["mismatch_kl"]),
                            "capped_fraction_at_2": float(tm["capped_fraction"])}

    syncs, probes = [], []
    for i in range(2 if a.smoke else 5):
        with torch.no_grad():
            for prm in model.parameters():
                prm.add_(1e-3 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(i)).to(prm))
        r = engine.sync(model)
        syncs.append(r["sync_s"])
        probes.append(r["sync_probe_diff"])
    out["sync_s"] = round(statistics.median(syncs), 4)
    out["sync_probe_diff_max"] = max(probes)
    probe = ids[0] + ids[1]
    out["probe_after_sync"] = float((engine.engine_logps(probe) - trainer_logps(model, probe)).abs().max())
    engine.close()
    print(json.dumps(out, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
