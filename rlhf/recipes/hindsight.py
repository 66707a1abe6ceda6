"""Hindsight instruction relabeling (Zhang et al. 2023, "The Wisdom of Hindsight Makes Language
Models Better Instruction Followers", HIR): every sampled response is a correct demonstration
of *some* instruction. Relabel each (prompt, response) with an instruction it does satisfy and
fine-tune on the relabeled pairs; no reward model, no RL.

Round r = 1..R::

    sample K responses y per prompt x from the current policy π_{r-1}
    x' = relabel(x, y)                       a user function: an instruction y satisfies
    π_r = SFT(π_{r-1}) on the pairs (x', y)

The relabel function is ``package.module:fn(prompt, completion) -> new prompt`` (a string; None
drops the sample). On the built-in task, ``rlhf.testbed.reviews:relabel`` turns any review into
"positive review of X:" or "negative review of X:" by its actual sentiment, so a policy learns
to follow the polarity it is asked for from its own samples. HIR also adds a contrastive term
over instructions; this recipe does its relabel-then-supervise core only.

Outputs in ``output_dir``: ``config.yaml``; per round ``round-<r>/`` holding
``relabeled.jsonl`` (prompt = the relabeled instruction, completion, original_prompt; what the
SFT trains on), ``sft/`` (the inner SFT run) and ``summary.json`` (the round is finished);
``final/`` (the last round's policy, hard-linked from its ``sft/final``); ``summary.json`` last. A killed run
resumes: finished rounds are skipped, a round's samples are reused once written, its SFT
resumes from its last checkpoint. A relabel function that raises stops the run with an error
naming the prompt and sample, before the round writes anything.

Run it with ``rlhf hindsight --recipe tiny [key=value ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError, opt, save_config
from rlhf.data.config import DataConfig
from rlhf.eval.evaluate import SamplingConfig
from rlhf.models.config import ModelConfig
from rlhf.recipes.constitutional import generate_texts, load_step_function
from rlhf.recipes.sft import SFTSection, inner_sft_config, run_inner_sft
from rlhf.train.guards import check_resume_config
from rlhf.train.run import is_finished, prepare_output_dir, publish_model, write_json_atomic, write_jsonl_atomic

__all__ = ["HindsightConfig", "RelabelError", "relabel_samples", "train"]


class RelabelError(ValueError):
    """The relabel function failed on (or returned something unusable for) one sample."""


@dataclass(frozen=True)
class HindsightConfig:
    output_dir: str = opt("runs/hindsight", "folder for config.yaml, round-<r>/, final and summary.json")
    relabel: str = opt("", "package.module:fn(prompt, completion) -> an instruction the completion "
                           "satisfies (None drops the sample); built-in task: rlhf.testbed.reviews:relabel")
    rounds: int = opt(2, "sample -> relabel -> SFT rounds; each starts from the previous round's policy", ge=1)
    num_samples: int = opt(4, "completions sampled per prompt per round (K)", ge=1)
    track: dict[str, Any] = opt(factory=dict, help="reward sources scoring each round's samples on their "
                                                   "ORIGINAL prompts, {name: spec} (e.g. {gold: "
                                                   "rlhf.testbed.reviews:gold_reward}); reported only")
    seed: int = opt(0, "seed of sampling (round r samples with seed + r)")
    progress: bool = opt(True, "show progress bars")
    model: ModelConfig = opt(factory=ModelConfig, help="the initial policy")
    data: DataConfig = opt(factory=DataConfig, help="the prompts: data.train is any file with a prompt "
                                                    "column; max_length and chat_template also apply to SFT")
    sampling: SamplingConfig = opt(factory=SamplingConfig, help="how completions are sampled")
    sft: SFTSection = opt(factory=SFTSection, help="the fine-tuning on the relabeled pairs, each round")

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train", "is required: the prompts (a file with a prompt column)")
        if not self.relabel.strip():
            raise ConfigError("relabel", "is required: package.module:function(prompt, completion) -> new "
                                         "prompt (built-in task: rlhf.testbed.reviews:relabel)")
        if self.relabel.count(":") != 1:
            raise ConfigError("relabel", f"expected 'package.module:function' (got {self.relabel!r})")
        if self.sampling.temperature == 0 and self.num_samples > 1:
            raise ConfigError("sampling.temperature", "0 is greedy decoding: all num_samples completions "
                                                      "would be the same; use a temperature > 0")


def relabel_samples(fn: Callable, prompts: Sequence[Any], completions: Sequence[str], num_samples: int,
                    name: str = "relabel") -> tuple[list[dict[str, Any]], int]:
    """Apply ``fn(prompt, completion)`` to every sample (``num_samples`` consecutive completions
    per prompt). Returns (rows {prompt, completion, original_prompt}, number dropped: None
    answers and empty completions). Raises :class:`RelabelError` naming the prompt and sample."""
    rows, dropped = [], 0
    for j, c in enumerate(completions):
        i, k = divmod(j, num_samples)
        p = prompts[i]
        where = f"prompt {i + 1} ({p!r}), sample {k + 1} ({c!r})"
        try:
            new = fn(p, c)
        except Exception as e:
            raise RelabelError(f"relabel function {name} raised on {where}: {type(e).__name__}: {e}") from e
        if new is None or not c.strip():
            dropped += 1
            continue
        if not (isinstance(new, str) and new.strip()) and not (isinstance(new, list) and new):
            raise RelabelError(f"relabel function {name} returned {new!r} on {where}; expected a non-empty "
                               "prompt (a string or chat messages) or None to drop the sample")
        rows.append({"prompt": new, "completion": c, "original_prompt": p})
    return rows, dropped


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def train(cfg: HindsightConfig) -> dict[str, Any]:
    import torch

    from rlhf.data.load import load_records
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.rewards import load_reward_source

    t0 = time.time()
    out = Path(cfg.output_dir)

    # Step 1. Check what can fail fast (relabel function, reward specs, prompts), then open the
    # output folder (a finished run is never overwritten).
    relabel = load_step_function(cfg.relabel, "relabel")
    try:
        trackers = {k: load_reward_source(v) for k, v in cfg.track.items()}
    except ValueError as e:
        raise ConfigError("track", str(e)) from None
    records, report = load_records(cfg.data, "prompt")
    prompts = [r.prompt for r in records]
    prepare_output_dir(out, "auto")
    if any(out.glob("round-*")):  # resuming: same settings or safe changes
        check_resume_config(out, out / "config.yaml", cfg, "hindsight")
    save_config(cfg, out / "config.yaml")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    policy_path = cfg.model.name_or_path
    rounds: list[dict[str, Any]] = []
    for r in range(1, cfg.rounds + 1):
        rdir = out / f"round-{r}"
        mcfg = dataclasses.replace(cfg.model, name_or_path=policy_path)
        if is_finished(rdir):  # resume: this round is done
            rounds.append(json.loads((rdir / "summary.json").read_text()))
            policy_path = str(rdir / "sft" / "final")
            continue
        t_round = time.time()
        data_file = rdir / "relabeled.jsonl"
        if data_file.is_file():
            stats = json.loads((rdir / "samples.json").read_text())
        else:
            # Step 2. K samples per prompt from the current policy.
            model = load_causal_lm(mcfg, for_training=False).to(device)
            tok = load_tokenizer(mcfg)
            completions = generate_texts(model, tok, prompts, cfg.sampling, seed=cfg.seed + r, data_cfg=cfg.data,
                                         num_samples=cfg.num_samples, progress=cfg.progress,
                                         desc=f"hindsight round {r}: sampling")
            del model
            originals = [p for p in prompts for _ in range(cfg.num_samples)]
            # Step 3. Relabel every sample with an instruction it satisfies (all or nothing).
            rows, dropped = relabel_samples(relabel, prompts, completions, cfg.num_samples, cfg.relabel)
            if not rows:
                raise RelabelError(f"relabel function {cfg.relabel} dropped all {len(completions)} samples of "
                                   f"round {r}: nothing to train on")
            stats = {"samples": len(completions), "relabeled": len(rows), "dropped": dropped,
                     "prompt_changed_fraction": sum(x["prompt"] != x["original_prompt"] for x in rows) / len(rows)}
            for name, src in trackers.items():  # how good the round's samples are at their real task
                stats[f"{name}_mean"] = _mean(src(originals, completions).tolist())
            rdir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(rdir / "samples.json", stats)
            write_jsonl_atomic(data_file, rows)
        # Step 4. SFT of the current policy on the relabeled pairs (resumes from a checkpoint).
        sft_summary = run_inner_sft(inner_sft_config(rdir / "sft", mcfg, cfg.data, data_file, cfg.sft))
        summary_r = {"round": r, "policy": policy_path, **stats, "sft": sft_summary,
                     "seconds": round(time.time() - t_round, 2)}
        write_json_atomic(rdir / "summary.json", summary_r)
        rounds.append(summary_r)
        policy_path = str(rdir / "sft" / "final")
        tracked = ", ".join(f"{k} {stats[f'{k}_mean']:.3f}" for k in trackers)
        print(f"[hindsight] round {r}/{cfg.rounds}: {stats['relabeled']} relabeled samples"
              + (f" ({tracked} on the original prompts)" if tracked else ""))

    # Step 5. The final policy and the summary (last: marks the run finished).
    publish_model(out / f"round-{cfg.rounds}" / "sft" / "final", out / "final")
    summary = {"rounds": rounds, "prompts": len(prompts), "num_samples": cfg.num_samples,
               "skipped": dict(report.counts), "seconds": round(time.time() - t0, 2)}
    write_json_atomic(out / "summary.json", summary)
    return summary
