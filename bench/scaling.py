"""How cost grows: step time, tokens/s, MFU and peak memory of SFT, DPO and GRPO steps, from a
1M-parameter model to a 0.5B one of Qwen2-0.5B's shape (random weights, bf16), with and
without LoRA and gradient checkpointing. Prints JSON; ``--plot`` draws the figure and fits
time per token ∝ params^a.

    .venv/bin/python bench/scaling.py --sizes 1m,8m,45m --out bench/results/scaling.json
    .venv/bin/python bench/scaling.py --sizes 0.5b --stages sft --variants base --steps 3 \\
        --append bench/results/scaling.json
    .venv/bin/python bench/scaling.py --plot bench/results/scaling.json   # scaling.png + the fit

Each configuration runs the stage's own recipe through the CLI entry point (``rlhf <stage>
...``, in this process, one after the other), so a step is everything a real step does
(collation, forward, backward, AdamW,
for GRPO the sampling, scoring and the reference pass). Measured from that run's
metrics.jsonl and process:

* ``step_s``: median over steps 2..S of the difference of ``elapsed_s`` (step 1 warms up);
* ``tokens_per_step``: real (non-padding) tokens the step's training forward passes cover,
  estimated as batch x the mean tokenised length of the data (SFT: prompt + completion; DPO:
  both rows of a pair; GRPO: prompts x samples x (prompt + mean generated length));
* ``mfu``: model FLOPs per step / step_s / the machine's measured bf16 matmul rate
  (bench/mfu.py). Model FLOPs (Kaplan/PaLM convention, N = matmul parameters): SFT and DPO
  6·N·tokens (DPO's reference log-probs are cached before training, not part of a step);
  GRPO 2·N·(sampled tokens) + 2·N·tokens (reference) + 2·N·tokens (π_old, recomputed in bf16)
  + 6·N·tokens per update epoch. Gradient checkpointing's recomputation is not counted (it is
  overhead, which MFU exposes); with LoRA the backward still flows through every layer
  (≈ 4·N·tokens), so the same 6·N·tokens is used;
* ``peak_rss_gb``: the peak resident memory of the process during the run (sampled every
  20 ms; ``rss_before_gb`` is what the process held before it: allocator caches of earlier
  runs stay resident, so differences between sizes are the informative part).

This machine is a shared 2-core CPU: timings are noisy (other jobs run beside this one), and a
CPU is not a GPU; the point is the shape of the growth, not the absolute numbers.
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

# name -> (hidden, layers, heads, kv_heads, intermediate, vocab). "0.5b" is Qwen2-0.5B's shape
# (vocab 151936, tied embeddings): 494M parameters. The smaller ones keep its proportions.
SIZES = {
    "1m": (128, 4, 4, 2, 512, 512),
    "8m": (256, 8, 4, 2, 1024, 4096),
    "45m": (512, 12, 8, 2, 2048, 8192),
    "0.5b": (896, 24, 14, 2, 4864, 151936),
}
STAGES = ("sft", "dpo", "grpo")
VARIANTS = {"base": [], "lora": ["model.lora.enabled=true", "model.lora.r=16"],
            "gc": ["model.gradient_checkpointing=true"]}
REWARD = 'def e_fraction(prompts, completions):\n    return [c.count("e") / max(1, len(c)) for c in completions]\n'


def _data(d: Path) -> dict[str, Path]:
    from rlhf.testbed.instructions import make_examples, write_jsonl

    rows = make_examples(400, seed=0)
    sft = write_jsonl(rows, d / "sft.jsonl")
    pref = d / "pref.jsonl"
    pref.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r["completion"],
                                        "rejected": rows[(i + 7) % len(rows)]["completion"]}) + "\n"
                            for i, r in enumerate(rows) if r["completion"] != rows[(i + 7) % len(rows)]["completion"]))
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    (d / "scaling_reward.py").write_text(REWARD)
    return {"sft": sft, "pref": pref, "prompts": prompts, "texts": [r["prompt"] + r["completion"] for r in rows]}


def _model(size: str, d: Path, texts: list[str]) -> Path:
    """A random-weight Qwen2-shaped model saved in bf16, with a tokenizer trained on the data
    (its 512 ids are the first rows of the larger embedding)."""
    import torch

    from rlhf.models.load import save_model
    from rlhf.models.tiny import build_tiny_model, train_tokenizer

    out = d / f"qwen2-{size}"
    if (out / "config.json").exists():
        return out
    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    tok = train_tokenizer(texts, 512, model_max_length=512)
    model = build_tiny_model("qwen2", vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                             num_kv_heads=kv, intermediate_size=inter, max_position_embeddings=512,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             bos_token_id=tok.bos_token_id)
    save_model(model.to(torch.bfloat16), tok, out)
    del model
    return out


def _args(stage: str, model: Path, data: dict, out: Path, steps: int, batch: int,
          max_samples: int | None = None) -> list[str]:
    common = [*([f"data.max_samples={max_samples}"] if max_samples else []),
              f"output_dir={out}", f"model.name_or_path={model}", "model.dtype=bf16", "train.progress=false",
              f"train.max_steps={steps}", f"train.batch_size={batch}", "train.save_model_in_checkpoints=false",
              "data.chat_template=none", "data.max_length=128", "train.lr=1e-5"]
    if stage == "sft":
        return ["sft", *common, f"data.train={data['sft']}"]
    if stage == "dpo":
        return ["dpo", *common, f"data.train={data['pref']}"]
    return ["ppo", *common, f"data.train={data['prompts']}", "advantage=grpo", "reward=scaling_reward:e_fraction",
            "sampling.num_samples=4", "sampling.max_new_tokens=16", "num_log_samples=0", "ppo.epochs=1"]


def _mean_tokens(model: Path, data: dict) -> dict[str, float]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    sft = [json.loads(x) for x in data["sft"].read_text().splitlines()]
    pref = [json.loads(x) for x in data["pref"].read_text().splitlines()]
    return {"sft": statistics.mean(min(128, n(r["prompt"]) + n(r["completion"]) + 1) for r in sft),
            "dpo": statistics.mean(min(128, 2 * n(r["prompt"]) + n(r["chosen"]) + n(r["rejected"]) + 2) for r in pref),
            "prompt": statistics.mean(n(r["prompt"]) for r in sft)}


class PeakRSS:
    """The largest resident set size of this process while the block runs, sampled every 20 ms
    from /proc (ru_maxrss only grows over the whole process, which runs many configurations)."""

    def __enter__(self) -> PeakRSS:
        import threading

        self.peak = self.before = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(stage: str, variant: str, size: str, model: Path, data: dict, tokens: dict, steps: int,
            batch: int, peak: float, work: Path, max_samples: int | None = None) -> dict:
    """One configuration, in this process (a fresh process per run costs more than the run on a
    loaded 2-core machine): the CLI stage, then its numbers; the run folder is deleted."""
    import gc
    import shutil

    from accelerate.state import AcceleratorState, PartialState

    from rlhf.cli import main as cli_main

    out = work / f"{stage}-{variant}-{size}"
    shutil.rmtree(out, ignore_errors=True)
    argv = _args(stage, model, data, out, steps, batch, max_samples) + VARIANTS[variant]
    rec = {"stage": stage, "variant": variant, "size": size, "steps": steps, "batch": batch}
    t0 = time.time()
    with PeakRSS() as mem:
        rc = cli_main(argv)
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    gc.collect()
    rec["wall_s"] = round(time.time() - t0, 1)
    if rc != 0:
        return {**rec, "error": f"exit code {rc}"}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"samples"' not in x]
    el = [r["elapsed_s"] for r in rows]
    step_s = statistics.median(b - a for a, b in zip(el, el[1:], strict=False)) if len(el) > 1 else el[0]
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    # (as bench/mfu.matmul_params, by identity: meta tensors have no storage to compare)
    n_params = sum(p.numel() for p in m.parameters())  # a tied weight is listed once
    tied = m.get_output_embeddings().weight is m.get_input_embeddings().weight
    n_matmul = n_params if tied else n_params - m.get_input_embeddings().weight.numel()
    if stage == "sft":
        toks = batch * tokens["sft"]
        flops = 6 * n_matmul * toks
    elif stage == "dpo":
        toks = batch * tokens["dpo"]
        flops = 6 * n_matmul * toks
    else:
        gen = statistics.mean(r.get("response_length", 16) for r in rows)
        toks = batch * 4 * (tokens["prompt"] + gen)
        flops = 2 * n_matmul * batch * 4 * gen + 2 * 2 * n_matmul * toks + 6 * n_matmul * toks
    shutil.rmtree(out, ignore_errors=True)
    return {**rec, "params": n_params, "matmul_params": n_matmul, "step_s": round(step_s, 4),
            "tokens_per_step": round(toks, 1), "tokens_per_s": round(toks / step_s, 1),
            "model_flops_per_step": flops, "mfu": round(flops / step_s / peak, 5),
            "peak_rss_gb": round(mem.peak / 2 ** 30, 3),
            "rss_before_gb": round(mem.before / 2 ** 30, 3)}


def fit(records: list[dict]) -> dict:
    """Per stage, over the base variant: least squares of log(step_s / tokens_per_step) on
    log(params). ``exp_params`` = 1 means time per token ∝ params, i.e. time ∝ params x tokens
    at a fixed token count per step (tokens per step are not varied here, so their own
    exponent is not measured). ``s_per_token_param`` shows the constant drifting: overhead
    (Python, small kernels, sampling loop) dominates small models."""
    import numpy as np

    out = {}
    for stage in STAGES:
        rs = sorted((r for r in records if r["stage"] == stage and r["variant"] == "base" and "step_s" in r),
                    key=lambda r: r["params"])
        if len(rs) < 2:
            continue
        x = np.log([r["params"] for r in rs])
        y = np.log([r["step_s"] / r["tokens_per_step"] for r in rs])
        a, _ = np.polyfit(x, y, 1)
        out[stage] = {"n": len(rs), "sizes": [r["size"] for r in rs], "exp_params": round(float(a), 3),
                      "s_per_token_param": [float(f"{r['step_s'] / r['tokens_per_step'] / r['params']:.3g}")
                                            for r in rs]}
    return out


def plot(path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(path.read_text())
    recs = [r for r in res["records"] if "step_s" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in zip(axes, ("step_s", "mfu", "peak_rss_gb"), ("step time (s)", "MFU", "peak RSS (GB)"),
                              strict=True):
        for stage in STAGES:
            for variant, style in (("base", "-o"), ("lora", "--s"), ("gc", ":^")):
                rs = sorted((r for r in recs if r["stage"] == stage and r["variant"] == variant),
                            key=lambda r: r["params"])
                if rs:
                    ax.plot([r["params"] for r in rs], [r[key] for r in rs], style, label=f"{stage} {variant}")
        ax.set_xscale("log")
        ax.set_yscale("log" if key != "mfu" else "linear")
        ax.set_xlabel("parameters")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("rlhf steps on a shared 2-core CPU, bf16, random Qwen2-shaped models (noisy timings)")
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    return png


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1m,8m,45m")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-samples", type=int, help="data.max_samples (DPO caches reference log-probs "
                    "of every example before training: keep it small for big models)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--append", type=Path, help="add the records to this JSON file")
    ap.add_argument("--plot", type=Path, help="plot an existing results file and print the fit")
    ap.add_argument("--work", type=Path, help="folder for models and runs (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="the 1m size, SFT, 2 steps of 2: the bench still runs")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: OMP_NUM_THREADS or 1)")
    a = ap.parse_args()
    if a.smoke:
        a.sizes, a.stages, a.variants, a.steps, a.batch = "1m", "sft", "base", 2, 2
    if a.plot:
        res = json.loads(a.plot.read_text())
        res["fit"] = fit(res["records"])
        a.plot.write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps({"figure": str(plot(a.plot)), "fit": res["fit"]}, indent=1))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from bench.mfu import matmul_flops_per_s
    torch.set_num_threads(a.threads or int(os.environ.get("OMP_NUM_THREADS", "1")))
    # (a smoke run: one small probe; bf16 matmuls at n = 2048 take minutes on a CPU without bf16 units)
    peak = matmul_flops_per_s("bf16", n=128, repeats=1)["flops_per_s"] if a.smoke else max(
        matmul_flops_per_s("bf16", n=1024, repeats=5)["flops_per_s"],
        matmul_flops_per_s("bf16", n=2048, repeats=3)["flops_per_s"])
    work = a.work or Path(tempfile.mkdtemp(prefix="rlhf-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(work))  # the GRPO reward module
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = _data(work)
    records = []
    for size in a.sizes.split(","):
        model = _model(size, work, data["texts"])
        tokens = _mean_tokens(model, data)
        for stage in a.stages.split(","):
            for variant in a.variants.split(","):
                rec = run_one(stage, variant, size, model, data, tokens, a.steps, a.batch, peak, work,
                              a.max_samples)
                print(json.dumps(rec), flush=True)
                records.append(rec)
    meta = {"machine": "shared 2-core CPU (other jobs running: timings noisy)", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "bf16_matmul_peak_flops_per_s": peak,
            "command": " ".join(sys.argv)}
    if a.append and a.append.exists():
        res = json.loads(a.append.read_text())
        res["records"] += records
        res.setdefault("runs", []).append(meta)
        a.append.write_text(json.dumps(res, indent=1) + "\n")
    elif a.out or a.append:
        path = a.out or a.append
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"runs": [meta], "records": records}, indent=1) + "\n")
    print(json.dumps({"meta": meta, "records": len(records), **({"smoke": True, "last": records[-1]}
                                                                   if a.smoke else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
