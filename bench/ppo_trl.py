"""TRL's side of bench/ppo_vs_trl.py: one GRPO / RLOO (TRL 1.16, run with .venv-trl/bin/python)
or PPO (TRL 1.9.2's trl.experimental.ppo, run with .venv-trl-ppo/bin/python) training run.

Same flags as the rlhf child. Prints one JSON object (last line): episodes/s between the end of
rollout step 1 and the end of the last one, peak RSS of the process and during steps 2..N, mean
response length (tokens up to and including the first EOS, as rlhf counts them) and EOS fraction,
what the model really ran with.

Counting: GRPO / RLOO take ``per_device_train_batch_size`` = completions per optimizer step; with
``steps_per_generation = 1`` one generation of ``prompts x num_generations`` completions is reused
for ``num_iterations`` optimizer steps, so a rollout step ends every ``num_iterations`` optimizer
steps. PPO's rollout step is one ``update`` of its loop (``num_ppo_epochs`` optimizer steps with one
minibatch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # rlhf.testbed.reviews (pure Python) for the gold reward


def main() -> int:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", choices=["grpo", "rloo", "ppo"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--reward-model", required=True)
    ap.add_argument("--prompts-file", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--ppo-prompts-per-step", type=int, default=32)
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--max-length", type=int, default=128,
                    help="prompt + completion limit: rlhf truncates prompts to it, TRL here does not, so a prompt "
                         "that would need cutting is refused (the two sides would see different tokens)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--fixed-length", action="store_true", help="no EOS stop: every completion is max-new-tokens long")
    ap.add_argument("--no-gc-collect", action="store_true",
                    help="diagnostic: make gc.collect() a no-op (TRL 1.9.2's PPO calls it twice per step)")
    a = ap.parse_args()
    gc_calls = {"n": 0, "s": 0.0}
    import gc
    orig_collect = gc.collect

    def collect(*args, **kw):  # counts (and with --no-gc-collect skips) the trainer's explicit collections
        gc_calls["n"] += 1
        if a.no_gc_collect:
            return 0
        t0 = time.perf_counter()
        try:
            return orig_collect(*args, **kw)
        finally:
            gc_calls["s"] += time.perf_counter() - t0

    gc.collect = collect

    import torch
    from _bench import _status, memory_report, reset_peak_rss
    from dpo_vs_trl import phase_timer
    from ppo_vs_trl import episode_rate
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if a.threads:
        torch.set_num_threads(a.threads)
    import_rss = _status("VmRSS") / 1024
    t_setup = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    prompts = [json.loads(x)["prompt"] for x in Path(a.prompts_file).read_text().splitlines()]
    # --max-length: rlhf cuts a prompt so that prompt + max_new_tokens fits; nothing here would, so
    # the run stops unless every prompt already fits (then both sides see the same tokens).
    too_long = [p for p in prompts
                if len(tok(p, add_special_tokens=False)["input_ids"]) + a.max_new_tokens > a.max_length]
    if too_long:
        raise SystemExit(f"{len(too_long)} prompts + {a.max_new_tokens} new tokens exceed --max-length "
                         f"{a.max_length} (rlhf would truncate them, this TRL side cannot): raise --max-length")
    eos = tok.eos_token_id
    lengths: list[float] = []  # per rollout step: mean completion length (EOS included)
    eos_frac: list[float] = []

    def record_lengths(completion_ids: torch.Tensor) -> None:
        """(B, L) sampled ids after the prompt: length = up to and including the first EOS."""
        is_eos = completion_ids == eos
        if a.fixed_length:  # EOS is an ordinary token here: nothing is cut
            is_eos = torch.zeros_like(is_eos)
        ended = is_eos.any(1)
        first = torch.where(ended, is_eos.int().argmax(1) + 1, torch.full_like(ended, completion_ids.shape[1],
                                                                                dtype=torch.long))
        lengths.append(float(first.float().mean()))
        eos_frac.append(float(ended.float().mean()))

    stamps: list[float] = []
    cpu_stamps: list[float] = []
    hwm = {"before": None}
    opt_steps = {"n": 0}
    phase: dict[str, float] = {}  # seconds per phase since the last rollout step ended
    split: list[dict[str, float]] = []

    timed = phase_timer(phase)
    per_rollout = 1 if a.algo == "ppo" else a.epochs  # optimizer steps (callbacks) per rollout step

    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            opt_steps["n"] += 1
            if opt_steps["n"] % per_rollout:
                return
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())
            split.append(dict(phase))
            phase.clear()
            if len(stamps) == 1:
                hwm["before"] = reset_peak_rss()

    common = dict(
        output_dir=a.run_dir, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch_fused",
        seed=a.seed, data_seed=a.seed, gradient_accumulation_steps=1,
        # Set explicitly: TRL's configs default to bf16=True and gradient checkpointing on.
        # (transformers 5.23 names gradient checkpointing "activation_checkpointing"; TRL reads the old
        # name, which mirrors the new one.) Non-reentrant, as rlhf's model.gradient_checkpointing.
        bf16=a.precision == "bf16", fp16=False, activation_checkpointing=a.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if a.gradient_checkpointing else None,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    info: dict = {}
    if a.algo in ("grpo", "rloo"):
        from datasets import Dataset

        from rlhf.testbed.reviews import gold_reward

        def gold(prompts, completions, **kwargs):  # TRL's reward_funcs signature
            return [float(x) for x in gold_reward(prompts, completions)]

        rows = a.prompts_per_step * a.num_samples
        ds = Dataset.from_list([{"prompt": p} for p in prompts[: a.prompts_per_step * a.steps]])
        kw = dict(common, per_device_train_batch_size=rows, steps_per_generation=1,
                  num_generations=a.num_samples, num_iterations=a.epochs, max_steps=a.steps * a.epochs,
                  max_completion_length=a.max_new_tokens, temperature=a.temperature, top_k=0, top_p=1.0,
                  repetition_penalty=1.0, beta=a.beta, epsilon=0.2, max_grad_norm=1.0,
                  disable_dropout=True, use_vllm=False, log_completions=False, mask_truncated_completions=False,
                  generation_kwargs={"min_new_tokens": a.max_new_tokens} if a.fixed_length else None)
        if a.algo == "grpo":
            from trl import GRPOConfig as Cfg
            from trl import GRPOTrainer as Tr
            kw.update(loss_type="dapo", scale_rewards="group")  # token mean; (s - mean) / std per group
        else:
            from trl import RLOOConfig as Cfg
            from trl import RLOOTrainer as Tr
            kw.update(normalize_advantages=False)
        cfg = Cfg(**kw)

        class Recorded(Tr):
            """Records completion lengths and where a rollout step's time goes: generation
            (``_generate``: sampling + decoding), scoring (``_calculate_rewards``), the no-grad
            log-prob passes (the rest of ``_generate_and_score_completions``) and the update
            (everything else: loss forward, backward, optimizer step, bookkeeping)."""

            def _generate_and_score_completions(self, inputs):
                t0 = time.perf_counter()
                before = {k: phase.get(k, 0.0) for k in ("generate", "score")}
                out = super()._generate_and_score_completions(inputs)
                inner = sum(phase.get(k, 0.0) - before[k] for k in before)
                phase["logp_passes"] = phase.get("logp_passes", 0.0) + time.perf_counter() - t0 - inner
                ids = out["completion_ids"].masked_fill(out["completion_mask"] == 0, eos)
                record_lengths(ids)
                return out

            def _generate(self, prompts):
                return timed("generate", super()._generate)(prompts)

            def _calculate_rewards(self, *args, **kw):
                return timed("score", super()._calculate_rewards)(*args, **kw)

        trainer = Recorded(model=model, reward_funcs=[gold], args=cfg, train_dataset=ds, processing_class=tok,
                           callbacks=[StepTimes()])
        info["ref_model_loaded"] = getattr(trainer, "ref_model", None) is not None
    else:
        import trl.experimental.ppo.ppo_trainer as PT
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        tok.padding_side = "left"  # queries are left-padded by DataCollatorWithPadding
        B = a.ppo_prompts_per_step
        ds = Dataset.from_list([{"input_ids": tok(p, add_special_tokens=False)["input_ids"]}
                                for p in prompts[: B * a.steps]])
        rm = AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1, dtype=torch.float32,
                                                                attn_implementation="sdpa")
        vm = AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1, dtype=torch.float32,
                                                                attn_implementation="sdpa")
        ref = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
        for m in (rm, vm):
            m.config.pad_token_id = tok.pad_token_id
        orig_gen = PT.batch_generation

        def batch_generation(m, queries, *args, **kw):
            qr, logits = timed("generate", orig_gen)(m, queries, *args, **kw)
            resp = qr[:, queries.shape[1]:]
            info.setdefault("generated_widths", []).append(int(resp.shape[1]))
            record_lengths(resp)
            return qr, logits

        PT.batch_generation = batch_generation
        if a.gradient_checkpointing:
            # TRL 1.9.2's PPOTrainer runs its own loop and never turns checkpointing on from the
            # config: do it here, on the policy and the critic (as rlhf does), non-reentrant.
            for m in (model, vm):
                enable = getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable
                try:
                    enable(activation_checkpointing_kwargs={"use_reentrant": False})
                except TypeError:
                    enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        cfg = PPOConfig(**common, per_device_train_batch_size=B, num_mini_batches=1, total_episodes=B * a.steps,
                        num_ppo_epochs=a.epochs, local_rollout_forward_batch_size=B, num_sample_generations=0,
                        response_length=a.max_new_tokens,
                        stop_token=None if a.fixed_length else "eos", temperature=a.temperature,
                        kl_coef=a.beta, kl_estimator="k1", cliprange=0.2, vf_coef=0.1, cliprange_value=0.2,
                        gamma=1.0, lam=0.95, whiten_rewards=False, missing_eos_penalty=None,
                        sft_model_path=a.model, reward_model_path=a.reward_model)
        trainer = PPOTrainer(args=cfg, processing_class=tok, model=model, ref_model=ref, reward_model=rm,
                             train_dataset=ds, value_model=vm, callbacks=[StepTimes()])

    t_train = time.perf_counter()
    trainer.train()
    t_end = time.perf_counter()
    n = len(stamps)
    eps_per_step = a.ppo_prompts_per_step if a.algo == "ppo" else a.prompts_per_step * a.num_samples
    inner = trainer.model.policy if a.algo == "ppo" else trainer.model
    gen_widths = info.pop("generated_widths", None)
    timed_steps = split[1:]
    step_s = [b - a_ for a_, b in zip(stamps, stamps[1:])]
    time_split = None
    if step_s:
        keys = ["generate", "score", "logp_passes"] if a.algo != "ppo" else ["generate"]
        time_split = {k: round(sum(x.get(k, 0.0) for x in timed_steps) / len(timed_steps), 4) for k in keys}
        time_split["update_and_rest"] = round(sum(step_s) / len(step_s) - sum(time_split.values()), 4)
    res = {"side": "trl", "algo": a.algo, "steps": n, "episodes_per_step": eps_per_step,
           **episode_rate(stamps, eps_per_step, cpu_stamps, torch.get_num_threads()),
           "time_split_s_per_step": time_split,
           "response_length_mean": round(sum(lengths) / len(lengths), 2) if lengths else None,
           "eos_fraction": round(sum(eos_frac) / len(eos_frac), 3) if eos_frac else None,
           "rollouts_recorded": len(lengths),
           "import_s": round(t_setup - t_start, 2),
           "to_end_of_step1_s": round(stamps[0] - t_setup, 2) if stamps else None,
           "train_call_s": round(t_end - t_train, 2),
           "import_rss_mib": round(import_rss, 1), **memory_report(hwm["before"]),
           "torch_threads": torch.get_num_threads(), "optim": cfg.optim, "bf16": cfg.bf16,
           "gradient_checkpointing": cfg.gradient_checkpointing,
           "gradient_checkpointing_in_model": bool(getattr(inner, "is_activation_checkpointing",
                                                           getattr(inner, "is_gradient_checkpointing", False))),
           "dtype_of_weights": str(next(inner.parameters()).dtype), "fixed_length": a.fixed_length, **info}
    res["gc_collect"] = {"calls": gc_calls["n"], "seconds_total": round(gc_calls["s"], 3),
                         "skipped": a.no_gc_collect}
    if gen_widths:
        res["generated_width_mean"] = round(sum(gen_widths) / len(gen_widths), 2)
    import trl
    res["trl_version"] = trl.__version__
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
