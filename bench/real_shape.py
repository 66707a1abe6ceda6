"""rlhf against TRL on a real model's SHAPE: DPO (full and LoRA), reward model and GRPO.

    .venv/bin/python bench/real_shape.py --threads 1 --out bench/results/real_shape.json
    .venv/bin/python bench/real_shape.py --profile --threads 1     # where one DPO step's time goes
    .venv/bin/python bench/real_shape.py --smoke                   # does it still run? (no figures)
    .venv/bin/python bench/real_shape.py --pairings grpo,rm --steps 4 --threads 1 --out ...   # some of them

With --out, the JSON is written after each pairing (marked ``partial`` until the last), so a run
that is stopped keeps the pairings it finished. The reward-model pairing is speed-only here
(``rm_vs_trl.py --eval-pairs 0``): a random model's held-out accuracy after a few steps says
nothing, and scoring the held-out pairs at this shape takes longer than the training runs.

The model is a random Llama with SmolLM2-135M-Instruct's configuration (``SHAPES``: hidden 576,
30 layers, 9 query / 3 key-value heads, MLP 1536, vocabulary 49,152, tied embeddings, RoPE θ 1e5):
speed depends on the shape, not on the weights. ``--check-config FILE`` compares ``SHAPES`` with
a real config.json (e.g. the downloaded model's). The tokenizer is a byte-level BPE trained on the
HH text (8,192 entries); the model's vocabulary stays 49,152, so the LM head and the log-softmax
cost what the real model's do.

Each pairing is the existing side-by-side bench pointed at this folder, so everything those hold
equal (data, order, tokens, optimiser, precision, logging) holds here too, and so do their rules
(bench/_bench.py): CPU share per run, interleaved repeats, medians of the clean ones, ratios
refused without a clean run on both sides, MFU only against the matmul rate measured in the run's
own process:

* DPO full and DPO LoRA (r 8, attention + MLP projections): bench/dpo_vs_trl.py --model-dir [--lora-r 8]
* reward model: bench/rm_vs_trl.py --model-dir (on the pairs TRL keeps)
* GRPO: bench/ppo_vs_trl.py --algos grpo --policy

Tokens/s: DPO = pairs/s x real tokens per pair; RM = pairs/s x real tokens per pair of TRL's kept
pairs; GRPO = episodes/s x mean completion length (generated tokens). Peak RSS per side as the
benches report it. ``--profile`` runs one DPO training step of the rlhf side in this process under
torch.profiler (the ops that take the time, the LM head's share) and the head's peak memory with
and without the chunked log-softmax (rlhf.logprobs.chunked_head_logps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _bench import CpuWindow, _status, reset_peak_rss, trl_python, write_json  # noqa: E402

HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

# HuggingFaceTB/SmolLM2-135M-Instruct's config.json, the fields that set the cost.
SHAPES = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
                     "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 100000.0,
                     "rms_norm_eps": 1e-5, "hidden_act": "silu", "max_position_embeddings": 8192},
}


def check_config(shape: dict, path: Path) -> dict:
    """Fields of ``shape`` that differ from a real config.json (empty: the shape is the model's)."""
    real = json.loads(path.read_text())
    return {k: {"shape": v, "real": real.get(k)} for k, v in shape.items() if real.get(k) != v}


def build(out: Path, shape_name: str, layers: int | None, texts: list[str], seed: int = 0) -> Path:
    """A random model of the shape (``layers`` overrides the depth, for smoke runs) with a BPE
    tokenizer trained on ``texts``; saved as an ordinary Hugging Face folder."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.models.load import save_model
    from rlhf.models.tiny import train_tokenizer

    spec = {k: v for k, v in SHAPES[shape_name].items() if k != "model_type"}
    if layers:
        spec["num_hidden_layers"] = layers
    tok = train_tokenizer(texts, 8192, model_max_length=spec["max_position_embeddings"])
    cfg = LlamaConfig(**spec, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    save_model(model, tok, out)
    return out


def _run(cmd: list[str]) -> dict:
    print("+ " + " ".join(cmd), file=sys.stderr)
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {p.stderr[-3000:]}", "command": " ".join(cmd)}
    text = p.stdout.strip()
    i = text.rfind("\n{")  # the bench's JSON is the last thing it prints
    return json.loads(text[i + 1:] if i >= 0 else text)


def _tokens_per_pair(model_dir: Path, pairs_file: Path, max_length: int) -> float:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    n = total = 0
    for line in pairs_file.read_text().splitlines():
        r = json.loads(line)
        for side in ("chosen", "rejected"):
            total += min(max_length, len(tok(r["prompt"] + r[side] + tok.eos_token)["input_ids"]))
        n += 1
    return total / max(1, n)


PAIRINGS = ("dpo_full", "dpo_lora", "rm", "grpo")


def pairings(a, model_dir: Path, save=lambda out: None) -> dict:
    """Run the pairings named in ``a.pairings``; ``save(out)`` after each one (a kill keeps the finished ones)."""
    py = sys.executable
    common = ["--threads", str(a.threads)] if a.threads else []
    smoke = ["--smoke"] if a.smoke else []
    out: dict = {}
    # (a smoke run skips DPO full: bench/dpo_vs_trl.py's own smoke covers that path, LoRA covers --model-dir)
    for name, lora in (("dpo_full", 0), ("dpo_lora", 8))[1 if a.smoke else 0:]:
        if name not in a.pairings:
            continue
        r = _run([py, "bench/dpo_vs_trl.py", "--model-dir", str(model_dir), "--lora-r", str(lora),
                  "--precisions", "fp32", "--references", "cached", "--steps", str(a.steps),
                  "--repeats", str(a.repeats), "--batch-size", "4", "--max-length", str(a.max_length),
                  "--data", str(a.data), "--work", str(a.work / name), "--no-curves", "--matmul-n", "1024",
                  "--sides", a.sides, *common, *smoke])
        if "error" not in r:
            m = next(iter(r["models"].values()))
            per_pair = m["tokens_per_step_mean"] / r["batch_size"]  # real tokens of a pair (chosen + rejected)
            m["tokens_per_pair"] = round(per_pair, 1)
            for run in m["runs"].values():
                if run.get("pairs_per_s"):
                    run["tokens_per_s"] = round(run["pairs_per_s"] * per_pair, 1)
        out[name] = r
        save(out)
    if "grpo" in a.pairings:
        out["grpo"] = _grpo_pairing(a, model_dir, common, smoke)
        save(out)
    if "rm" in a.pairings:
        out["rm"] = _rm_pairing(a, model_dir, common, smoke)
    return out


def _rm_pairing(a, model_dir: Path, common: list[str], smoke: list[str]) -> dict:
    py = sys.executable
    rm_work = a.work / "rm"
    # Speed only: the held-out accuracy of a random model after a few steps says nothing, and scoring
    # the held-out pairs with this shape takes longer than the training runs.
    r = _run([py, "bench/rm_vs_trl.py", "--model-dir", str(model_dir), "--precisions", "fp32",
              "--max-steps", str(a.steps), "--repeats", str(a.repeats), "--batch-size", "8",
              "--max-length", str(a.max_length), "--data", str(a.data), "--out", str(rm_work),
              "--sides", a.sides, *common, *(smoke or ["--eval-pairs", "0"])])
    if "error" not in r and (rm_work / "train_trl_kept.jsonl").exists():
        per_pair = _tokens_per_pair(model_dir, rm_work / "train_trl_kept.jsonl", r["max_length"])
        r["tokens_per_pair_trl_kept"] = round(per_pair, 1)
        for row in r["results"].values():
            for side in ("ours_same", "trl"):
                if row.get(side, {}).get("pairs_per_s"):
                    row[side]["tokens_per_s"] = round(row[side]["pairs_per_s"] * per_pair, 1)
    return r


def _grpo_pairing(a, model_dir: Path, common: list[str], smoke: list[str]) -> dict:
    py = sys.executable
    r = _run([py, "bench/ppo_vs_trl.py", "--algos", "grpo", "--policy", str(model_dir), "--steps", str(a.steps),
              "--repeats", str(a.repeats), "--max-length", str(a.max_length), "--work", str(a.work / "grpo"),
              "--sides", a.sides, *common, *smoke])
    if "error" not in r:
        for run in r["runs"].values():
            if run.get("episodes_per_s") and run.get("response_length_mean"):
                run["generated_tokens_per_s"] = round(run["episodes_per_s"] * run["response_length_mean"], 1)
    return r


def profile(a, model_dir: Path) -> dict:
    """One DPO-shaped training step of the rlhf policy on the shape, under torch.profiler: the
    top ops by self CPU time, the LM head's share (matmuls whose output has the vocabulary as a
    dimension), and the peak RSS of the step with the head chunked (the default) and whole."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    from transformers import AutoModelForCausalLM

    import rlhf.logprobs as L

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    V = model.config.vocab_size
    B, T, P = 8, a.max_length, a.max_length // 2  # 4 pairs: 8 rows, the first half of each is the prompt
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, 8192, (B, T), generator=g),
             "attention_mask": torch.ones(B, T, dtype=torch.long),
             "completion_mask": torch.zeros(B, T, dtype=torch.long)}
    batch["completion_mask"][:, P:] = 1

    def step() -> None:
        sums, _ = L.packed_sequence_logps(model, batch)
        sums.sum().backward()
        model.zero_grad(set_to_none=True)

    if a.peak_child:  # one step in a fresh process: how far its RSS rises above the loaded model's
        if a.peak_child == "whole":
            L.CHUNK_ELEMENTS = 1 << 62
        reset_peak_rss()
        base = _status("VmRSS") / 1024
        with CpuWindow(torch.get_num_threads()) as w:
            step()
        return {**w.record(), "peak_rss_above_loaded_model_mib": round(_status("VmHWM") / 1024 - base, 1)}
    out: dict = {"rows": B, "tokens_per_row": T, "completion_tokens": int(batch["completion_mask"][:, 1:].sum()),
                 "vocab": V, "chunk_elements": L.CHUNK_ELEMENTS, "threads": torch.get_num_threads()}
    for name in ("chunked", "whole"):
        r = _run([sys.executable, __file__, "--profile", "--peak-child", name, "--max-length", str(a.max_length),
                  "--threads", str(a.threads), "--layers", str(a.layers or 0), "--work", str(a.work),
                  "--data", str(a.data)])
        out[f"step_{name}"] = r.get("profile", r)
    step()  # warm-up
    with tprofile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    ka = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in ka)
    head = sum(e.self_cpu_time_total for e in ka
               if e.key in ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear")
               and any(V in (s or []) for s in (e.input_shapes or [])))
    by_op: dict[str, float] = {}
    calls: dict[str, int] = {}
    for e in ka:
        by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total
        calls[e.key] = calls.get(e.key, 0) + e.count
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:15]
    out["profile"] = {"self_cpu_ms_total": round(total / 1e3, 1),
                      "lm_head_matmul_share": round(head / total, 3) if total else None,
                      "ops_total": sum(calls.values()),
                      "top_ops": [{"op": k, "calls": calls[k], "share": round(v / total, 3)} for k, v in top],
                      "note": "shares of self CPU time within one step: comparable under load, unlike seconds"}
    out["rm_profile"] = _rm_profile(model_dir, batch)
    return out


def _rm_profile(model_dir: Path, batch: dict) -> dict:
    """The reward model's training forward + backward (packed rows, score at the last token) on the
    same rows: top ops by self CPU time and the op count (per-op overhead is what fewer, larger ops
    would save)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    from transformers import AutoModelForSequenceClassification

    from rlhf.models.load import packed_last_token_scores

    rm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32,
                                                            attn_implementation="sdpa")

    def step() -> None:
        packed_last_token_scores(rm, batch["input_ids"], batch["attention_mask"]).sum().backward()
        rm.zero_grad(set_to_none=True)

    step()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    top = sorted(ka, key=lambda e: -e.self_cpu_time_total)[:12]
    return {"self_cpu_ms_total": round(total / 1e3, 1), "ops_total": sum(e.count for e in ka),
            "top_ops": [{"op": e.key, "calls": e.count, "share": round(e.self_cpu_time_total / total, 3)}
                        for e in top]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    p.add_argument("--layers", type=int, default=None, help="override the depth (smoke: 2)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sides", default=None, help="rlhf,trl (default: trl too where .venv-trl exists)")
    p.add_argument("--data", type=Path, default=HH)
    p.add_argument("--work", type=Path, default=Path("/tmp/real_shape"))
    p.add_argument("--check-config", type=Path, default=None, help="a real config.json to compare the shape with")
    p.add_argument("--profile", action="store_true", help="profile one rlhf DPO step instead of the pairings")
    p.add_argument("--smoke", action="store_true",
                   help="2 layers of the shape, every pairing in its own smoke mode: does it run? (no figures)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--pairings", default=",".join(PAIRINGS),
                   help=f"comma list of the pairings to run: {', '.join(PAIRINGS)} (default: all)")
    p.add_argument("--peak-child", choices=["chunked", "whole"], default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.pairings = a.pairings.split(",")
    unknown = sorted(set(a.pairings) - set(PAIRINGS))
    if unknown:
        p.error(f"--pairings: unknown {', '.join(unknown)} (known: {', '.join(PAIRINGS)})")
    if a.smoke:
        a.layers, a.steps, a.repeats, a.max_length = a.layers or 2, 2, 1, 128
        if a.work == Path("/tmp/real_shape"):
            import tempfile
            a.work = Path(tempfile.mkdtemp(prefix="real_shape-smoke-"))
    a.sides = a.sides or ("rlhf,trl" if trl_python() else "rlhf")
    if not a.data.exists():
        raise SystemExit(f"{a.data} not found (the shared data folder sits beside the repo)")
    if "trl" in a.sides and trl_python() is None:
        raise SystemExit("no .venv-trl: run `bash bench/make_trl_venv.sh` first (or --sides rlhf)")
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    result: dict = {"bench": "real_shape", "shape": a.shape, "config": SHAPES[a.shape],
                    "layers": a.layers or SHAPES[a.shape]["num_hidden_layers"], "smoke": a.smoke,
                    "steps": a.steps, "repeats": a.repeats, "max_length": a.max_length, "sides": a.sides}
    if a.check_config:
        result["differs_from_real_config"] = check_config(SHAPES[a.shape], a.check_config)
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_train_eval
    records, _, _ = load_train_eval(DataConfig(train=str(a.data)), "preference")
    texts = [t for r in records[:400] for t in (r.prompt + r.chosen, r.rejected)]
    model_dir = build(a.work / f"{a.shape}-l{result['layers']}", a.shape, a.layers, texts)
    result["model_dir"] = str(model_dir)
    from safetensors import safe_open
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        result["params"] = sum(int(torch.tensor(f.get_slice(k).get_shape()).prod()) for k in f.keys())
    if a.profile:
        result["profile"] = profile(a, model_dir)
    else:
        def save(done: dict) -> None:  # the finished pairings, marked partial, in case the run is killed
            if a.out and not a.smoke:
                write_json({**result, "pairings": done, "partial": True}, a.out, argv)

        result["pairings"] = pairings(a, model_dir, save)
    result["wall_s"] = round(time.time() - t0, 1)
    print(write_json(result, a.out, argv))
    if a.smoke:
        bad = [k for k, v in result.get("pairings", {}).items() if "error" in v]
        if bad:
            print(f"smoke: failed pairings: {bad}: " + "; ".join(result["pairings"][k]["error"][-600:] for k in bad),
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
