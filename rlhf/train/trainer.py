"""The training machinery every stage shares: accelerate, batching, the optimizer step, checkpoints.

A recipe (rlhf/recipes/*.py) owns its math and reads top to bottom; this module owns the parts
that must be right once and identical everywhere:

* **Batching.** ``train.batch_size`` examples make one optimizer step, over all processes and
  accumulation steps. Data order is a pure function of (seed, epoch), so a resumed run sees the
  same batches as an uninterrupted one without replaying a data loader.
* **Exact accumulation.** Before the first backward of a step, every micro-batch's share of the
  loss denominator (tokens or sequences, :func:`rlhf.masking.count_units`) is summed over the
  accumulation window and all processes. Each micro-batch loss is divided by that global count,
  so the accumulated gradient equals the full-batch gradient, whatever the split (house rule 2).
  DDP averages gradients over processes, so each process scales its loss by the world size.
* **Checkpoints.** Written to a temporary folder, flushed to disk, then renamed:
  ``checkpoint-<step>/`` either holds a complete, resumable state or does not exist. No
  pickles: weights in safetensors, optimizer and scheduler state through
  ``torch.save``/``torch.load(weights_only=True)``.
* **Nothing non-finite is kept.** A step whose loss or gradient norm is NaN/inf is skipped (no
  optimizer update; the schedule still advances); ``train.max_skipped_steps`` consecutive skips
  are tolerated, one more stops the run naming the step and the quantity. Weights are checked
  before every checkpoint and before final/, so the last checkpoint written is a good resume
  point and final/ never holds NaN or inf. A run whose last updates were skipped publishes no
  final/ (its weights are not a finished run's) and exits with one line.
* **Resume fingerprint.** Resuming compares the resolved config with the folder's config.yaml
  (:func:`rlhf.train.guards.check_resume_config`).
* **Sharding.** ``train.distributed: fsdp`` shards parameters, gradients and optimizer state with
  torch FSDP2 instead of accelerate's data parallelism; what differs (wrapping, gradient
  sync, norm, sharded checkpoints, whole weights for final/) lives in rlhf/train/sharding.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file

from rlhf.config import ConfigError, save_config, to_dict
from rlhf.console import bar_postfix, step_line, warnings_collector
from rlhf.train.config import TrainConfig
from rlhf.train.guards import NonFiniteError, check_finite_tensors, check_resume_config
from rlhf.train.run import (
    MetricsWriter,
    RunDirError,
    _fsync_parent,
    as_os_error,
    atomic_dir,
    fsync_tree,
    list_checkpoints,
    prepare_output_dir,
    release_run_lock,
    save_safetensors,
    write_json_atomic,
)

__all__ = ["Trainer", "StepPlan", "RunDirError"]


@dataclass(frozen=True)
class StepPlan:
    """How many examples and steps a run has; derived from the data size and TrainConfig."""
    num_examples: int
    steps_per_epoch: int
    total_steps: int
    micro_batch_size: int  # per process, per forward pass
    dropped_per_epoch: int  # examples left over when the epoch is cut into whole batches


def fit_batch_to_data(cfg: TrainConfig, num_examples: int, num_processes: int) -> tuple[TrainConfig, str]:
    """``cfg`` with ``batch_size`` lowered to the largest multiple of ``grad_accum x processes``
    that the data fills, when it has fewer examples than one batch (a small file with a real-model
    recipe), and the one line saying so; ``cfg`` unchanged and "" otherwise. A file smaller than
    ``grad_accum x processes`` is left to :func:`plan_steps` to refuse."""
    unit = cfg.grad_accum * num_processes
    if num_examples >= cfg.batch_size or num_examples < unit or cfg.batch_size % unit:
        return cfg, ""
    smaller = num_examples // unit * unit
    return (dataclasses.replace(cfg, batch_size=smaller),
            f"train.batch_size={cfg.batch_size} is more than the {num_examples} training examples: this run "
            f"uses batches of {smaller} (a multiple of train.grad_accum={cfg.grad_accum} x {num_processes} "
            f"process(es)); set train.batch_size to choose another")


def plan_steps(cfg: TrainConfig, num_examples: int, num_processes: int) -> StepPlan:
    # ConfigError (a ValueError): the CLI prints it as one line, naming the key to change.
    if cfg.batch_size % (cfg.grad_accum * num_processes):
        raise ConfigError("train.batch_size",
                          f"{cfg.batch_size} must be divisible by train.grad_accum ({cfg.grad_accum}) "
                          f"x number of processes ({num_processes})")
    if num_examples < cfg.batch_size:
        raise ConfigError("train.batch_size",
                          f"the training data has {num_examples} examples, fewer than one batch "
                          f"(train.batch_size={cfg.batch_size}, train.grad_accum={cfg.grad_accum}); lower "
                          f"train.batch_size and train.grad_accum, or add data")
    steps_per_epoch = num_examples // cfg.batch_size
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    return StepPlan(num_examples, steps_per_epoch, total,
                    cfg.batch_size // (cfg.grad_accum * num_processes),
                    num_examples - steps_per_epoch * cfg.batch_size)


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The example order of one epoch: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on biases and normalisation weights (1-D tensors), as is usual for transformers."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


_FUSED_DEVICES = ("cpu", "cuda")
_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def adamw_kwargs(groups: list[dict[str, Any]], sharded: bool = False) -> dict[str, Any]:
    """``{"fused": True}`` where torch's fused AdamW kernel takes every parameter (on the CPU or a
    CUDA device, a floating dtype, not a sharded DTensor), else ``{}`` (torch's default). The
    fused kernel updates each tensor in one pass where the default runs about six element-wise
    passes over it; the arithmetic is the same, so the weights agree to float rounding (tested).
    Measured: one AdamW step over SmolLM2-135M's 135M parameters, one CPU thread, 0.90 s -> 0.11 s
    (bench/optimizer_step.py, bench/results/optimizer_step.json). transformers' Trainer, hence
    TRL's, defaults to it too with torch >= 2.8."""
    params = [p for g in groups for p in g["params"]]
    if sharded or not params:
        return {}
    if all(p.device.type in _FUSED_DEVICES and p.dtype in _FUSED_DTYPES for p in params):
        return {"fused": True}
    return {}


class Trainer:
    """Owns the Accelerator, optimizer, scheduler, output folder and checkpoints of one run.

    Typical use inside a recipe::

        trainer = Trainer(cfg.train, cfg.output_dir, cfg, stage="sft")
        model = trainer.setup(model, num_examples=len(train_ex))
        for step, micro_batches in trainer.steps(train_ex, collate):
            metrics = trainer.optimize(micro_batches, units_fn, loss_fn)
            trainer.log(step, metrics)
            trainer.maybe_checkpoint(step)
        trainer.finish(model, tokenizer, summary)
    """

    def __init__(self, cfg: TrainConfig, output_dir: str | Path, run_config: Any, stage: str):
        from rlhf.train.launcher import die_with_launcher
        die_with_launcher()  # under torchrun: this worker dies with its launcher
        self.cfg = cfg
        self.stage = stage
        self.output_dir = Path(output_dir)
        self.accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision,
            log_with=list(cfg.report_to) or None,
            project_dir=str(self.output_dir),
            cpu=not torch.cuda.is_available(),
        )
        acc = self.accelerator
        # Only the main process decides about the folder (checks it, locks it, resumes or starts
        # it); the others are told the outcome, so a refusal is one line from one process and no
        # other process is left waiting at a barrier for a peer that exited (a gloo traceback).
        resume: Path | None = None
        decision: dict[str, Any] = {}
        if acc.is_main_process:
            try:
                resume = prepare_output_dir(self.output_dir, cfg.resume_from)
                if resume is not None:  # refuse a changed config before config.yaml is rewritten
                    check_resume_config(self.output_dir, Path(resume).parent / "config.yaml", run_config,
                                        stage, resumed_from=resume)
                save_config(run_config, self.output_dir / "config.yaml")
                decision = {"resume": None if resume is None else str(resume)}
            except (RunDirError, OSError) as e:
                if acc.num_processes == 1:
                    raise
                decision = {"error": str(e) if isinstance(e, RunDirError) else f"{e}"}
                _share(acc, decision)
                raise
        decision = _share(acc, decision)
        if "error" in decision:  # not the main process: say nothing, the main one said it
            refused = RunDirError(decision["error"])
            refused.echo = False
            raise refused
        if not acc.is_main_process and decision.get("resume"):
            resume = Path(decision["resume"])
        self.resume_path = resume
        if acc.is_main_process:
            if cfg.report_to:
                acc.init_trackers(stage, config=_flat(to_dict(run_config)))
        set_seed(cfg.seed)
        self.model: torch.nn.Module | None = None
        self._frozen: list[torch.nn.Module] = []  # frozen models sharded by place_frozen
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.plan: StepPlan | None = None
        self.start_step = 0
        self.metrics: MetricsWriter | None = None
        self._bar = None
        # Warnings of this run, repeated once by finish() (rlhf/console.py).
        self._warnings = warnings_collector()
        self._warn_start = len(self._warnings.messages)
        self._t0 = time.time()
        self._last_saved = -1
        self._step = 0  # the training step being run (for messages)
        self._step_loss: float | None = None  # the loss accumulate() summed, for optimizer_step()
        self._skipped_in_a_row = 0
        # What the run's model files hold: the trained module itself by default; a recipe that
        # trains a container (PPO's policy + critic) exports only the policy.
        self.export: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m

    # ------------------------------------------------------------------ set-up

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def sharded(self) -> bool:
        """True under ``train.distributed: fsdp``."""
        return self.cfg.distributed == "fsdp"

    def place_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """Put a frozen model (a separate reference, a reward model) where its passes run: under
        FSDP with ``train.fsdp.frozen: shard`` sharded like the trained model (its passes must
        then run the same number of times on every process, or inside :meth:`gathered`), else
        whole on this process's device."""
        if self.sharded and self.cfg.fsdp.frozen == "shard":
            from rlhf.train import sharding
            self._frozen.append(sharding.shard(module, self.cfg.fsdp, self.device))
            return module
        return module.to(self.device)

    def gathered(self, *modules: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Context for forward passes outside the training step (sampling, evaluation, scoring)
        on the trained model (default) or ``modules``: under FSDP each sharded unit is gathered
        once for the block, since such passes differ in number between processes; a no-op
        otherwise. Every process must enter it."""
        if not self.sharded:
            return contextlib.nullcontext()
        from rlhf.train import sharding
        stack = contextlib.ExitStack()
        for m in modules or (self.model,):
            assert m is not None, "call setup() first"  # sharded: setup() set the model
            stack.enter_context(sharding.gathered(m))
        return stack

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def print(self, *args: Any) -> None:
        if self.is_main:
            msg = " ".join(str(a) for a in args)
            if self._bar is not None:
                self._bar.write(msg)
            else:
                print(msg, flush=True)

    def setup(self, model: torch.nn.Module, num_examples: int, updates_per_step: int = 1) -> torch.nn.Module:
        """Plan the steps, build AdamW + schedule, wrap for distribution, restore a checkpoint.

        ``updates_per_step``: optimizer steps taken per training step (PPO takes several
        minibatch updates per rollout), so that warm-up and decay span the whole run.
        """
        from transformers import get_scheduler

        cfg, note = fit_batch_to_data(self.cfg, num_examples, self.accelerator.num_processes)
        if note and self.is_main:
            logging.getLogger("rlhf.train").warning(f"[{self.stage}] {note}")
        self.cfg = cfg
        self.plan = plan_steps(cfg, num_examples, self.accelerator.num_processes)
        if self.sharded:
            from rlhf.train import sharding
            model = sharding.shard(model, cfg.fsdp, self.device)  # before the optimizer: it holds the shards
        groups = _param_groups(model, cfg.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                      **adamw_kwargs(groups, self.sharded))
        total_updates = self.plan.total_steps * updates_per_step
        warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * total_updates))
        name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup,
                                  num_training_steps=total_updates)
        # The scheduler is stepped by hand once per optimizer step, so it is not prepared
        # (accelerate would step it once per process).
        if self.sharded:
            self.model, self.optimizer = model, optimizer
        else:
            self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        if self.resume_path is not None:
            self._load_checkpoint(self.resume_path)
        if self.is_main:
            self.metrics = MetricsWriter(self.output_dir / "metrics.jsonl",
                                         resume_step=self.start_step if self.resume_path else None)
            p = self.plan
            self.print(f"[{self.stage}] {p.num_examples} examples, {p.steps_per_epoch} steps/epoch, "
                       f"{p.total_steps} steps, batch {cfg.batch_size} = {self.accelerator.num_processes} "
                       f"process(es) x {cfg.grad_accum} accumulation x {p.micro_batch_size}"
                       + (f"; {p.dropped_per_epoch} example(s) per epoch do not fill a batch and are left "
                          f"out of that epoch (each epoch's order differs)" if p.dropped_per_epoch else "")
                       + (f"; resuming after step {self.start_step} from {self.resume_path}"
                          if self.resume_path else ""))
        return self.model

    # ------------------------------------------------------------------ batching

    def steps(self, examples: Sequence[Any], collate: Callable[[list[Any]], dict]
              ) -> Iterator[tuple[int, list[dict[str, torch.Tensor]]]]:
        """Yield ``(step, micro_batches)`` for the steps still to run (1-based step numbers).

        The global batch of a step is cut into contiguous per-process shards, each shard into
        ``grad_accum`` micro-batches, each collated and moved to the device.
        """
        assert self.plan is not None, "call setup() first"
        p, cfg = self.plan, self.cfg
        W, r = self.accelerator.num_processes, self.accelerator.process_index
        order: list[int] = []
        order_epoch = -1
        if self.is_main and cfg.progress:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=p.total_steps, initial=self.start_step, desc=self.stage,
                             dynamic_ncols=True, leave=True)
        for step in range(self.start_step + 1, p.total_steps + 1):
            epoch, pos = divmod(step - 1, p.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(cfg.seed, epoch, p.num_examples), epoch
            batch_idx = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
            shard = batch_idx[r * (cfg.batch_size // W):(r + 1) * (cfg.batch_size // W)]
            mbs = p.micro_batch_size
            micro = [self.to_device(collate([examples[i] for i in shard[k:k + mbs]]))
                     for k in range(0, len(shard), mbs)]
            self._step = step
            yield step, micro
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def eval_batches(self, examples: Sequence[dict], collate: Callable[[list[dict]], dict]
                     ) -> Iterator[dict[str, torch.Tensor]]:
        """This process's share of the evaluation data, in order, ``eval_batch_size`` at a time."""
        W, r = self.accelerator.num_processes, self.accelerator.process_index
        mine = list(range(r, len(examples), W))
        bs = self.cfg.eval_batch_size
        from rlhf.console import pass_progress  # rate and ETA: a long evaluation must not look like a hang

        bar = pass_progress(f"{self.stage}: eval", len(mine), enabled=self.is_main and self.cfg.progress
                            and len(mine) > bs)
        # processes may run different numbers of batches (self.model: gathered only when sharded, set by setup())
        with self.gathered(cast(torch.nn.Module, self.model), *self._frozen), bar:
            for k in range(0, len(mine), bs):
                yield self.to_device(collate([examples[i] for i in mine[k:k + bs]]))
                bar.update(len(mine[k:k + bs]))

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def reduce_sum(self, x: torch.Tensor | float) -> torch.Tensor:
        """Sum a scalar over processes (float64 so large token counts stay exact)."""
        t = torch.as_tensor(x, dtype=torch.float64, device=self.device).reshape(1)
        if self.accelerator.num_processes > 1:
            t = self.accelerator.reduce(t, reduction="sum")
        return t[0]

    # ------------------------------------------------------------------ the optimizer step

    def accumulate(
        self,
        micro_batches: list[dict[str, torch.Tensor]],
        units_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor],
                          tuple[torch.Tensor, dict[str, torch.Tensor]]],
    ) -> dict[str, float]:
        """Forward and backward over this process's micro-batches; gradients are left in ``.grad``.

        ``units_fn(mb)`` gives a micro-batch's share of the loss denominator; ``loss_fn(model,
        mb, denominator)`` returns the micro-batch loss already divided by the global
        ``denominator`` (so micro-batch losses *sum* to the step loss), plus metric sums that
        are added over micro-batches and processes (a key ending in ``_mean`` is then divided
        by the denominator).
        """
        acc, model = self.accelerator, self.model
        assert model is not None, "call setup() first"
        model.train()
        local_units = sum(units_fn(mb).double() for mb in micro_batches)
        denom = self.reduce_sum(local_units).clamp(min=1)
        W = acc.num_processes
        loss_total = torch.zeros((), dtype=torch.float64, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(micro_batches):
            # Skip the gradient all-reduce on all but the last micro-batch (DDP no_sync).
            sync = i == len(micro_batches) - 1
            ctx = contextlib.nullcontext() if sync or W == 1 else self._no_sync(model)
            with ctx:
                with acc.autocast():
                    loss, extra = loss_fn(model, mb, denom)
                # DDP averages gradients over processes; the loss already divides by the global
                # denominator, so scale by W to turn that average back into a sum.
                acc.backward(loss * W if W > 1 else loss)
            loss_total += loss.detach().double()
            for k, v in extra.items():
                sums[k] = sums.get(k, 0) + torch.as_tensor(v, device=self.device).detach().double()
        out: dict[str, float] = {"loss": float(self.reduce_sum(loss_total)), "units": float(denom)}
        self._step_loss = out["loss"]
        for k, v in sums.items():
            tot = float(self.reduce_sum(v))
            out[k] = tot / float(denom) if k.endswith("_mean") else tot
        return out

    def _no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        if self.sharded:
            from rlhf.train import sharding
            return sharding.no_grad_sync(model)
        return self.accelerator.no_sync(model)

    def optimizer_step(self) -> dict[str, float]:
        """Clip the gradient norm, step AdamW and the schedule, clear the gradients.

        The non-finite guard: when the loss of the last :meth:`accumulate` or the gradient norm
        is NaN/inf, AdamW is not stepped (its moments would be poisoned for good) and the
        metrics say ``skipped: 1``; the schedule still advances so that the step count and the
        learning rate stay aligned. More than ``train.max_skipped_steps`` such updates in a row
        raise :class:`NonFiniteError`. Loss and norm are the same on every process (both are
        reduced), so every process takes the same decision.
        """
        model = self.model
        assert model is not None and self.optimizer is not None, "call setup() first"
        grad_norm: float | torch.Tensor
        if self.sharded:
            from rlhf.train import sharding
            grad_norm = sharding.grad_norm_and_clip(model.parameters(), self.cfg.max_grad_norm)
        elif self.cfg.max_grad_norm is not None:
            grad_norm = self.accelerator.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        else:
            grad_norm = _grad_norm(model)
        grad_norm = float(grad_norm)
        lr = float(self.scheduler.get_last_lr()[0])  # the rate this step used
        loss, self._step_loss = self._step_loss, None
        bad = [(name, v) for name, v in (("loss", loss), ("gradient norm", grad_norm))
               if v is not None and not math.isfinite(v)]
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self._skipped_in_a_row += 1
            what = " and ".join(f"{name} {v}" for name, v in bad)
            limit = self.cfg.max_skipped_steps
            if self._skipped_in_a_row > limit:
                last = self._last_good_checkpoint()
                raise NonFiniteError(
                    f"[{self.stage}] step {self._step}: non-finite {what}; {self._skipped_in_a_row} optimizer "
                    f"updates in a row were skipped (train.max_skipped_steps={limit}), so the run stops. "
                    f"Nothing non-finite was saved; "
                    + (f"the last good checkpoint is {last}" if last else "no checkpoint was written yet")
                    + ". Lower train.lr, set train.max_grad_norm, or check the data and the reward.")
            self.print(f"[{self.stage}] step {self._step}: non-finite {what}: update skipped "
                       f"({self._skipped_in_a_row}/{limit} in a row allowed)")
            return {"lr": lr, "grad_norm": grad_norm, "skipped": 1}
        self._skipped_in_a_row = 0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"lr": lr, "grad_norm": grad_norm}

    def _last_good_checkpoint(self) -> Path | None:
        ckpts = list_checkpoints(self.output_dir)
        return ckpts[-1][1] if ckpts else None

    def optimize(self, micro_batches, units_fn, loss_fn) -> dict[str, float]:
        """One optimizer step: :meth:`accumulate` then :meth:`optimizer_step`."""
        metrics = self.accumulate(micro_batches, units_fn, loss_fn)
        metrics.update(self.optimizer_step())
        return metrics

    # ------------------------------------------------------------------ logging

    def log(self, step: int, metrics: dict[str, float], force: bool = False) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            post = bar_postfix(metrics)
            if post:
                self._bar.set_postfix(post, refresh=False)
        assert self.plan is not None, "call setup() first"
        if not (force or step % self.cfg.log_every == 0 or step == self.plan.total_steps):
            return
        rec = {"step": step, "epoch": round(step / self.plan.steps_per_epoch, 4),
               "elapsed_s": round(time.time() - self._t0, 2), **metrics}
        if self.is_main and self.metrics is not None:
            self.metrics.write(rec)
        # A plain line per logged step besides the bar: grep-able, and kept in a log file.
        self.print(step_line(self.stage, step, self.plan.total_steps if self.plan else None, metrics))
        if self.cfg.report_to:
            self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def should_eval(self, step: int) -> bool:
        e = self.cfg.eval_every
        assert self.plan is not None, "call setup() first"
        return step == self.plan.total_steps or (e is not None and step % e == 0)

    # ------------------------------------------------------------------ checkpoints

    def maybe_checkpoint(self, step: int, tokenizer: Any = None, extra_state: dict | None = None) -> None:
        s = self.cfg.save_every
        assert self.plan is not None, "call setup() first"
        if step == self.plan.total_steps or (s is not None and step % s == 0):
            self.save_checkpoint(step, tokenizer, extra_state)

    def save_checkpoint(self, step: int, tokenizer: Any = None, extra_state: dict | None = None) -> Path:
        """Write ``checkpoint-<step>/`` atomically (all processes must call this)."""
        acc = self.accelerator
        path = self.output_dir / f"checkpoint-{step}"
        tmp = path.with_name(f"{path.name}.tmp")
        acc.wait_for_everyone()
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        # Each process saves its own RNG state (sampling streams differ per process).
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_safetensors(rng, tmp / f"rng_{acc.process_index}.safetensors")
        if self.sharded:
            return self._save_sharded_checkpoint(step, path, tmp, tokenizer, extra_state)
        unwrapped = acc.unwrap_model(self.model)
        if self.is_main:
            # Trainable parameters only: frozen weights come back from the model's source.
            trainable = {n: p.detach().contiguous().cpu() for n, p in unwrapped.named_parameters()
                         if p.requires_grad}
            try:  # a NaN checkpoint would become the resume point: keep the last good one instead
                check_finite_tensors(trainable.items(), f"[{self.stage}] checkpoint-{step} not written")
            except NonFiniteError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            try:  # a full disk or a file-size limit: one line (the CLI), and no half-written folder left
                save_safetensors(_untie(trainable), tmp / "trainable.safetensors")
                assert self.optimizer is not None and self.plan is not None, "call setup() first"
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                if self.cfg.save_model_in_checkpoints:
                    from rlhf.models.load import save_model
                    save_model(self.export(unwrapped), tokenizer, tmp / "model")
                # trainer_state.json is written last: its presence marks the checkpoint complete.
                write_json_atomic(tmp / "trainer_state.json", {
                    "step": step, "stage": self.stage, "total_steps": self.plan.total_steps,
                    "num_processes": acc.num_processes, "skipped_in_a_row": self._skipped_in_a_row,
                    "extra": extra_state or {}})
            except Exception as e:
                shutil.rmtree(tmp, ignore_errors=True)
                err = as_os_error(e, tmp)
                if err is None:
                    raise
                raise err from None
        acc.wait_for_everyone()  # every process's RNG file is in the folder before it is renamed
        if self.is_main:
            fsync_tree(tmp)  # contents on disk before the rename that publishes them
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
            _fsync_parent(path)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        self._last_saved = step
        return path

    def _save_sharded_checkpoint(self, step: int, path: Path, tmp: Path, tokenizer: Any,
                                 extra_state: dict | None) -> Path:
        """FSDP: every process writes its shards (DCP) into ``tmp``; after a barrier the main
        process adds the schedule and trainer_state.json and renames ``tmp`` into place."""
        from rlhf.train import sharding

        acc = self.accelerator
        assert self.model is not None and self.optimizer is not None, "call setup() first"
        sharding.save_sharded(self.model, self.optimizer, tmp)
        if self.cfg.save_model_in_checkpoints:
            from rlhf.models.load import save_model
            with sharding.full_weights(self.model):
                if self.is_main:
                    save_model(self.export(self.model), tokenizer, tmp / "model")
        acc.wait_for_everyone()  # every process's shards are on disk
        if self.is_main:
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            assert self.plan is not None, "call setup() first"
            write_json_atomic(tmp / "trainer_state.json", {
                "step": step, "stage": self.stage, "total_steps": self.plan.total_steps,
                "num_processes": acc.num_processes, "distributed": "fsdp",
                "skipped_in_a_row": self._skipped_in_a_row, "extra": extra_state or {}})
            sharding.fsync_dir(tmp)
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
            sharding.fsync_dir(path.parent)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        self._last_saved = step
        return path

    def _prune_checkpoints(self) -> None:
        limit = self.cfg.save_total_limit
        if limit is None:
            return
        ckpts = list_checkpoints(self.output_dir)
        for _, p in ckpts[:-limit]:
            shutil.rmtree(p, ignore_errors=True)

    def _load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("stage") != self.stage:
            raise RunDirError(f"{path} is a checkpoint of stage {state.get('stage')!r}, not {self.stage!r}")
        written = state.get("distributed", "ddp")
        if written != self.cfg.distributed:
            raise RunDirError(f"{path} was written with train.distributed={written}; resume it with the same "
                              f"setting (got {self.cfg.distributed})")
        if self.sharded:
            from rlhf.train import sharding
            assert self.model is not None and self.optimizer is not None  # set by setup() before this
            sharding.load_sharded(self.model, self.optimizer, path)
        else:
            self._load_trainable(path)
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        # One RNG file per process of the run that wrote it; a process without one (a sharded
        # run resumed on more processes) keeps its seeded state.
        rng_file = path / f"rng_{self.accelerator.process_index}.safetensors"
        if rng_file.exists():
            rng = load_file(str(rng_file))
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        self.start_step = int(state["step"])
        self._skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
        self.resume_extra = state.get("extra", {})

    def _load_trainable(self, path: Path) -> None:
        """Data parallel: trainable weights from safetensors, optimizer state from optimizer.pt."""
        assert self.optimizer is not None, "call setup() first"
        unwrapped = self.accelerator.unwrap_model(self.model)
        params = dict(unwrapped.named_parameters())
        saved = load_file(str(path / "trainable.safetensors"))
        missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
        if missing:
            raise RunDirError(f"{path}/trainable.safetensors lacks {len(missing)} trainable parameters "
                              f"of this model (first: {missing[0]}); was it written by a different model config?")
        with torch.no_grad():
            for n, t in saved.items():
                if n not in params:
                    raise RunDirError(f"{path}/trainable.safetensors has parameter {n!r} that this model lacks")
                params[n].copy_(t.to(params[n].dtype))
        # Read onto the CPU: load_state_dict moves the state to each parameter's device. (Mapping
        # to self.device failed for process 1 of a CPU run: torch cannot restore to "cpu:1".)
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True,
                                                  map_location="cpu"))

    # ------------------------------------------------------------------ the end

    def finish(self, tokenizer: Any, summary: dict[str, Any],
               extra_files: dict[str, Any] | None = None) -> dict[str, Any]:
        """Save ``final/`` atomically, then ``summary.json`` (which marks the run finished).

        ``extra_files`` maps file names to JSON-able objects written inside ``final/`` before it
        is renamed into place (e.g. a reward model's statistics), so that a crash can never
        leave a finished run whose final model lacks them.
        """
        acc = self.accelerator
        acc.wait_for_everyone()
        assert self.plan is not None, "call setup() first"
        if self._skipped_in_a_row:
            # The weights are finite but not a finished run's: the last updates never happened
            # (lr=1e12 makes weights ~1e12 at step 1, then every loss non-finite). Not published.
            n, last = self._skipped_in_a_row, self._last_good_checkpoint()
            raise NonFiniteError(
                f"[{self.stage}] the last {n} of {self.plan.total_steps} optimizer updates were skipped "
                f"for a non-finite loss or gradient norm (within train.max_skipped_steps="
                f"{self.cfg.max_skipped_steps}), so the run did not train to its end: final/ not "
                "written" + (f" (the last checkpoint is {last})" if last else "")
                + ". Lower train.lr, set train.max_grad_norm, or check the data and the reward.")
        summary = {"stage": self.stage, "steps": self.plan.total_steps,
                   "wall_time_s": round(time.time() - self._t0, 2), **peak_memory(acc.device), **summary}
        whole: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.sharded:  # final/ is an ordinary model folder: gather the exact full weights
            from rlhf.train import sharding
            assert self.model is not None, "call setup() first"
            whole = sharding.full_weights(self.model)
        with whole:
            if self.is_main:
                from rlhf.models.load import save_model
                export = self.export(acc.unwrap_model(self.model))
                check_finite_tensors(export.state_dict().items(), f"[{self.stage}] final/ not written")
                with atomic_dir(self.output_dir / "final") as tmp:
                    save_model(export, tokenizer, tmp)
                    for name, obj in (extra_files or {}).items():
                        write_json_atomic(tmp / name, obj)
        if self.is_main:
            write_json_atomic(self.output_dir / "summary.json", summary)
            if self.metrics is not None:
                self.metrics.close()
            mem = (f"; peak memory {summary['peak_rss_gb']:.2f} GB (RSS)" if "peak_rss_gb" in summary else "")
            self.print(f"[{self.stage}] done: outputs in {self.output_dir} (final model in "
                       f"{self.output_dir / 'final'}){mem}")
            for msg in self._warnings.since(self._warn_start):
                self.print(f"[{self.stage}] warning (repeated from above): {msg}")
            release_run_lock(self.output_dir)
        if self.cfg.report_to:
            acc.end_training()
        acc.wait_for_everyone()
        return summary


def peak_memory(device: torch.device | str | None = None) -> dict[str, float]:
    """This process's peak memory so far, in GB (1e9 bytes), for a run's summary.json.

    ``peak_rss_gb`` is the peak resident set size of the whole process (model loading included:
    what the machine must hold, not only the training step): the kernel's ``VmHWM`` on Linux, else
    ``getrusage``'s ``ru_maxrss``. (On Linux ``ru_maxrss`` keeps the parent's size at fork across
    ``exec``, so a run started from a large process would report that process's memory.) On a
    CUDA device ``peak_gpu_memory_gb`` adds torch's peak allocation there. Empty where neither is known.
    """
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_gb"] = round(int(line.split()[1]) * 1024 / 1e9, 3)
    except (OSError, ValueError, IndexError):  # no /proc (macOS, Windows)
        pass
    if "peak_rss_gb" not in out:
        try:
            import resource
            import sys
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
            out["peak_rss_gb"] = round(rss * (1 if sys.platform == "darwin" else 1024) / 1e9, 3)
        except (ImportError, OSError, ValueError):  # no resource module (Windows)
            pass
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(dev) / 1e9, 3)
    return out


def _share(acc: Accelerator, obj: dict[str, Any]) -> dict[str, Any]:
    """The main process's ``obj`` (JSON) on every process: a broadcast of its UTF-8 bytes as
    tensors (no pickle, unlike ``broadcast_object_list``). One process: ``obj`` itself."""
    if acc.num_processes == 1:
        return obj
    import torch.distributed as dist

    device = acc.device
    data = json.dumps(obj).encode() if acc.is_main_process else b""
    n = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(n, src=0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if acc.is_main_process
           else torch.empty(int(n.item()), dtype=torch.uint8, device=device))
    dist.broadcast(buf, src=0)
    return cast(dict[str, Any], json.loads(bytes(buf.cpu().tolist()).decode()))


def _grad_norm(model: torch.nn.Module) -> torch.Tensor:
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def _untie(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): store copies."""
    seen: dict[int, str] = {}
    out = {}
    for n, t in tensors.items():
        ptr = t.data_ptr()
        out[n] = t.clone() if ptr in seen else t
        seen.setdefault(ptr, n)
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
        else:
            out[key] = str(v)
    return out
