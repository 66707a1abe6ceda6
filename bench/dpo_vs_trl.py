"""`rlhf dpo` and TRL's DPOTrainer side by side: same model, pairs, order, tokens, hyper-parameters.

    bash bench/make_trl_venv.sh                    # once: .venv-trl with torch 2.13.0 and trl 1.16.0
    .venv/bin/python bench/dpo_vs_trl.py --steps 20 --repeats 2   # quiet machine: both models,
                                                   # fp32 + bf16, cached + online reference (~25 min)
    .venv/bin/python bench/dpo_vs_trl.py --threads 1 --steps 10   # shared machine (see below)
    .venv/bin/python bench/dpo_vs_trl.py --models tiny --precisions fp32 --steps 5   # a quick check

On a machine shared with other jobs, torch's multi-threaded kernels stall whenever one of their
threads loses its core, and timings swing several-fold; ``--threads 1`` is much steadier, and
``cpu_share_of_threads`` (CPU time / wall time / threads over the timed steps) in every run says
whether it got its cores (``timing_clean``: >= 0.9). ``--variant SCRIPT`` adds a third side run
like the rlhf child (same flags), e.g. rlhf with a function patched, to measure a change before
it goes into the library.

What is held equal (and checked, not assumed):

* **Model.** One tiny random Llama folder per size, made with ``rlhf tiny-model`` (tokenizer trained
  on the HH text), loaded by both sides in fp32 with SDPA attention, dropout off.
* **Pairs, order, tokens.** HH-RLHF harmless-base (test file) read with rlhf's loader, prompt /
  chosen / rejected split at the last common "Assistant:". The first ``steps x batch`` pairs that
  both pipelines tokenize identically are used. TRL 1.16 truncates ``prompt + completion`` with
  ``keep_start`` at ``max_length`` and drops pairs whose prompt alone fills it; rlhf is set to do
  the same (``data.max_prompt_length = max_length - 1``, ``data.prompt_truncation = right``;
  the completion is cut on the right). Pairs TRL would drop, and pairs where TRL's tokenization
  of ``prompt + completion`` differs from rlhf's separate prompt / completion tokenization (a
  BPE merge across the boundary), are left out and counted. rlhf visits its examples in
  ``epoch_order(seed, 0, n)``; TRL gets the file in that order with a sequential sampler. The
  TRL side checks its own tokenized dataset against the expected ids before training.
* **Optimisation.** Same β, lr, warm-up steps, cosine decay, AdamW (torch's fused kernel on
  both, betas 0.9/0.999, eps 1e-8, no weight decay), gradient clipping at 1.0, batch, no accumulation, seed.
* **Precision and memory options, set explicitly on both** (TRL defaults to bf16 and gradient
  checkpointing on): fp32, or bf16 autocast over fp32 weights; gradient checkpointing off unless
  ``--gradient-checkpointing``.
* **Reference.** ``cached`` = rlhf's default (reference log-probs computed once before training)
  against TRL's ``precompute_ref_log_probs=True``; ``online`` = rlhf ``reference=online`` against
  TRL's default (a reference forward on every step). Both pairings are run; TRL's default against
  rlhf's default is the ``defaults`` comparison.

Reported per run (each side in its own process, one after the other, so peak RSS is its own):
pairs/s over steps 2..N (end of step 1 to end of step N: collation, forward, backward, optimizer
step and per-step logging included; model load, tokenization, the reference precompute and step
1 excluded), the time to the end of step 1 (everything before, including the reference
precompute), peak RSS of the whole process and peak RSS during steps 2..N (VmHWM reset after step
1), the per-step losses and mean chosen log-probs, the load average before the run, and the model
FLOPs utilisation against the matmul FLOP/s the run measured in its own process after training
(``matmul_rate``: size, threads and its CPU share; no MFU where that probe or the run was
unclean). Repeats are interleaved; per configuration the median of the clean repeats is
reported and a ratio needs a clean repeat on both sides (bench/_bench.py). Then, per model
and precision: speed and memory ratios, and whether the loss curves agree within noise (mean
|loss_rlhf - loss_trl| against the mean step-to-step change of the loss). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

# name -> rlhf tiny-model flags. ~1M: the model of bench/dpo_hh.py; ~20M: hidden 384, 6 layers.
PRESETS = {
    "tiny": {"vocab_size": 2048, "hidden_size": 128, "num_layers": 2, "num_heads": 4},
    "20m": {"vocab_size": 8192, "hidden_size": 384, "num_layers": 6, "num_heads": 6},
}


# LoRA on both sides (--lora-r): these layers, alpha = 2r, no dropout (bench/dpo_trl.py reads it too).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# --------------------------------------------------------------------------- process helpers

# Shared with the other benches and the TRL children (bench/_bench.py; re-exported here).
from _bench import (  # noqa: E402
    StepStamps,
    _status,
    interleaved,
    loadavg,
    matmul_rate,
    memory_report,
    mfu,
    ratio,
    smoke_sides,
    summarize,
    throughput,
    write_json,
)


def phase_timer(phase: dict[str, float]):
    """``timed(name, fn)``: ``fn`` wrapped so that each call's seconds add to ``phase[name]``
    (how the online-RL benches split a step into generation, scoring and update)."""
    def timed(name, fn):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                phase[name] = phase.get(name, 0.0) + time.perf_counter() - t0
        return wrapper
    return timed


# --------------------------------------------------------------------------- the rlhf side (child)


def run_ours(a) -> dict:
    """One `rlhf dpo` run in this process, instrumented from outside (no library change)."""
    t_start = time.perf_counter()
    import torch

    import rlhf.train.trainer as T
    from rlhf.config import load_config
    from rlhf.recipes.dpo import DPOConfig, train

    if a.threads:
        torch.set_num_threads(a.threads)
    import_rss = _status("VmRSS") / 1024
    step_stamps = StepStamps(T.Trainer)  # time stamp at the end of every optimizer step
    stamps, cpu_stamps = step_stamps.wall, step_stamps.cpu
    seen = {}
    orig_setup = T.Trainer.setup

    def setup(self, model, *args, **kw):  # record what the model really runs with
        seen["gradient_checkpointing_in_model"] = bool(
            model.is_activation_checkpointing if hasattr(model, "is_activation_checkpointing")
            else getattr(model, "is_gradient_checkpointing", False))
        seen["dtype_of_weights"] = str(next(model.parameters()).dtype)
        return orig_setup(self, model, *args, **kw)

    T.Trainer.setup = setup
    out = Path(a.run_dir)
    cfg = load_config(DPOConfig, None, [
        f"output_dir={out}", f"model.name_or_path={a.model}", "model.dtype=fp32", "model.attn_implementation=sdpa",
        f"model.gradient_checkpointing={'true' if a.gradient_checkpointing else 'false'}",
        "model.disable_dropout=true", "loss=dpo", f"beta={a.beta}", f"reference={a.reference}",
        f"data.train={a.train_file}", "data.format=preference", f"data.max_length={a.max_length}",
        f"data.max_prompt_length={a.max_length - 1}", "data.prompt_truncation=right",
        "data.completion_truncation=right", "data.chat_template=none", "data.add_eos=true",
        f"train.batch_size={a.batch_size}", "train.grad_accum=1", f"train.max_steps={a.steps}",
        f"train.lr={a.lr}", f"train.warmup_steps={a.warmup_steps}", "train.scheduler=cosine",
        "train.weight_decay=0.0", "train.max_grad_norm=1.0", f"train.seed={a.seed}",
        "train.mixed_precision=" + ("bf16" if a.precision == "bf16" else "'no'"),  # YAML reads no as false
        f"train.eval_batch_size={a.ref_batch_size}", "train.log_every=1", "train.progress=false",
        "train.save_model_in_checkpoints=false", "train.save_total_limit=1", "train.resume_from=none",
        *(["model.lora.enabled=true", f"model.lora.r={a.lora_r}", f"model.lora.alpha={2 * a.lora_r}",
           "model.lora.dropout=0.0", "model.lora.target_modules=[" + ",".join(LORA_TARGETS) + "]"]
          if a.lora_r else [])])
    t_train = time.perf_counter()
    train(cfg)
    t_end = time.perf_counter()
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    res = {"side": "rlhf", "reference": a.reference,
           "reference_precomputed": a.reference == "cached", "steps": len(metrics),
           "losses": [m["loss"] for m in metrics], "chosen_logps": [m["chosen_logps"] for m in metrics],
           "stamps": [s - stamps[0] for s in stamps] if stamps else [],
           **throughput(stamps, a.batch_size, cpu_stamps, torch.get_num_threads()),
           "import_s": round(t_train - t_start, 2),
           "to_end_of_step1_s": round(stamps[0] - t_train, 2) if stamps else None,
           "train_call_s": round(t_end - t_train, 2),
           "import_rss_mib": round(import_rss, 1), **memory_report(step_stamps.peak_before),
           "torch_threads": torch.get_num_threads(), **seen,
           # MFU's denominator, measured here: same process, same threads, after the run
           "matmul_rate": matmul_rate(a.precision, a.matmul_n)}
    return res


# --------------------------------------------------------------------------- the coordinator


def _child(cmd: list[str], env_extra: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", **env_extra}
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: " + p.stderr[-3000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def build_model(work: Path, preset: str, texts_file: Path, max_length: int) -> Path:
    spec = PRESETS[preset]
    out = work / "models" / f"llama-h{spec['hidden_size']}-l{spec['num_layers']}-v{spec['vocab_size']}-p{max_length}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(REPO / ".venv" / "bin" / "rlhf"), "tiny-model", "--out", str(out), "--arch", "llama",
           "--texts", str(texts_file), "--vocab-size", str(spec["vocab_size"]), "--hidden-size",
           str(spec["hidden_size"]), "--num-layers", str(spec["num_layers"]), "--num-heads",
           str(spec["num_heads"]), "--max-position-embeddings", str(max_length), "--seed", "0"]
    if not Path(cmd[0]).exists():
        cmd = [sys.executable, "-m", "rlhf.cli", *cmd[1:]]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
    return out


def trl_token_ids(tok, prompt: str, completion: str) -> tuple[list[int], int, int]:
    """How TRL 1.16's DPOTrainer tokenizes one side of a plain-text pair: the EOS text appended
    to the completion, ``prompt`` and ``prompt + completion`` tokenized, the completion starting
    where the two diverge (its collator then keeps the first max_length ids). Returns
    (prompt + completion ids, prompt length, length of the common prefix)."""
    eos = tok.eos_token
    c = completion if completion.endswith(eos) else completion + eos
    p_ids = tok(prompt)["input_ids"]
    pc_ids = tok(prompt + c)["input_ids"]
    k = 0
    while k < min(len(p_ids), len(pc_ids)) and p_ids[k] == pc_ids[k]:
        k += 1
    return pc_ids, len(p_ids), k


def select_pairs(records, tok, max_length: int, want: int | None) -> tuple[list[dict], dict]:
    """The first ``want`` records (file order) both pipelines turn into the same tokens.

    Returns kept [{prompt, chosen, rejected, origin_row, prompt_len, chosen_ids, rejected_ids}]
    and counts of what was left out and why (TRL's prompt split is the shorter common prefix of
    the two sides, and both pipelines must agree on it and on every id).
    """
    from rlhf.data.config import DataConfig
    from rlhf.data.tokenize import encode_preference

    dc = DataConfig(max_length=max_length, max_prompt_length=max_length - 1, prompt_truncation="right",
                    completion_truncation="right", chat_template="none", add_eos=True)
    kept, why = [], {"trl_drops_prompt_fills_max_length": 0, "boundary_tokenization_differs": 0}
    for r in records:
        if want is not None and len(kept) >= want:
            break
        ours = encode_preference(r, tok, dc)
        pc, lp, kc = trl_token_ids(tok, r.prompt, r.chosen)
        pr, _, kr = trl_token_ids(tok, r.prompt, r.rejected)
        plen = min(kc, kr)
        if plen >= max_length:
            why["trl_drops_prompt_fills_max_length"] += 1
            continue
        ours_plen = ours["chosen_completion_mask"].index(1)
        same = (plen == lp and ours_plen == plen and ours["chosen_input_ids"] == pc[:max_length]
                and ours["rejected_input_ids"] == pr[:max_length]
                and ours["rejected_completion_mask"].index(1) == plen)
        if not same:
            why["boundary_tokenization_differs"] += 1
            continue
        kept.append({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected,
                     "origin_row": r.origin[1] if r.origin else None, "prompt_len": plen,
                     "chosen_ids": ours["chosen_input_ids"], "rejected_ids": ours["rejected_input_ids"]})
    return kept, why


def check_ours_reads_back(path: Path, tok, max_length: int, expected: list[dict]) -> None:
    """rlhf's own loader + encoder on the written file gives exactly the selected ids."""
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_train_eval
    from rlhf.data.tokenize import encode_records

    dc = DataConfig(train=str(path), format="preference", max_length=max_length, max_prompt_length=max_length - 1,
                    prompt_truncation="right", completion_truncation="right", chat_template="none")
    recs, _, _ = load_train_eval(dc, "preference")
    enc = encode_records(recs, tok, dc)
    bad = sum(e["chosen_input_ids"] != x["chosen_ids"] or e["rejected_input_ids"] != x["rejected_ids"]
              for e, x in zip(enc, expected))
    if len(enc) != len(expected) or bad:
        raise SystemExit(f"{path}: rlhf reads back {len(enc)} pairs, {bad} with other token ids than selected")


def curve_agreement(a: list[float], b: list[float], first: int | None = None) -> dict:
    """Mean |a - b| over the first steps against the loss's own step-to-step change.

    Both sides see the same batches from the same weights, so their curves differ only by
    floating-point rounding (summation order, fused vs unfused kernels, bf16), which grows as
    training goes on. "Same within noise": the mean difference is under a quarter of the mean
    change of the loss from one batch to the next, the scale on which one reads a loss curve."""
    n = min(len(a), len(b)) if first is None else min(len(a), len(b), first)
    if n < 2:
        return {"steps": n}
    diff = [abs(x - y) for x, y in zip(a[:n], b[:n])]
    noise = sum(abs(a[i] - a[i - 1]) for i in range(1, n)) / (n - 1)
    mad = sum(diff) / n
    return {"steps": n, "mean_abs_diff": mad, "max_abs_diff": max(diff), "step_to_step_noise": noise,
            "ratio": mad / noise if noise > 0 else None,
            "same_within_noise": bool(noise > 0 and mad < 0.25 * noise),
            "first_loss": [a[0], b[0]], "last_loss": [a[n - 1], b[n - 1]]}


def mfu_figures(run: dict, step_tokens: list[int], step_lengths: list[list[int]], shape: dict,
                online: bool) -> dict:
    """Model FLOP/s over steps 2..N (bench/mfu.py's convention) and its fraction of the matmul
    rate the run measured in its own process (``matmul_rate``: size, threads and CPU share
    stated); refused where that probe was unclean or missing."""
    from mfu import attention_flops, step_model_flops

    stamps = run.get("stamps") or []
    if len(stamps) < 2:
        return {}
    dt = stamps[-1] - stamps[0]
    steps = range(1, len(stamps))  # 0-based steps 2..N (step 1 is outside the window)
    f6n = sum(step_model_flops(shape["params_matmul"], step_tokens[s], online) for s in steps)
    fat = sum(attention_flops(step_lengths[s], shape["num_layers"], shape["attn_dim"], online) for s in steps)
    out = {"model_tflops_per_s": round(f6n / dt / 1e12, 4), "flops_convention": "6N (+2N online ref) x real tokens",
           **mfu(f6n / dt, run.get("matmul_rate"))}
    if not run.get("timing_clean"):
        out.update(mfu=None, mfu_refused="the run itself was unclean (CPU share of threads below 0.9)")
    if out.get("mfu") is not None:
        out["mfu_with_attention"] = round((f6n + fat) / dt / run["matmul_rate"]["flops_per_s"], 4)
    return out


def prepare(a, preset: str, records, texts: Path) -> dict:
    """Model folder, selected pairs written for both sides, and per-step token counts."""
    from mfu import describe_model
    from transformers import AutoTokenizer

    from rlhf.train.trainer import epoch_order

    M = a.steps * a.batch_size
    model_dir = a.model_dir if a.model_dir else build_model(a.work, preset, texts, a.max_length)
    tok = AutoTokenizer.from_pretrained(model_dir)
    shape = describe_model(str(model_dir))
    kept, why = select_pairs(records, tok, a.max_length, M)
    if len(kept) < M:
        raise SystemExit(f"only {len(kept)} usable pairs for {a.steps} steps x batch {a.batch_size}")
    ddir = a.work / "data" / model_dir.name / f"n{M}-L{a.max_length}-seed{a.seed}"
    ddir.mkdir(parents=True, exist_ok=True)
    files = {"rlhf": ddir / "rlhf_pairs.jsonl", "trl": ddir / "trl_pairs.jsonl", "ids": ddir / "trl_expected_ids.jsonl"}
    order = epoch_order(a.seed, 0, M)  # the order rlhf's trainer visits its M examples in
    with open(files["rlhf"], "w") as f:
        for x in kept:
            f.write(json.dumps({k: x[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    with open(files["trl"], "w") as f, open(files["ids"], "w") as g:
        for i in order:
            f.write(json.dumps({k: kept[i][k] for k in ("prompt", "chosen", "rejected")}) + "\n")
            g.write(json.dumps({k: kept[i][k] for k in ("prompt_len", "chosen_ids", "rejected_ids")}) + "\n")
    check_ours_reads_back(files["rlhf"], tok, a.max_length, kept)
    seq = [kept[i] for i in order]
    B = a.batch_size
    step_lengths = [[len(x["chosen_ids"]) for x in seq[s * B:(s + 1) * B]]
                    + [len(x["rejected_ids"]) for x in seq[s * B:(s + 1) * B]] for s in range(a.steps)]
    step_tokens = [sum(ls) for ls in step_lengths]
    padded = [len(ls) * max(ls) for ls in step_lengths]
    info = {"model_dir": str(model_dir), "preset": preset, **PRESETS.get(preset, {}), **shape,
            "lora_r": a.lora_r,
            "pairs_used": M, "hh_rows_used": {"first": kept[0]["origin_row"], "last": kept[-1]["origin_row"]},
            "left_out_before_enough": why,
            "tokens_per_step_mean": round(sum(step_tokens) / len(step_tokens), 1),
            "padded_tokens_per_step_mean": round(sum(padded) / len(padded), 1),
            "padding_fraction": round(1 - sum(step_tokens) / sum(padded), 4),
            "completion_tokens_per_step_mean": round(sum(len(x["chosen_ids"]) + len(x["rejected_ids"])
                                                         - 2 * x["prompt_len"] for x in seq) / a.steps, 1),
            "row_length_mean": round(sum(step_tokens) / (a.steps * 2 * B), 1),
            "rows_at_max_length": sum(L == a.max_length for ls in step_lengths for L in ls)}
    return {"model_dir": model_dir, "shape": shape, "files": files, "step_lengths": step_lengths,
            "step_tokens": step_tokens, "info": info}


def run_one(a, prep: dict, prec: str, ref: str, side: str, rep: int) -> dict:
    """One training run of ``side`` (rlhf, trl, or variant = ``--variant`` script) in a child process."""
    preset = prep["info"]["preset"]
    tag = f"{preset}-{prec}-{ref}-{side}-r{rep}"
    run_dir = a.work / "runs" / prep["model_dir"].name / tag
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    common = ["--model", str(prep["model_dir"]), "--steps", str(a.steps), "--batch-size", str(a.batch_size),
              "--max-length", str(a.max_length), "--beta", str(a.beta), "--lr", str(a.lr),
              "--warmup-steps", str(a.warmup_steps), "--seed", str(a.seed),
              "--ref-batch-size", str(a.ref_batch_size), "--threads", str(a.threads),
              "--precision", prec, "--reference", ref, "--matmul-n", str(a.matmul_n), "--lora-r", str(a.lora_r),
              *(["--gradient-checkpointing"] if a.gradient_checkpointing else [])]
    if side == "trl":
        cmd = [str(REPO / ".venv-trl" / "bin" / "python"), str(HERE / "dpo_trl.py"),
               "--train-file", str(prep["files"]["trl"]), "--expected-ids", str(prep["files"]["ids"]),
               "--run-dir", str(run_dir), *common]
    else:
        script = str(a.variant) if side == "variant" else __file__
        cmd = [sys.executable, script, "--child", "--train-file", str(prep["files"]["rlhf"]),
               "--run-dir", str(run_dir), *common]
    la = loadavg()
    t_run = time.time()
    res = _child(cmd, {"HF_DATASETS_CACHE": str(run_dir / "hf-datasets-cache")})
    res.update(wall_s=round(time.time() - t_run, 1), loadavg_before=la, command=" ".join(cmd))
    if "error" not in res and not a.lora_r:  # (with LoRA, 6N counts weight gradients that are not made)
        res.update(mfu_figures(res, prep["step_tokens"], prep["step_lengths"], prep["shape"], ref == "online"))
    res.pop("stamps", None)
    if not a.keep_runs and "error" not in res:
        import shutil
        shutil.rmtree(run_dir, ignore_errors=True)
    brief = {k: res.get(k) for k in ("pairs_per_s", "cpu_share_of_threads", "peak_rss_mib",
                                      "peak_rss_steps_2_to_n_mib", "to_end_of_step1_s", "mfu", "error")}
    print(json.dumps({"run": tag, **brief, "loadavg_before": la}), file=sys.stderr)
    return res


def merge_repeats(runs: list[dict]) -> dict:
    """One entry per configuration: medians over the CLEAN repeats (bench/_bench.summarize), every
    repeat's pairs/s, CPU share and peak RSS kept beside them; no figure from unclean runs."""
    return summarize(runs, "pairs_per_s", extra_keys=("mfu", "to_end_of_step1_s"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,20m", help=f"comma list of presets: {', '.join(PRESETS)}")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--references", default="cached,online",
                   help="cached: rlhf default vs TRL precompute_ref_log_probs=True; online: rlhf "
                        "reference=online vs TRL default")
    p.add_argument("--sides", default="rlhf,trl", help="rlhf, trl, and variant (needs --variant)")
    p.add_argument("--variant", type=Path, default=None,
                   help="a script run like the rlhf child (same flags), e.g. rlhf with a patched function; "
                        "adds side 'variant' to the comparisons")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run (pairs = steps x batch)")
    p.add_argument("--repeats", type=int, default=2,
                   help="run every configuration this many times, interleaved; the median of the clean "
                        "repeats is reported (a ratio needs a clean repeat on both sides)")
    p.add_argument("--smoke", action="store_true",
                   help="one quick check that the bench still runs (tiny model, fp32 cached, 2 steps, the rlhf "
                        "side, TRL too where .venv-trl exists); its timings are no figures")
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the in-process matmul probe (MFU's denominator)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="a model folder (with its tokenizer) to use instead of the presets (bench/real_shape.py)")
    p.add_argument("--lora-r", type=int, default=0,
                   help="train LoRA adapters of this rank on both sides (targets: attention and MLP projections, "
                        "alpha 2r); 0 = all weights")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of the steps")
    p.add_argument("--ref-batch-size", type=int, default=16, help="batch of the reference precompute, both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true", help="on for both sides (default off on both)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads in every run (0 = torch's default)")
    p.add_argument("--data", type=Path, default=HH)
    p.add_argument("--work", type=Path, default=Path("/tmp/dpo_vs_trl"), help="models, data files and run folders")
    p.add_argument("--keep-runs", action="store_true", help="keep each run's output folder under WORK/runs")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--no-curves", action="store_true", help="leave the per-step losses out of the printed JSON")
    # child mode (one rlhf run); the TRL child is bench/dpo_trl.py
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--train-file", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke and not a.child:
        a.models, a.precisions, a.references, a.steps, a.repeats = "tiny", "fp32", "cached", 2, 1
        a.batch_size, a.max_length, a.ref_batch_size, a.matmul_n, a.no_curves = 2, 128, 4, 128, True
        a.sides = smoke_sides()
        if a.work == Path("/tmp/dpo_vs_trl"):
            import tempfile
            a.work = Path(tempfile.mkdtemp(prefix="dpo_vs_trl-smoke-"))
    if a.warmup_steps is None:
        a.warmup_steps = max(1, round(0.1 * a.steps))
    if a.child:
        print(json.dumps(run_ours(a)))
        return 0

    sides = a.sides.split(",")
    if "trl" in sides and not (REPO / ".venv-trl" / "bin" / "python").exists():
        raise SystemExit("no .venv-trl: run `bash bench/make_trl_venv.sh` first")
    if "variant" in sides and (a.variant is None or not a.variant.exists()):
        raise SystemExit("side 'variant' needs --variant SCRIPT")
    if not a.data.exists():
        raise SystemExit(f"{a.data} not found (the shared data folder sits beside the repo)")
    import torch

    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_train_eval

    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    a.work.mkdir(parents=True, exist_ok=True)
    records, _, report = load_train_eval(DataConfig(train=str(a.data)), "preference")
    texts = a.work / "hh_texts.jsonl"
    if not texts.exists():
        with open(texts, "w") as f:
            for r in records:
                f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")
    precisions, references = a.precisions.split(","), a.references.split(",")
    out: dict = {"bench": "dpo_vs_trl", "argv": sys.argv[1:] if argv is None else argv, "data": a.data.name,
                 "rows_read": len(records) + sum(report.counts.values()), "records": len(records),
                 "steps": a.steps, "repeats": a.repeats, "batch_size": a.batch_size, "max_length": a.max_length,
                 "beta": a.beta, "lr": a.lr, "warmup_steps": a.warmup_steps, "scheduler": "cosine",
                 "gradient_checkpointing": a.gradient_checkpointing, "ref_batch_size": a.ref_batch_size,
                 "seed": a.seed, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                 "variant": str(a.variant) if a.variant else None,
                 "loadavg_start": loadavg(), "smoke": a.smoke, "models": {}}
    for preset in ([a.model_dir.name] if a.model_dir else a.models.split(",")):
        prep = prepare(a, preset, records, texts)
        print(json.dumps({"model": preset, **prep["info"]}), file=sys.stderr)
        configs = [(prec, ref, side) for prec in precisions for ref in references for side in sides]
        raw: dict[str, list[dict]] = {f"{c[0]}/{c[1]}/{c[2]}": [] for c in configs}
        for rep, (prec, ref, side) in interleaved(configs, a.repeats):
            raw[f"{prec}/{ref}/{side}"].append(run_one(a, prep, prec, ref, side, rep))
        runs = {k: merge_repeats(v) for k, v in raw.items()}
        mrow = {**prep["info"], "runs": runs, "comparisons": compare(runs, precisions, references, sides)}
        if a.no_curves:
            for r in runs.values():
                r.pop("losses", None)
                r.pop("chosen_logps", None)
        out["models"][preset] = mrow
    out["loadavg_end"] = loadavg()
    out["wall_s"] = round(time.time() - t0, 1)
    print(write_json(out, a.out, argv))
    if a.smoke:
        bad = [k for m in out["models"].values() for k, r in m["runs"].items() if r.get("error")]
        if bad:
            print(f"smoke: failed runs: {bad}", file=sys.stderr)
            return 1
    return 0


def compare(runs: dict, precisions: list[str], references: list[str], sides: list[str]) -> dict:
    """Speed / memory ratios (rlhf over TRL) and loss-curve agreement, like with like and defaults."""
    out = {}

    def pair(ours_key, trl_key):
        o, t = runs.get(ours_key), runs.get(trl_key)
        if not o or not t:
            return None
        r = ratio(o, t, "pairs_per_s")
        row = {"rlhf": ours_key, "trl": trl_key, "speedup_pairs_per_s": r["ratio"],
               **({"refused": r["refused"]} if "refused" in r else {}),
               "clean_repeats": r.get("clean_repeats"), "peak_rss_ratio": r.get("peak_rss_ratio")}
        if o.get("losses") and t.get("losses"):
            row["loss_curves"] = curve_agreement(o["losses"], t["losses"])
            row["chosen_logps_step1"] = [o["chosen_logps"][0], t["chosen_logps"][0]]
        return row

    for ours in [s for s in sides if s != "trl"]:
        sfx = "" if ours == "rlhf" else f" [{ours}]"
        for prec in precisions:
            for ref in references:
                r = pair(f"{prec}/{ref}/{ours}", f"{prec}/{ref}/trl")
                if r:
                    out[f"{prec}/{ref}{sfx}"] = r
            r = pair(f"{prec}/cached/{ours}", f"{prec}/online/trl")
            if r:
                out[f"{prec}/defaults (rlhf cached vs trl online){sfx}"] = r
    return out


if __name__ == "__main__":
    sys.exit(main())
