"""Rejection-sampling fine-tuning: sample from the policy, keep what the reward likes, SFT on it.

Two schedules of the same three steps (sample K completions per prompt from the current policy,
filter them with a reward source, fine-tune on the survivors with :mod:`rlhf.recipes.sft`):

* **RAFT / Llama 2 rejection sampling** (``rlhf raft``; Dong et al. 2023, "RAFT"; Touvron et al.
  2023, Llama 2 §3.2.3): R rounds; every round samples afresh from the policy the previous round
  produced and keeps the best of K per prompt (``keep: best``, ties broken at random, seeded),
  every sample at or above a reward ``threshold``, or the ``top_fraction`` highest of the round.
* **ReST** (``rlhf rest``; Gulcehre et al. 2023, "Reinforced Self-Training"): G Grow steps, each
  sampling one dataset from the current policy; then one Improve step per entry of
  ``thresholds``, all on that same dataset, each keeping the samples at or above a RISING reward
  threshold and fine-tuning the policy left by the previous Improve step. The paper used fixed
  reward thresholds; a reward model's scale is arbitrary and drifts as the policy improves, so
  the default here is quantiles of the Grow dataset's rewards (``threshold_kind: quantile``):
  q keeps the top 1 - q of the samples (exactly that many, ties at the cut broken at random, so
  a discrete reward whose samples mostly tie cannot make a threshold keep everything); q = 0.5
  keeps the better half, whatever the reward's units. ``absolute`` gives the paper's fixed
  thresholds (every sample with reward >= t).

A run is a list of steps (:class:`Step`): RAFT's rounds, ReST's (grow, improve) pairs. Everything
else, sampling and scoring, filtering, the inner SFT run, resuming, outputs, is shared; the two
differ only in the schedule :func:`raft_schedule` / :func:`rest_schedule` builds.

Outputs, in ``output_dir``::

    config.yaml                 the resolved config (its settings are the run's fingerprint)
    round-<r>/ (RAFT) or grow-<g>/improve-<i>/ (ReST), one folder per step:
        samples.jsonl           every completion with its reward (and tracked rewards); ReST
                                keeps it in grow-<g>/, shared by that Grow's Improve steps
        kept.jsonl              the selected ones: prompt / completion, what SFT trains on
        sft/                    the inner SFT run (its own config, metrics, checkpoints, final/)
        summary.json            the step's metrics; marks the step finished
    metrics.jsonl               one row per step (step, score, kept, loss, track/<name>, ...)
    final_samples.jsonl         samples of the final policy on step 1's prompts (``score_final``)
    final/                      the last step's policy (hard links; loadable like any model folder)
    summary.json                written last: the run is finished

Resuming: a killed run is started again with the same command. Finished steps (their
summary.json) are skipped, a step's samples are read back rather than drawn again, and an
unfinished inner SFT run resumes from its newest checkpoint (``sft.save_every``). A run whose
saved config differs from the new one in a key that changes results is refused once any step
folder exists (the shared resume fingerprint, :func:`rlhf.train.guards.check_resume_config`),
so changed settings never silently continue a different run.

Run them with ``rlhf raft --recipe tiny`` and ``rlhf rest --recipe tiny``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rlhf.config import ConfigError, opt, save_config
from rlhf.data.config import DataConfig
from rlhf.eval.evaluate import SamplingConfig
from rlhf.models.config import ModelConfig
from rlhf.recipes.best_of_n import select_best
from rlhf.recipes.sft import SFTSection, inner_sft_config, run_inner_sft
from rlhf.train.guards import NonFiniteError, check_resume_config
from rlhf.train.run import (
    is_finished,
    prepare_output_dir,
    publish_model,
    remove_debris,
    write_json_atomic,
    write_jsonl_atomic,
)

__all__ = ["SampledRoundsConfig", "RAFTConfig", "ReSTConfig", "Step", "train", "train_rest", "raft_schedule",
           "rest_schedule",
           "select_best_per_prompt", "select_threshold", "select_top_fraction",
           "select", "RoundRun", "read_jsonl"]


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class SampledRoundsConfig:
    """What every recipe that samples from its current policy in rounds shares (RAFT, ReST,
    iterative DPO): the policy, the prompts, the reward source that judges the samples, tracked
    rewards, sampling and the bookkeeping. Subclasses add their schedule and inner training."""

    output_dir: str = opt("runs/rounds", "folder for config.yaml, the per-round folders, metrics.jsonl, "
                                         "final/ and summary.json")
    model: ModelConfig = opt(factory=ModelConfig, help="the starting policy (the first round samples it)")
    data: DataConfig = opt(factory=DataConfig, help="the prompts (data.train, its prompt column) and the "
                                                    "tokenisation of the inner training runs (max_length, "
                                                    "chat_template...)")
    reward: str | dict[str, Any] = opt("", "the reward source that judges the samples: a reward-model "
                                           "folder, package.module:function, or a spec file/mapping "
                                           "(docs/reward-models.md)")
    track: dict[str, str] = opt(factory=dict, help="extra reward sources scored on every sample and "
                                                   "logged as track/<name>, never used to select, e.g. "
                                                   "{gold: my_pkg.gold:reward}")
    samples_per_prompt: int = opt(4, "completions K sampled per prompt in each round", ge=1)
    prompts_per_round: int | None = opt(None, "prompts per round, a fresh seeded subset each round; "
                                              "null = every prompt every round", ge=1)
    on_empty: Literal["error", "skip"] = opt(
        "error", "a round that yields no training data: error = stop with a message; skip = keep the "
                 "policy unchanged for that round and count it in the summary")
    seed: int = opt(0, "seed of prompt subsets, sampling, tie-breaking and label noise")
    reward_batch_size: int = opt(64, "completions per call of a reward source", ge=1)
    score_final: bool = opt(True, "sample the final policy once more on the first round's prompts and "
                                  "report its reward (and tracked rewards) beside the starting policy's")
    progress: bool = opt(True, "show a progress bar while sampling")
    sampling: SamplingConfig = opt(factory=SamplingConfig, help="how completions are sampled")

    def validate(self) -> None:
        _validate_common(self)


@dataclass(frozen=True)
class RAFTConfig(SampledRoundsConfig):
    output_dir: str = opt("runs/raft", "folder for config.yaml, round-<r>/ folders, metrics.jsonl, "
                                       "final/ and summary.json")
    rounds: int = opt(3, "rounds R of sample -> filter -> fine-tune", ge=1)
    keep: Literal["best", "threshold", "top_fraction"] = opt(
        "best", "best: the best of K per prompt (ties at random, seeded); threshold: every sample with "
                "reward >= threshold; top_fraction: the top_fraction highest samples of the round")
    threshold: float | None = opt(None, "reward a sample needs to be kept (keep=threshold)")
    top_fraction: float = opt(0.25, "fraction of the round's samples kept (keep=top_fraction)", gt=0, le=1)
    init: Literal["current", "initial"] = opt(
        "current", "where each round's SFT starts: current = the policy that sampled the round "
                   "(RAFT, Llama 2), initial = model.name_or_path every round (sampling still uses "
                   "the current policy)")
    require_eos: bool = opt(True, "only completions that ended with EOS may be kept (a truncated one "
                                  "would teach the model to stop where the length limit cut it)")
    sft: SFTSection = opt(factory=SFTSection, help="each round's SFT run: sft.train (lr, epochs, batch_size, "
                                                     "save_every...) and sft.eval_fraction")

    def validate(self) -> None:
        super().validate()
        if self.keep == "threshold" and self.threshold is None:
            raise ConfigError("threshold", "is required with keep=threshold: the reward a sample needs "
                                           "to be kept (got null)")
        if self.keep != "threshold" and self.threshold is not None:
            raise ConfigError("threshold", f"applies to keep=threshold only (got {self.threshold} with "
                                           f"keep={self.keep})")
        if self.keep == "best" and self.samples_per_prompt < 2:
            raise ConfigError("samples_per_prompt", "must be >= 2 with keep=best: the best of one "
                                                    "sample selects nothing (got 1)")


Kind = Literal["quantile", "absolute"]


@dataclass(frozen=True)
class ReSTConfig(SampledRoundsConfig):
    output_dir: str = opt("runs/rest", "folder for config.yaml, grow-<g>/improve-<i>/ folders, "
                                       "metrics.jsonl, final/ and summary.json")
    grow_steps: int = opt(2, "Grow steps G: each samples one dataset from the current policy", ge=1)
    threshold_kind: Kind = opt("quantile", "quantile: threshold q keeps the top 1-q of the Grow dataset's "
                                           "samples by reward (scale-free, the default); absolute: keep "
                                           "reward >= threshold (the paper's fixed thresholds)")
    thresholds: list[float] = opt(factory=lambda: [0.5, 0.75],
                                  help="one Improve step per entry, non-decreasing: each keeps the Grow "
                                       "samples with reward >= its threshold and fine-tunes the policy "
                                       "of the previous Improve step")
    require_eos: bool = opt(True, "only completions that ended with EOS may be kept")
    sft: SFTSection = opt(factory=SFTSection, help="each Improve step's SFT run (sft.train: optimisation)")

    def validate(self) -> None:
        super().validate()
        if not self.thresholds:
            raise ConfigError("thresholds", "must hold at least one threshold (one Improve step each)")
        bad = [i for i, (a, b) in enumerate(zip(self.thresholds, self.thresholds[1:])) if b < a]
        if bad:
            raise ConfigError("thresholds", f"must be non-decreasing: ReST's thresholds rise from one "
                                            f"Improve step to the next (got {self.thresholds})")
        if self.threshold_kind == "quantile" and not all(0 <= q < 1 for q in self.thresholds):
            raise ConfigError("thresholds", f"quantiles must be in [0, 1) (got {self.thresholds})")


def _validate_common(cfg: Any) -> None:
    """Rules every rejection-style stage (RAFT, ReST, iterative DPO) shares."""
    if not cfg.data.train:
        raise ConfigError("data.train", "is required: the prompts (a .jsonl/.json/.parquet/.csv file "
                                        "with a prompt column, a dataset folder or a hub id)")
    if isinstance(cfg.reward, str) and not cfg.reward.strip() or cfg.reward == {}:
        raise ConfigError("reward", "is required: a reward-model folder, package.module:function, or "
                                    "a spec file/mapping (got nothing)")
    if cfg.samples_per_prompt > 1 and cfg.sampling.temperature == 0:
        raise ConfigError("sampling.temperature", "0 is greedy decoding: all K samples of a prompt "
                                                  "would be the same completion; use a temperature > 0")
    if cfg.data.packing:
        raise ConfigError("data.packing", "is not supported here: the inner runs train on whole "
                                          "prompt/completion rows (got true)")


# --------------------------------------------------------------------------- selection (pure)


def select_best_per_prompt(groups: Sequence[Sequence[float]], rng: random.Random,
                           eligible: Sequence[Sequence[bool]] | None = None) -> list[int | None]:
    """Per prompt, the index of its highest-reward sample (ties uniformly at random among the
    tied, one ``rng`` draw per prompt in order); None where no sample is eligible."""
    out: list[int | None] = []
    for i, rewards in enumerate(groups):
        ok = [j for j in range(len(rewards)) if eligible is None or eligible[i][j]]
        if not ok:
            out.append(None)
            continue
        out.append(ok[select_best([rewards[j] for j in ok], rng)])
    return out


def select_threshold(rewards: Sequence[float], threshold: float,
                     eligible: Sequence[bool] | None = None) -> list[int]:
    """Indices of every sample with reward >= ``threshold`` (in order)."""
    return [i for i, r in enumerate(rewards) if r >= threshold and (eligible is None or eligible[i])]


def select_top_fraction(rewards: Sequence[float], fraction: float, rng: random.Random,
                        eligible: Sequence[bool] | None = None) -> list[int]:
    """Indices (in order) of the ceil(fraction * N) highest-reward eligible samples, exactly that
    many: ties at the cut are broken uniformly at random (a seeded shuffle before a stable sort)."""
    ok = [i for i in range(len(rewards)) if eligible is None or eligible[i]]
    n = math.ceil(fraction * len(ok) - 1e-9)
    rng.shuffle(ok)
    ok.sort(key=lambda i: -rewards[i])  # stable: the shuffle orders the tied ones
    return sorted(ok[:n])


# --------------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class Step:
    """One sample/filter/fine-tune step of a schedule.

    ``folder``: where its outputs go (relative to output_dir); ``samples``: the folder whose
    samples.jsonl it filters (sampled by this step when it is ``folder``'s own or not yet there);
    ``rule``: ("best",) | ("threshold", t) | ("top_fraction", f) | ("quantile", q);
    ``labels``: extra fields of its metrics row (round number, or grow and improve numbers);
    ``sampling_round``: which prompt subset its samples use (RAFT's round, ReST's Grow step).
    """

    index: int
    folder: str
    samples: str
    sampling_round: int
    rule: tuple
    labels: dict[str, int]
    sample_seed: int
    select_seed: int


def raft_schedule(cfg: RAFTConfig) -> list[Step]:
    rule = {"best": ("best",), "threshold": ("threshold", cfg.threshold),
            "top_fraction": ("top_fraction", cfg.top_fraction)}[cfg.keep]
    return [Step(r, f"round-{r}", f"round-{r}", r, rule, {"round": r}, cfg.seed + 1000 * r, cfg.seed + r)
            for r in range(1, cfg.rounds + 1)]


def rest_schedule(cfg: ReSTConfig) -> list[Step]:
    kind = "quantile" if cfg.threshold_kind == "quantile" else "threshold"
    steps, k = [], 0
    for g in range(1, cfg.grow_steps + 1):
        for i, t in enumerate(cfg.thresholds, 1):
            k += 1
            steps.append(Step(k, f"grow-{g}/improve-{i}", f"grow-{g}", g, (kind, t), {"grow": g, "improve": i},
                              cfg.seed + 1000 * g, cfg.seed + k))
    return steps


def select(rule: tuple, rows: list[dict], k: int, rng: random.Random,
           require_eos: bool) -> tuple[list[int], float | None]:
    """Indices of the kept rows of one samples.jsonl (``k`` consecutive rows per prompt), and the
    threshold used (None for best-of-K)."""
    rewards = [r["reward"] for r in rows]
    # A blank completion teaches nothing (and SFT data may not hold one); a truncated one would
    # teach the model to stop where the length limit cut it.
    eligible = [bool(r["completion"].strip()) and (bool(r["ended_with_eos"]) or not require_eos) for r in rows]
    if rule[0] == "best":
        groups = [rewards[i:i + k] for i in range(0, len(rows), k)]
        elig = [eligible[i:i + k] for i in range(0, len(rows), k)]
        best = select_best_per_prompt(groups, rng, elig)
        return [p * k + j for p, j in enumerate(best) if j is not None], None
    if rule[0] == "threshold":
        return select_threshold(rewards, rule[1], eligible), rule[1]
    if rule[0] == "top_fraction":
        return select_top_fraction(rewards, rule[1], rng, eligible), None
    if rule[0] == "quantile":
        # The top (1 - q) of the samples, exactly that many (ties at the cut at random): with a
        # discrete reward, "reward >= the q-quantile" could keep everything (most samples tie at
        # the bottom). The threshold it amounts to is the lowest kept reward.
        kept = select_top_fraction(rewards, 1.0 - rule[1], rng, eligible)
        return kept, min((rewards[i] for i in kept), default=None)
    raise ValueError(f"unknown selection rule {rule!r}")  # pragma: no cover


# --------------------------------------------------------------------------- shared machinery


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


class RoundRun:
    """What RAFT, ReST and iterative DPO share: the output folder and its fingerprint, prompts,
    reward sources, sampling + scoring from a policy folder, the per-step metrics file, and the
    finish (final/ published, summary.json last).

    Inputs are checked (prompts read, reward sources loaded) BEFORE the output folder is created,
    so bad input leaves nothing behind.
    """

    def __init__(self, cfg: Any, stage: str, step_folders: Sequence[str]):
        from rlhf.data.load import load_records
        from rlhf.rewards import load_reward_source

        self.cfg, self.stage, self.t0 = cfg, stage, time.time()
        self.out = Path(cfg.output_dir)
        # Step A. Prompts and reward sources first: bad input fails before anything is written.
        records, report = load_records(cfg.data, "prompt")
        self.prompts = [r.prompt for r in records]
        # The rows' other columns, looked up by prompt text when scoring (rlhf.rewards.row_columns).
        self.columns = _columns_by_prompt(records)
        self.skipped = dict(report.counts)
        if not self.prompts:
            raise ConfigError("data.train", f"{cfg.data.train}: no usable prompts (read 0 rows"
                                            f"{', skipped ' + str(self.skipped) if self.skipped else ''})")
        try:
            self.source = load_reward_source(cfg.reward)
        except ValueError as e:
            raise ConfigError("reward", str(e)) from None
        self.tracked = {}
        for name, spec in cfg.track.items():
            try:
                self.tracked[name] = load_reward_source(spec)
            except ValueError as e:
                raise ConfigError(f"track.{name}", str(e)) from None
        # Step B. The folder: a finished run is never overwritten; an unfinished one resumes only
        # under the same settings.
        prepare_output_dir(self.out, "none")
        self._check_fingerprint(step_folders)
        save_config(cfg, self.out / "config.yaml")

    def _check_fingerprint(self, step_folders: Sequence[str]) -> None:
        """The shared resume fingerprint (rlhf.train.guards), once any step has started; what a
        killed process left half-written in the step folders is removed first."""
        started = [f for f in dict.fromkeys(step_folders) if (self.out / f).exists()]
        for f in started:
            remove_debris(self.out / f)
        if started:
            check_resume_config(self.out, self.out / "config.yaml", self.cfg, self.stage)

    # -- policies ------------------------------------------------------------------------

    def model_cfg(self, path: str) -> ModelConfig:
        """The run's model settings pointed at ``path`` (a round's policy folder). The tokenizer
        stays the starting model's unless a round saved its own (every final/ does)."""
        return replace(self.cfg.model, name_or_path=str(path),
                       tokenizer=None if path != self.cfg.model.name_or_path else self.cfg.model.tokenizer)

    def rel(self, path: str | Path) -> str:
        """A path stored in a step summary: relative to output_dir when inside it (a moved run
        folder still resumes), else as given."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(path)

    def resolve(self, stored: str) -> str:
        p = Path(stored)
        return str(p if p.is_absolute() or not (self.out / p).exists() else self.out / p)

    def complete_step(self, folder: Path, metrics: dict[str, Any], new_policy: str, t0: float, where: str,
                      done: list[dict], note: str) -> str:
        """Close a step: its summary.json (written last: the step is finished), the run's
        metrics.jsonl, a progress line. Returns the policy the next step starts from."""
        metrics["seconds"] = round(time.time() - t0, 2)
        s: dict[str, Any] = {"metrics": metrics, "policy": self.rel(new_policy)}
        write_json_atomic(folder / "summary.json", s)
        done.append(s)
        self.write_metrics(done)
        self.report(where, metrics, note)
        return self.resolve(s["policy"])

    def finished_step(self, folder: Path, where: str, done: list[dict]) -> str | None:
        """A step finished earlier: its summary joins ``done`` and its policy is returned (the
        next step's starting point); None when the step still has to run."""
        if not is_finished(folder):
            return None
        s = json.loads((folder / "summary.json").read_text())
        done.append(s)
        print(f"[{self.stage}] {where}: finished earlier, skipped", flush=True)
        return self.resolve(s["policy"])

    # -- sampling and scoring -------------------------------------------------------------

    def prompts_for(self, index: int) -> list[Any]:
        """The prompts of sampling round ``index`` (1-based): all, or a fresh seeded subset."""
        n = self.cfg.prompts_per_round
        if n is None or n >= len(self.prompts):
            return list(self.prompts)
        rng = random.Random(self.cfg.seed * 7919 + index)
        return [self.prompts[i] for i in sorted(rng.sample(range(len(self.prompts)), n))]

    def score(self, prompts: list[Any], completions: list[str],
              where: str) -> tuple[list[float], dict[str, list[float]]]:
        """Rewards of every completion by the selecting source and every tracked one; the
        prompts' row columns go to the sources as keyword arguments."""
        from rlhf.rewards import call_reward, row_columns

        rows = [self.columns.get(_prompt_key(p), {}) for p in prompts]

        def run(name: str, source: Callable) -> list[float]:
            out: list[float] = []
            bs = self.cfg.reward_batch_size
            for s in range(0, len(completions), bs):
                try:
                    vals = call_reward(source, prompts[s:s + bs], completions[s:s + bs],
                                       **row_columns(rows[s:s + bs]))
                except Exception as e:  # noqa: BLE001 - re-raised with the source and step named
                    from rlhf.rewards import RewardError
                    # the reward layer's own errors stay what they are (the CLI prints them as one line)
                    kind: type[Exception] = type(e) if isinstance(e, (NonFiniteError, RewardError)) else RuntimeError
                    said = str(e) if kind is not RuntimeError else f"{type(e).__name__}: {e}"
                    raise kind(f"[{self.stage}] {where}: reward source {name} ({getattr(source, 'name', '?')}) "
                               f"failed on completions {s}..{min(s + bs, len(completions)) - 1}: {said}") from e
                vals = [float(v) for v in (vals.tolist() if hasattr(vals, "tolist") else vals)]
                if len(vals) != len(completions[s:s + bs]):
                    raise RuntimeError(f"[{self.stage}] {where}: reward source {name} returned {len(vals)} "
                                       f"rewards for {len(completions[s:s + bs])} completions")
                bad = [s + i for i, v in enumerate(vals) if not math.isfinite(v)]
                if bad:
                    raise RuntimeError(f"[{self.stage}] {where}: reward source {name} returned a non-finite "
                                       f"reward for completion {bad[0]} ({completions[bad[0]]!r})")
                out += vals
            return out

        return run("reward", self.source), {k: run(f"track.{k}", s) for k, s in self.tracked.items()}

    def sample(self, policy: str, prompts: list[Any], k: int, seed: int, where: str) -> list[dict]:
        """K completions per prompt from the policy folder, scored: rows (prompt-major, K per
        prompt) of prompt, completion, reward, track, ended_with_eos, num_tokens, prompt_index,
        sample."""
        import torch

        from rlhf.eval.evaluate import sample_completions
        from rlhf.models.load import load_causal_lm, load_tokenizer

        mcfg = self.model_cfg(policy)
        tokenizer = load_tokenizer(mcfg)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_causal_lm(mcfg, for_training=False).to(device)
        bar = None
        if self.cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(prompts), desc=f"{self.stage} {where}: sampling", unit="prompt")
        rows = sample_completions(model, tokenizer, prompts, self.cfg.sampling, num_samples=k, seed=seed,
                                  data_cfg=self.cfg.data, progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        del model
        rewards, tracked = self.score([r["prompt"] for r in rows], [r["completion"] for r in rows], where)
        return [{"prompt": r["prompt"], "completion": r["completion"], "reward": rewards[n],
                 "track": {name: v[n] for name, v in tracked.items()},
                 "ended_with_eos": bool(r["ended_with_eos"]), "num_tokens": int(r["num_tokens"]),
                 "prompt_index": n // k, "sample": n % k} for n, r in enumerate(rows)]

    def samples(self, folder: str, policy: str, prompts_index: int, seed: int, where: str) -> list[dict]:
        """``folder``/samples.jsonl, drawn now (and written atomically) unless already there."""
        path = self.out / folder / "samples.jsonl"
        if path.is_file():
            return read_jsonl(path)
        rows = self.sample(policy, self.prompts_for(prompts_index), self.cfg.samples_per_prompt, seed, where)
        write_jsonl_atomic(path, rows)
        return rows

    # -- metrics and the end --------------------------------------------------------------

    @staticmethod
    def sample_stats(rows: list[dict], prefix: str = "") -> dict[str, float]:
        """Means over rows: reward (as ``score``, the name the report plots), tracked rewards."""
        if not rows:
            return {}
        n = len(rows)
        out = {f"{prefix}score": sum(r["reward"] for r in rows) / n}
        for name in rows[0]["track"]:
            out[f"{prefix}track/{name}"] = sum(r["track"][name] for r in rows) / n
        return out

    def report(self, where: str, metrics: dict[str, Any], middle: str) -> None:
        """One progress line per finished step."""
        track = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("track/"))
        loss = f", inner loss {metrics['loss']:.4g}" if "loss" in metrics else ""
        print(f"[{self.stage}] {where}: {metrics['samples']} samples, reward {metrics['score']:.4g}"
              f"{' (' + track + ')' if track else ''}; {middle}{loss} [{metrics['seconds']:.0f} s]", flush=True)

    def write_metrics(self, step_summaries: list[dict]) -> None:
        write_jsonl_atomic(self.out / "metrics.jsonl", [s["metrics"] for s in step_summaries])

    def finish(self, policy: str, step_summaries: list[dict], first_prompts_index: int, seed: int,
               extra: dict[str, Any]) -> dict[str, Any]:
        """Score the final policy (``score_final``), copy it to final/, write summary.json last."""
        first = step_summaries[0]["metrics"] if step_summaries else {}
        summary: dict[str, Any] = {"stage": self.stage, "steps": len(step_summaries),
                                   "num_prompts": len(self.prompts), "skipped_rows": self.skipped,
                                   "reward_source": getattr(self.source, "name", str(self.cfg.reward)),
                                   "initial_score": first.get("score"),
                                   **{f"initial_{k}": v for k, v in first.items() if k.startswith("track/")},
                                   **extra}
        if self.cfg.score_final:
            path = self.out / "final_samples.jsonl"
            if path.is_file():
                rows = read_jsonl(path)
            else:
                rows = self.sample(policy, self.prompts_for(first_prompts_index), self.cfg.samples_per_prompt,
                                   seed, "final")
                write_jsonl_atomic(path, rows)
            fin = self.sample_stats(rows)
            summary["final_score"] = fin["score"]
            summary.update({f"final_{k}": v for k, v in fin.items() if k.startswith("track/")})
            if summary["initial_score"] is not None:
                summary["score_gain"] = summary["final_score"] - summary["initial_score"]
        # final/ holds the policy itself (hard links or a copy): load_causal_lm reads it like any
        # model folder, and deleting round folders later cannot break it.
        publish_model(self.resolve(policy), self.out / "final")
        summary["policy_source"] = self.rel(policy)
        summary["wall_time_s"] = round(time.time() - self.t0, 2)
        summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
        write_json_atomic(self.out / "summary.json", summary)
        print(f"[{self.stage}] done: {len(step_summaries)} step(s); reward {_f(summary.get('initial_score'))} -> "
              f"{_f(summary.get('final_score'))}; final policy in {self.out / 'final'}", flush=True)
        return summary


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def _inner_stats(run_dir: Path, keys: Sequence[str] = ("loss",)) -> dict[str, float]:
    """Means over the logged steps of an inner run's metrics.jsonl (``inner_<key>``), and the
    last step's loss (``inner_loss_last``)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            continue  # a torn line of a killed process
    out: dict[str, float] = {}
    for k in keys:
        vals = [float(r[k]) for r in recs if isinstance(r.get(k), (int, float))]
        if vals:
            out[k if k == "loss" else f"inner_{k}"] = sum(vals) / len(vals)
            if k == "loss":
                out["loss_last"] = vals[-1]
    return out


# --------------------------------------------------------------------------- the loop


def _run_filtered_sft(cfg: RAFTConfig | ReSTConfig, stage: str, steps: list[Step]) -> dict[str, Any]:
    # Step 1. Inputs, output folder, fingerprint (RoundRun checks inputs before writing).
    run = RoundRun(cfg, stage, [s.folder for s in steps] + [s.samples for s in steps])
    initial = cfg.model.name_or_path
    policy = initial
    done: list[dict] = []
    k = cfg.samples_per_prompt
    init_mode = getattr(cfg, "init", "current")
    for st in steps:
        folder = run.out / st.folder
        where = f"step {st.index}/{len(steps)} ({st.folder})"
        # Step 2. A finished step is read back, not redone.
        finished = run.finished_step(folder, where, done)
        if finished is not None:
            policy = finished
            continue
        t0 = time.time()
        # Step 3. Samples from the CURRENT policy (drawn once per samples folder: every ReST
        # Improve step of a Grow reads the same file).
        rows = run.samples(st.samples, policy, st.sampling_round, st.sample_seed, where)
        # Step 4. Filter.
        kept_idx, threshold = select(st.rule, rows, k, random.Random(st.select_seed), cfg.require_eos)
        kept = [rows[i] for i in kept_idx]
        write_jsonl_atomic(folder / "kept.jsonl", [{"prompt": r["prompt"], "completion": r["completion"],
                                                    "reward": r["reward"], "prompt_index": r["prompt_index"],
                                                    "sample": r["sample"]} for r in kept])
        metrics: dict[str, Any] = {"step": st.index, **st.labels, "samples": len(rows), **run.sample_stats(rows),
                                   "kept": len(kept), "kept_fraction": len(kept) / len(rows),
                                   **run.sample_stats(kept, "kept_"),
                                   "eos_fraction": sum(r["ended_with_eos"] for r in rows) / len(rows),
                                   "mean_length": sum(r["num_tokens"] for r in rows) / len(rows)}
        if threshold is not None:
            metrics["threshold"] = threshold
        # Step 5. Fine-tune on the kept samples (or skip an empty step when allowed).
        if not kept:
            if cfg.on_empty == "error":
                raise RuntimeError(
                    f"[{stage}] {where}: no sample was kept ({len(rows)} sampled, rule {st.rule}"
                    f"{', only EOS-terminated samples eligible' if cfg.require_eos else ''}); lower the "
                    f"threshold, sample more, or set on_empty=skip. Nothing of this step was trained.")
            metrics["skipped"] = 1
            new_policy = policy
        else:
            start = initial if init_mode == "initial" else policy
            section = replace(cfg.sft, train=replace(cfg.sft.train, seed=cfg.sft.train.seed + st.index))
            run_inner_sft(inner_sft_config(folder / "sft", run.model_cfg(start), cfg.data, folder / "kept.jsonl",
                                           section))
            metrics.update(_inner_stats(folder / "sft"))
            metrics["skipped"] = 0
            new_policy = str(folder / "sft" / "final")
        policy = run.complete_step(folder, metrics, new_policy, t0, where, done,
                                   f"kept {len(kept)}" + (f" (reward {metrics['kept_score']:.4g})" if kept else ""))
    run.write_metrics(done)
    extra = {"skipped_steps": sum(int(s["metrics"].get("skipped", 0)) for s in done),
             "kept_total": sum(s["metrics"]["kept"] for s in done)}
    return run.finish(policy, done, 1, cfg.seed + 999_983, extra)


def train(cfg: RAFTConfig) -> dict[str, Any]:
    """RAFT / Llama 2 rejection-sampling fine-tuning (stage ``raft``)."""
    return _run_filtered_sft(cfg, "raft", raft_schedule(cfg))


def train_rest(cfg: ReSTConfig) -> dict[str, Any]:
    """ReST: Grow, then Improve with rising thresholds (stage ``rest``)."""
    return _run_filtered_sft(cfg, "rest", rest_schedule(cfg))


def _prompt_key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, default=str)


def _columns_by_prompt(records: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """prompt -> its row's other columns. Two rows with the same prompt but different columns
    cannot both be served by a prompt lookup: that stops the run rather than mixing answers."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        key = _prompt_key(r.prompt)
        if key in out and out[key] != r.columns:
            raise ConfigError("data.train", f"{r.where}: the prompt {str(r.prompt)[:60]!r} appears twice "
                                            "with different other columns; reward functions could not "
                                            "tell which row's columns belong to a sample (deduplicate the prompts)")
        out[key] = r.columns
    return out
