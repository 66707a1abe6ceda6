"""`rlhf ppo` and TRL's online trainers side by side: episodes/s and peak memory (issue 5).

    bash bench/make_trl_venv.sh        # once: .venv-trl, TRL 1.16 (GRPOTrainer, RLOOTrainer)
    bash bench/make_trl_ppo_venv.sh    # once: .venv-trl-ppo, TRL 1.9.2 (trl.experimental.ppo)
    .venv/bin/python bench/ppo_vs_trl.py --threads 1 --steps 10 --repeats 2 --out /tmp/ppo_vs_trl.json
    .venv/bin/python bench/ppo_vs_trl.py --algos grpo --steps 4      # a quick check
    .venv/bin/python bench/ppo_vs_trl.py --threads 1 --sides rlhf,trl,trl_nogc --profile-step 3

Three pairings, each side in its own process (so peak RSS is its own), run one after the other
and round robin over ``--repeats``:

* ``grpo``: ``rlhf ppo advantage=grpo`` against TRL 1.16 ``GRPOTrainer``;
* ``rloo``: ``rlhf ppo advantage=rloo`` against TRL 1.16 ``RLOOTrainer``;
* ``ppo``:  ``rlhf ppo advantage=gae`` (critic) against TRL 1.9.2 ``trl.experimental.ppo.PPOTrainer``,
  the last TRL release with PPO (it lives in its own environment, .venv-trl-ppo).

What is held equal (see bench/README-ppo.md for the details and what differs by design):

* **Policy.** One tiny random Llama folder (``rlhf.models.tiny.make_tiny_checkpoint``, tokenizer
  trained on the built-in review task's text), or ``--policy DIR``; both sides load it in fp32
  with SDPA attention, dropout off. The reference is a frozen copy on both sides.
* **Prompts.** ``rlhf.testbed.reviews.make_prompts`` (plain "review of <subject>:"), one file,
  read by both sides; the same tokenizer without special tokens.
* **Reward.** GRPO / RLOO: the task's Python gold reward (``rlhf.testbed.reviews:gold_reward``,
  called with TRL's ``reward_funcs`` signature on the TRL side). PPO: TRL 1.9.2 needs a reward
  *model*, so both sides score with one tiny random ``LlamaForSequenceClassification`` folder, and
  both start the critic from it.
* **Rollout and update.** Prompts per step, samples per prompt, max new tokens, temperature 1,
  top-k / top-p off, both stop at EOS; KL weight β (GRPO: k3 in the loss on both; RLOO: k1 summed
  per completion, in the reward, on both; PPO: k1 per token in the reward on both), epochs /
  iterations per rollout, one minibatch per epoch (one optimizer step each), clip 0.2, token-mean
  loss, AdamW (torch's fused kernel on both) at a constant lr, no weight decay; gradient clipping at 1.0 for
  GRPO / RLOO (TRL's default) and none for PPO (TRL 1.9.2's PPO never clips, so rlhf's is turned
  off there); fp32 or bf16 autocast over fp32 weights, gradient checkpointing off (or on for both
  with ``--gradient-checkpointing``), no vLLM, no evaluation or checkpoint inside the timed window.

Reported per run: episodes/s (completions trained on, between the end of rollout step 1 and the end
of step N) and episodes per CPU-second (steadier on a shared machine with ``--threads 1``), peak
RSS of the process and during steps 2..N, mean response length (tokens, EOS included) and the EOS
fraction, CPU share of the threads (``timing_clean``), and the time split of a step: for rlhf
generation, the log-prob passes (old policy, reference, critic), the update and the rest
(scoring); for TRL generation, scoring, the no-grad log-prob passes and the rest (GRPO / RLOO) or
generation and the rest (PPO). Per algorithm and precision: rlhf / TRL ratios. Prints one JSON
object.

Extra sides: ``trl_nogc`` = TRL
with ``gc.collect()`` made a no-op (diagnostic: TRL 1.9.2's PPO collects twice per step);
``variant`` = any script run like the rlhf child (``--variant``). ``--profile-step K`` adds one
untimed rlhf run per algorithm with rollout step K under the torch profiler (top ops).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _bench import (  # noqa: E402
    _status,
    interleaved,
    loadavg,
    memory_report,
    ratio,
    reset_peak_rss,
    summarize,
    throughput,
    trl_python,
    write_json,
)
from dpo_vs_trl import phase_timer  # noqa: E402

VENVS = {"grpo": ".venv-trl", "rloo": ".venv-trl", "ppo": ".venv-trl-ppo"}
MAKE_VENV = {".venv-trl": "bench/make_trl_venv.sh", ".venv-trl-ppo": "bench/make_trl_ppo_venv.sh"}
ADVANTAGE = {"grpo": "grpo", "rloo": "rloo", "ppo": "gae"}
GOLD = "rlhf.testbed.reviews:gold_reward"


def episode_rate(stamps: list[float], episodes_per_step: int, cpu_stamps: list[float], threads: int) -> dict:
    """episodes/s from the end of rollout step 1 to the end of the last one (dpo_vs_trl.throughput's
    window), with the CPU share of the threads over the same window."""
    t = throughput(stamps, episodes_per_step, cpu_stamps, threads)
    t["episodes_per_s"] = t.pop("pairs_per_s")
    # On a shared machine with one thread per run, episodes per CPU-second of the process is far
    # less disturbed by other jobs than episodes per wall-second (waiting for a core is not counted).
    if t.get("cpu_s_per_step"):
        t["episodes_per_cpu_s"] = round(episodes_per_step / t["cpu_s_per_step"], 3)
    return t


# --------------------------------------------------------------------------- the rlhf side (child)


def run_ours(a) -> dict:
    """One `rlhf ppo` run in this process, timed from outside (no library change). The stage is
    found through the CLI's stage table and sampling through the engine seam (rlhf.engines), both
    stable across refactors; the log-prob passes and the update are timed where the recipe's
    module still has those names (``phases_untimed`` lists the ones it no longer has)."""
    t_start = time.perf_counter()
    import importlib

    import torch

    import rlhf.engines as E
    import rlhf.ppo_update as U
    import rlhf.train.trainer as T
    from rlhf.cli import STAGES
    from rlhf.config import load_config

    stage = STAGES["ppo"]
    config_cls, train = stage.load(stage.config), stage.load(stage.run)
    P = importlib.import_module(train.__module__)

    if a.threads:
        torch.set_num_threads(a.threads)
    import_rss = _status("VmRSS") / 1024
    stamps: list[float] = []
    cpu_stamps: list[float] = []
    hwm = {"before": None}
    phase: dict[str, float] = {}
    split: list[dict[str, float]] = []  # per rollout step: seconds in each phase

    timed = phase_timer(phase)

    E.BuiltinEngine.sample = timed("generate", E.BuiltinEngine.sample)  # the engine seam
    untimed = []

    def home(*names):  # the first module that still has the name (the recipe, or its update module)
        return next(((m, n) for n in names for m in (P, U) if hasattr(m, n)), (None, None))

    mod, name = home("rollout_values")
    if mod is not None:
        setattr(mod, name, timed("values", getattr(mod, name)))
    else:
        untimed.append("values")
    mod_l, _ = home("rollout_logps")
    if mod_l is not None:
        orig_logps = mod_l.rollout_logps

        def rollout_logps(model, *args, **kw):  # the old-policy pass asks for the entropy, the reference's not
            # (with ppo.old_logps=auto in fp32 the old-policy log-probs come from the sampler: no pass)
            name = "old_logps" if kw.get("with_entropy") else "ref_logps"
            return timed(name, orig_logps)(model, *args, **kw)

        mod_l.rollout_logps = rollout_logps
    else:
        untimed += ["old_logps", "ref_logps"]
    if hasattr(P, "update"):
        P.update = timed("update", P.update)
    elif hasattr(P, "_update"):
        P._update = timed("update", P._update)
    else:
        untimed.append("update")
    orig_ckpt = T.Trainer.maybe_checkpoint

    def maybe_checkpoint(self, *args, **kw):  # called once at the end of every rollout step
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        split.append(dict(phase))
        phase.clear()
        if len(stamps) == 1:
            hwm["before"] = reset_peak_rss()
        return orig_ckpt(self, *args, **kw)

    T.Trainer.maybe_checkpoint = maybe_checkpoint
    if a.fixed_length:
        # No episode ends before max_new_tokens: EOS is not a stop id (TRL: min_new_tokens).
        S = importlib.import_module("rlhf.rollout.sampler")
        if not hasattr(S, "eos_ids"):
            raise SystemExit("--fixed-length: rlhf's sampler no longer has eos_ids to patch; bench needs updating")
        S.eos_ids = lambda tokenizer, model=None: [-1]
    prof = {}
    if a.profile_step:
        # torch profile of rollout step ``profile_step`` (from the end of the previous step to its end).
        from torch.profiler import ProfilerActivity, profile

        def start_stop(n_done):
            if n_done == a.profile_step - 1:
                prof["p"] = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
                prof["p"].__enter__()
            elif n_done == a.profile_step and "p" in prof:
                prof["p"].__exit__(None, None, None)
                ka = prof["p"].key_averages()
                total = sum(e.self_cpu_time_total for e in ka)
                top = sorted(ka, key=lambda e: -e.self_cpu_time_total)[:25]
                prof["top_ops_self_cpu"] = [{"op": e.key, "calls": e.count,
                                             "self_ms": round(e.self_cpu_time_total / 1e3, 2),
                                             "share": round(e.self_cpu_time_total / total, 4)} for e in top]
                prof["self_cpu_ms_total"] = round(total / 1e3, 1)
                prof.pop("p")
        if a.profile_step == 1:
            start_stop(0)
        orig_mc = T.Trainer.maybe_checkpoint

        def maybe_checkpoint_prof(self, *args, **kw):
            r = orig_mc(self, *args, **kw)
            start_stop(len(stamps))
            return r

        T.Trainer.maybe_checkpoint = maybe_checkpoint_prof
    seen = {}
    orig_setup = T.Trainer.setup

    def setup(self, model, *args, **kw):  # what the policy really runs with
        pol = model.policy
        # (transformers 5.23 calls it activation checkpointing; the old name mirrors it)
        seen["gradient_checkpointing_in_model"] = bool(getattr(pol, "is_activation_checkpointing",
                                                               getattr(pol, "is_gradient_checkpointing", False)))
        seen["dtype_of_weights"] = str(next(pol.parameters()).dtype)
        return orig_setup(self, model, *args, **kw)

    T.Trainer.setup = setup
    out = Path(a.run_dir)
    algo = a.algo
    K = 1 if algo == "ppo" else a.num_samples
    prompts_per_step = a.ppo_prompts_per_step if algo == "ppo" else a.prompts_per_step
    overrides = [
        f"output_dir={out}", f"model.name_or_path={a.model}", "model.dtype=fp32", "model.attn_implementation=sdpa",
        f"model.gradient_checkpointing={'true' if a.gradient_checkpointing else 'false'}",
        "model.disable_dropout=true", f"advantage={ADVANTAGE[algo]}",
        f"reward={a.reward_model if algo == 'ppo' else GOLD}",
        f"data.train={a.prompts_file}", "data.chat_template=none", f"data.max_length={a.max_length}",
        f"sampling.num_samples={K}", f"sampling.max_new_tokens={a.max_new_tokens}",
        f"sampling.temperature={a.temperature}", "sampling.top_k=0", "sampling.top_p=1.0",
        f"sampling.batch_size={prompts_per_step * K}",  # one generate call per step, as TRL
        f"kl.beta={a.beta}", f"ppo.epochs={a.epochs}", "ppo.num_minibatches=1", "ppo.clip=0.2",
        "ppo.aggregation=token_mean", "ppo.vf_coef=0.1", "ppo.vf_clip=0.2", "ppo.gamma=1.0", "ppo.lam=0.95",
        "ppo.whiten_rewards=false", "ppo.whiten_advantages=true", "ppo.entropy_coef=0.0",
        f"train.batch_size={prompts_per_step}", "train.grad_accum=1", f"train.max_steps={a.steps}",
        f"train.lr={a.lr}", "train.scheduler=constant", "train.warmup_steps=0", "train.weight_decay=0.0",
        # TRL 1.9.2's PPOTrainer never clips gradients; GRPO / RLOO use the Trainer's default 1.0.
        "train.max_grad_norm=" + ("null" if algo == "ppo" else "1.0"), f"train.seed={a.seed}",
        "train.mixed_precision=" + ("bf16" if a.precision == "bf16" else "'no'"),  # YAML reads no as false
        f"train.eval_batch_size={prompts_per_step * K}", "train.log_every=1", "train.progress=false",
        "train.save_model_in_checkpoints=false", "train.save_total_limit=1", "train.resume_from=none",
        f"sample_every={10 ** 6}", "num_log_samples=0",
    ]
    if algo == "ppo":
        overrides.append("value_model=reward")
    cfg = load_config(config_cls, None, overrides)
    t_train = time.perf_counter()
    train(cfg)
    t_end = time.perf_counter()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in rows if "score" in m]
    n = len(metrics)
    episodes_per_step = prompts_per_step * K
    # Time split over steps 2..N (the timed window), seconds per step.
    keys = [k for k in ("generate", "old_logps", "ref_logps", "values", "update") if k not in untimed]
    timed_steps = split[1:] if len(split) > 1 else split
    per_step = {k: round(sum(s.get(k, 0.0) for s in timed_steps) / max(1, len(timed_steps)), 4) for k in keys}
    step_s = [b - a_ for a_, b in zip(stamps, stamps[1:])]
    mean_step = sum(step_s) / len(step_s) if step_s else None
    if mean_step:
        per_step["score_and_rest"] = round(mean_step - sum(per_step.values()), 4)
    res = {"side": "rlhf", "algo": algo, "steps": n, "episodes_per_step": episodes_per_step,
           **episode_rate(stamps, episodes_per_step, cpu_stamps, torch.get_num_threads()),
           "time_split_s_per_step": per_step,
           "time_split_fraction": ({k: round(v / mean_step, 3) for k, v in per_step.items()} if mean_step else None),
           "recipe_time_s_per_step": {k: round(sum(m[k] for m in metrics[1:]) / max(1, n - 1), 4)
                                      for k in ("time_generate_s", "time_score_s", "time_update_s")} if n > 1 else None,
           "response_length_mean": round(sum(m["response_length"] for m in metrics) / n, 2),
           "eos_fraction": round(sum(m["eos_fraction"] for m in metrics) / n, 3),
           "scores": [round(m["score"], 4) for m in metrics], "kl": [round(m["kl"], 4) for m in metrics],
           "import_s": round(t_train - t_start, 2),
           "to_end_of_step1_s": round(stamps[0] - t_train, 2) if stamps else None,
           "train_call_s": round(t_end - t_train, 2),
           "import_rss_mib": round(import_rss, 1), **memory_report(hwm["before"]),
           "torch_threads": torch.get_num_threads(), **seen, "phases_untimed": untimed}
    if prof:
        res["profile"] = {"step": a.profile_step, **prof}
    return res


# --------------------------------------------------------------------------- the coordinator


def _child(cmd: list[str], env_extra: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "TRL_EXPERIMENTAL_SILENCE": "1",
           "ACCELERATE_USE_CPU": "true" if not _cuda() else "false", **env_extra}
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: " + p.stderr[-3000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def build_models(a) -> dict:
    """The policy (a tiny random Llama, or --policy) and, for PPO, a tiny random reward model with
    the policy's architecture and tokenizer (its critic copy starts from it on both sides)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.models.tiny import make_tiny_checkpoint
    from rlhf.testbed.reviews import make_sft_records

    mdir = a.work / "models"
    if a.policy is not None:
        policy = a.policy
    else:
        policy = mdir / f"policy-llama-h{a.hidden_size}-l{a.num_layers}"
        if not (policy / "config.json").exists():
            texts = [r["prompt"] + " " + r["completion"] for r in make_sft_records(2000, seed=0)]
            make_tiny_checkpoint(policy, "llama", texts, vocab_size=512, hidden_size=a.hidden_size,
                                 num_layers=a.num_layers, num_heads=4, max_position_embeddings=a.max_length,
                                 seed=0)
    rm = mdir / f"{Path(policy).name}-reward-seed1"
    if not (rm / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(policy)
        cfg = AutoConfig.from_pretrained(policy, num_labels=1)
        cfg.pad_token_id = tok.pad_token_id
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.float32)
        model.save_pretrained(rm)
        tok.save_pretrained(rm)
        # How rlhf's ModelReward encodes (prompt, completion): plain text, EOS appended (TRL 1.9.2
        # scores the response up to and including its EOS).
        (rm / "reward_stats.json").write_text(json.dumps(
            {"encoding": {"chat_template": "none", "max_length": a.max_length, "add_eos": True}}) + "\n")
    return {"policy": Path(policy), "reward_model": rm}


def write_prompts(a) -> dict[str, Path]:
    """Per algorithm, a file with exactly the prompts of one run (prompts per step x steps): both
    sides visit each of them once, each in its own shuffled order."""
    from rlhf.testbed.reviews import make_prompts

    out = {}
    for algo in ("grpo", "rloo", "ppo"):
        n = (a.ppo_prompts_per_step if algo == "ppo" else a.prompts_per_step) * a.steps
        path = a.work / "data" / f"prompts-n{n}-seed{a.seed}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for p in make_prompts(n, seed=a.seed):
                f.write(json.dumps({"prompt": p}) + "\n")
        out[algo] = path
    return out


def describe(policy: Path) -> dict:
    import json as _j
    c = _j.loads((policy / "config.json").read_text())
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(policy)
    return {"policy": str(policy), "arch": c.get("model_type"), "hidden_size": c.get("hidden_size"),
            "num_layers": c.get("num_hidden_layers"), "vocab_size": c.get("vocab_size"),
            "parameters": sum(p.numel() for p in m.parameters())}


def run_one(a, models: dict, prompts: dict[str, Path], algo: str, prec: str, side: str, rep: int) -> dict:
    tag = f"{algo}-{prec}-{side}-r{rep}"
    run_dir = a.work / "runs" / tag
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    common = ["--algo", algo, "--model", str(models["policy"]), "--reward-model", str(models["reward_model"]),
              "--prompts-file", str(prompts[algo]), "--run-dir", str(run_dir), "--steps", str(a.steps),
              "--prompts-per-step", str(a.prompts_per_step), "--ppo-prompts-per-step", str(a.ppo_prompts_per_step),
              "--num-samples", str(a.num_samples), "--max-new-tokens", str(a.max_new_tokens),
              "--max-length", str(a.max_length), "--temperature", str(a.temperature), "--beta", str(a.beta),
              "--epochs", str(a.epochs), "--lr", str(a.lr), "--seed", str(a.seed), "--threads", str(a.threads),
              "--precision", prec, *(["--gradient-checkpointing"] if a.gradient_checkpointing else []),
              *(["--fixed-length"] if a.fixed_length else [])]
    if side == "rlhf-profile":  # an extra, untimed run of the rlhf side under the torch profiler
        common += ["--profile-step", str(a.profile_step)]
        side = "rlhf"
    if side in ("trl", "trl_nogc"):
        cmd = [str(REPO / VENVS[algo] / "bin" / "python"), str(HERE / "ppo_trl.py"), *common,
               *(["--no-gc-collect"] if side == "trl_nogc" else [])]
    else:
        script = str(a.variant) if side == "variant" else __file__
        cmd = [sys.executable, script, "--child", *common]
    la = loadavg()
    t_run = time.time()
    res = _child(cmd, {"HF_DATASETS_CACHE": str(run_dir / "hf-datasets-cache")})
    res.update(wall_s=round(time.time() - t_run, 1), loadavg_before=la, command=" ".join(cmd))
    if not a.keep_runs and "error" not in res:
        shutil.rmtree(run_dir, ignore_errors=True)
    brief = {k: res.get(k) for k in ("episodes_per_s", "episodes_per_cpu_s", "cpu_share_of_threads", "peak_rss_mib",
                                      "response_length_mean", "error")}
    print(json.dumps({"run": tag, **brief, "loadavg_before": la}), file=sys.stderr)
    return res


def merge_repeats(runs: list[dict]) -> dict:
    """Medians over the CLEAN repeats (bench/_bench.summarize), every repeat's episodes/s, CPU
    share and peak RSS kept beside them; no figure from an unclean run."""
    return summarize(runs, "episodes_per_s", extra_keys=("episodes_per_cpu_s",))


def compare(runs: dict, algos: list[str], precisions: list[str], sides: list[str]) -> dict:
    out = {}
    for ours, theirs in [(o, t) for o in sides if not o.startswith("trl") for t in sides if t.startswith("trl")]:
        for algo in algos:
            for prec in precisions:
                o, t = runs.get(f"{algo}/{prec}/{ours}"), runs.get(f"{algo}/{prec}/{theirs}")
                if not o or not t:
                    continue
                key = f"{algo}/{prec}" + ("" if ours == "rlhf" else f" [{ours}]") + \
                    ("" if theirs == "trl" else f" vs {theirs}")
                r = ratio(o, t, "episodes_per_s")
                rc = ratio(o, t, "episodes_per_cpu_s")
                out[key] = {
                    "speedup_episodes_per_s": r["ratio"], **({"refused": r["refused"]} if "refused" in r else {}),
                    "speedup_episodes_per_cpu_s": rc["ratio"],
                    "clean_repeats": r.get("clean_repeats"), "peak_rss_ratio": r.get("peak_rss_ratio"),
                    "response_length_mean": [o.get("response_length_mean"), t.get("response_length_mean")],
                    "target_met": bool(r["ratio"] and r["ratio"] >= 2 and (r.get("peak_rss_ratio") or 9) <= 1),
                }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default="grpo,rloo,ppo", help="comma list of grpo, rloo, ppo")
    p.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16 (autocast)")
    p.add_argument("--sides", default="rlhf,trl",
                   help="rlhf, trl, variant (needs --variant) and trl_nogc "
                        "(diagnostic: TRL with gc.collect() a no-op; TRL 1.9.2's PPO calls it twice a step)")
    p.add_argument("--variant", type=Path, default=None,
                   help="a script run like the rlhf child (same flags), e.g. rlhf with a patched function")
    p.add_argument("--steps", type=int, default=10, help="rollout steps per run (the first is not timed)")
    p.add_argument("--repeats", type=int, default=2,
                   help="interleaved repeats; the median of the clean ones is reported")
    p.add_argument("--smoke", action="store_true",
                   help="one quick check that the bench still runs (GRPO and PPO, 2 steps of 4 episodes, 8 new "
                        "tokens, the rlhf side, TRL too where its venvs exist); its timings are no figures")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads in every run (0 = torch's default)")
    p.add_argument("--prompts-per-step", type=int, default=8, help="GRPO / RLOO: prompts per rollout step")
    p.add_argument("--num-samples", type=int, default=4, help="GRPO / RLOO: completions per prompt")
    p.add_argument("--ppo-prompts-per-step", type=int, default=32,
                   help="PPO: prompts per rollout step, one completion each (TRL's PPO samples one)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--max-length", type=int, default=128, help="the tiny policy's context (prompt + completion)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.05, help="KL weight on both sides (TRL GRPO's default is 0)")
    p.add_argument("--epochs", type=int, default=1,
                   help="optimisation passes over each rollout (TRL: num_iterations / num_ppo_epochs)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true", help="on for both sides (default off on both)")
    p.add_argument("--fixed-length", action="store_true",
                   help="every completion runs to --max-new-tokens on both sides (EOS not a stop: TRL "
                        "GRPO/RLOO min_new_tokens, TRL PPO stop_token=None), so episode lengths are equal")
    p.add_argument("--profile-step", type=int, default=0,
                   help="also run the rlhf side once more with this rollout step under the torch profiler "
                        "and report its top ops (a separate run, not timed; 0 = off)")
    p.add_argument("--policy", type=Path, default=None,
                   help="a policy folder to use instead of the tiny random Llama (e.g. a copy of an SFT model)")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/ppo_vs_trl"), help="models, prompts and run folders")
    p.add_argument("--keep-runs", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    # child mode (one rlhf run); the TRL child is bench/ppo_trl.py
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--algo", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--reward-model", help=argparse.SUPPRESS)
    p.add_argument("--prompts-file", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke and not a.child:
        if a.algos == "grpo,rloo,ppo":  # the default: GRPO and PPO cover both code paths
            a.algos = "grpo,ppo"
        a.precisions, a.steps, a.repeats = "fp32", 2, 1
        a.prompts_per_step, a.num_samples, a.ppo_prompts_per_step, a.max_new_tokens = 2, 2, 4, 8
        a.hidden_size, a.num_layers = 32, 1
        a.sides = "rlhf,trl" if trl_python(".venv-trl") and trl_python(".venv-trl-ppo") else "rlhf"
        if a.work == Path("/tmp/ppo_vs_trl"):
            import tempfile
            a.work = Path(tempfile.mkdtemp(prefix="ppo_vs_trl-smoke-"))
    if a.child:
        print(json.dumps(run_ours(a)))
        return 0

    algos, precisions, sides = a.algos.split(","), a.precisions.split(","), a.sides.split(",")
    if any(s.startswith("trl") for s in sides):
        for algo in algos:
            if not (REPO / VENVS[algo] / "bin" / "python").exists():
                raise SystemExit(f"no {VENVS[algo]} for {algo}: run `bash {MAKE_VENV[VENVS[algo]]}` first")
    if "variant" in sides and (a.variant is None or not a.variant.exists()):
        raise SystemExit("side 'variant' needs --variant SCRIPT")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    a.work.mkdir(parents=True, exist_ok=True)
    models = build_models(a)
    prompts = write_prompts(a)
    out: dict = {"bench": "ppo_vs_trl", "smoke": a.smoke, "argv": sys.argv[1:] if argv is None else argv,
                 "model": describe(models["policy"]), "reward_model_for_ppo": str(models["reward_model"]),
                 "prompts_files": {k: str(v) for k, v in prompts.items()}, "steps": a.steps, "repeats": a.repeats,
                 "grpo_rloo": {"prompts_per_step": a.prompts_per_step, "num_samples": a.num_samples,
                               "episodes_per_step": a.prompts_per_step * a.num_samples},
                 "ppo": {"prompts_per_step": a.ppo_prompts_per_step, "num_samples": 1,
                         "episodes_per_step": a.ppo_prompts_per_step},
                 "max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "beta": a.beta,
                 "epochs": a.epochs, "lr": a.lr, "fixed_length": a.fixed_length,
                 "gradient_checkpointing": a.gradient_checkpointing,
                 "seed": a.seed, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                 "variant": str(a.variant) if a.variant else None, "loadavg_start": loadavg()}
    configs = [(algo, prec, side) for algo in algos for prec in precisions for side in sides]
    raw: dict[str, list[dict]] = {f"{c[0]}/{c[1]}/{c[2]}": [] for c in configs}
    for rep, (algo, prec, side) in interleaved(configs, a.repeats):
        raw[f"{algo}/{prec}/{side}"].append(run_one(a, models, prompts, algo, prec, side, rep))
    runs = {k: merge_repeats(v) for k, v in raw.items()}
    if a.profile_step and "rlhf" in sides:
        for algo in algos:
            for prec in precisions:
                r = run_one(a, models, prompts, algo, prec, "rlhf-profile", 0)
                runs[f"{algo}/{prec}/rlhf-profile"] = {"profile": r.get("profile"), "error": r.get("error"),
                                                       "note": "profiler on: timings of this run not comparable"}
    out["runs"] = runs
    out["comparisons"] = compare(runs, algos, precisions, sides)
    out["loadavg_end"] = loadavg()
    out["wall_s"] = round(time.time() - t0, 1)
    print(write_json(out, a.out, argv))
    if a.smoke:
        bad = [k for k, r in runs.items() if r.get("error")]
        if bad:
            print(f"smoke: failed runs: {bad}: " + "; ".join(str(runs[k]["error"])[-400:] for k in bad),
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
