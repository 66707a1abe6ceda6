"""Reward sources: anything that maps (prompt, completion) pairs to one number each.

One interface for PPO, best-of-N, ``rlhf score`` and the evaluators::

    source = load_reward_source("runs/rm/final")          # a trained reward model folder
    source = load_reward_source("my_pkg.checks:reward")   # a Python callable (verifiable reward)
    source = load_reward_source({"type": "safety_gated", "helpfulness": "runs/rm-help/final",
                                 "safety": "runs/rm-safe/final", "threshold": 0.15})
    rewards = source(prompts, completions)                # (N,) float32 tensor on the CPU

Specs (a string, a dict, or a .yaml/.json file holding a dict):

* a folder: :class:`ModelReward` (``{"type": "model", "path": ..., "normalize": false,
  "batch_size": 16, "device": null}``);
* ``package.module:function``: :class:`CallableReward`, ``function(prompts, completions) ->
  list[float]`` (``{"type": "callable", "function": ...}``);
* ``{"type": "sum", "sources": [spec, ...], "weights": [w, ...]}``: :class:`WeightedSum`;
* ``{"type": "safety_gated", "helpfulness": spec, "safety": spec, "threshold": 0.15,
  "unsafe_prompts": "module:function" | null, "scale": "sigmoid" | "probability",
  "whiten_logit": false}``: :class:`SafetyGated`, Llama 2's combination (Touvron et al. 2023,
  §3.2.2, eq. 4).
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from rlhf.masking import masked_whiten

__all__ = ["RewardSource", "ModelReward", "CallableReward", "WeightedSum", "SafetyGated",
           "load_reward_source", "import_callable"]


class RewardSource:
    """Base class: ``source(prompts, completions) -> (N,) float32 tensor`` (CPU)."""

    name: str = "reward"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError

    def modules(self) -> list[torch.nn.Module]:
        """The models this source runs (none for a Python function): what offloading moves."""
        return []

    @staticmethod
    def _check_inputs(prompts: Sequence[Any], completions: Sequence[Any]) -> None:
        if len(prompts) != len(completions):
            raise ValueError(f"reward source: got {len(prompts)} prompts but {len(completions)} completions")


def import_callable(ref: str, what: str = "reward function") -> Callable:
    """``package.module:attr`` -> the object, with errors that say what was expected."""
    if ref.count(":") != 1:
        raise ValueError(f"{what} {ref!r}: expected 'package.module:function'")
    mod_name, attr = ref.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"{what} {ref!r}: cannot import module {mod_name!r} ({e})") from None
    fn = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"{what} {ref!r}: module {mod_name!r} has no callable {attr!r}")
    return fn


# --------------------------------------------------------------------------- sources


class ModelReward(RewardSource):
    """A trained reward model folder (``rlhf rm``'s ``final/``, or any scalar-head checkpoint).

    Text is encoded as in training, with the encoding settings stored in the folder's
    ``reward_stats.json`` (defaults of :class:`~rlhf.data.config.DataConfig` otherwise;
    ``encoding`` overrides single fields, names as in ``rlhf.recipes.rm.ENCODING_FIELDS``), and
    scored at the last real token (:func:`~rlhf.models.load.score_last_token`). ``normalize``
    returns (r - mean) / std with the stored reference statistics.
    """

    def __init__(self, path: str | Path, *, normalize: bool = False, batch_size: int = 16,
                 device: str | None = None, dtype: Literal["fp32", "bf16"] = "fp32",
                 padding_side: str | None = None, encoding: dict[str, Any] | None = None):
        from rlhf.data.config import DataConfig
        from rlhf.models.config import ModelConfig
        from rlhf.models.load import load_scalar_model, load_tokenizer
        from rlhf.recipes.rm import REWARD_STATS_FILE

        self.path = Path(path)
        self.name = f"model:{self.path}"
        info_file = self.path / REWARD_STATS_FILE
        self.info: dict[str, Any] = json.loads(info_file.read_text()) if info_file.is_file() else {}
        enc = dict(self.info.get("encoding", {}))
        enc.update(encoding or {})  # explicit settings win (e.g. for a folder trained elsewhere)
        if padding_side is not None:
            enc["padding_side"] = padding_side
        self.data_cfg = DataConfig(**enc)
        self.normalize = normalize
        if normalize and (self.info.get("mean") is None or not self.info.get("std")):
            raise ValueError(f"{self.path}: normalize=True needs reward statistics (mean and std > 0) "
                             f"in {REWARD_STATS_FILE}; train with stats.source set, or normalize=False")
        mcfg = ModelConfig(name_or_path=str(self.path), dtype=dtype)
        self.tokenizer = load_tokenizer(mcfg)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_scalar_model(mcfg, tokenizer=self.tokenizer, for_training=False, init_head=False)
        self.model.to(self.device)
        self.batch_size = batch_size

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    @property
    def mean(self) -> float | None:
        return self.info.get("mean")

    @property
    def std(self) -> float | None:
        return self.info.get("std")

    def encode(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[dict]:
        from rlhf.data.records import SFTRecord
        from rlhf.data.tokenize import encode_sft
        return [encode_sft(SFTRecord(p, c, ("<reward input>", i + 1)), self.tokenizer, self.data_cfg)
                for i, (p, c) in enumerate(zip(prompts, completions))]

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> torch.Tensor:
        from rlhf.data.collate import PadCollator
        from rlhf.models.load import score_last_token

        self._check_inputs(prompts, completions)
        seqs = self.encode(prompts, completions)
        collate = PadCollator(self.tokenizer.pad_token_id, self.data_cfg.padding_side)
        out = []
        for k in range(0, len(seqs), self.batch_size):
            b = {n: t.to(self.device) for n, t in collate(seqs[k:k + self.batch_size]).items()}
            out.append(score_last_token(self.model, b["input_ids"], b["attention_mask"],
                                        b["position_ids"]).float().cpu())
        scores = torch.cat(out) if out else torch.zeros(0)  # (N,)
        if self.normalize:
            assert self.mean is not None and self.std is not None  # checked in __init__
            scores = (scores - self.mean) / self.std
        return scores


class CallableReward(RewardSource):
    """A Python function ``fn(prompts, completions) -> list[float]`` (e.g. a verifiable reward).

    Its output is checked: one finite number per completion, else a ValueError naming the
    function and the index.
    """

    def __init__(self, fn: Callable | str):
        self.name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
        self.fn = import_callable(fn) if isinstance(fn, str) else fn

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> torch.Tensor:
        self._check_inputs(prompts, completions)
        values = list(self.fn(list(prompts), list(completions)))
        if len(values) != len(prompts):
            raise ValueError(f"reward function {self.name}: returned {len(values)} values for "
                             f"{len(prompts)} completions (expected one number each)")
        for i, v in enumerate(values):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) or (torch.is_tensor(v) and v.numel() == 1)
            if not ok or not math.isfinite(float(v)):
                raise ValueError(f"reward function {self.name}: value {i} is {v!r}; expected a finite number")
        return torch.tensor([float(v) for v in values], dtype=torch.float32)


class WeightedSum(RewardSource):
    """Σ_i w_i · r_i(prompt, completion) over several sources."""

    def __init__(self, sources: Sequence[RewardSource], weights: Sequence[float] | None = None):
        if not sources:
            raise ValueError("a sum of reward sources needs at least one source")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources):
            raise ValueError(f"a sum of reward sources: {len(sources)} sources but {len(weights)} weights")
        self.sources, self.weights = list(sources), weights
        self.name = "sum(" + ", ".join(f"{w}*{s.name}" for s, w in zip(self.sources, weights)) + ")"

    def modules(self) -> list[torch.nn.Module]:
        return [m for s in self.sources for m in s.modules()]

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> torch.Tensor:
        self._check_inputs(prompts, completions)
        total = torch.zeros(len(prompts), dtype=torch.float32)
        for s, w in zip(self.sources, self.weights):
            total += w * s(prompts, completions)
        return total


class SafetyGated(RewardSource):
    """Llama 2's helpfulness/safety combination (Touvron et al. 2023, eq. 4)::

        R_c = R_s   if the prompt is flagged unsafe or R_s < threshold
              R_h   otherwise
        R̃_c = WHITEN(LOGIT(R_c))                    (optional, ``whiten_logit``)

    R_s and R_h are probabilities. ``scale="sigmoid"`` (default) reads the sources' raw scores
    as logits and applies σ (a Bradley–Terry reward model's score is a logit); ``"probability"``
    takes them as already in [0, 1]. Without ``whiten_logit`` the gated probability R_c is
    returned; with it, logit(R_c) whitened over the batch (mean 0, std 1), which Llama 2 uses
    for stability. ``unsafe_prompts(prompts) -> list[bool]`` flags prompts known to be
    adversarial; without it only the threshold gates.
    """

    def __init__(self, helpfulness: RewardSource, safety: RewardSource, *, threshold: float = 0.15,
                 unsafe_prompts: Callable | str | None = None,
                 scale: Literal["sigmoid", "probability"] = "sigmoid", whiten_logit: bool = False,
                 eps: float = 1e-6):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"safety threshold is a probability in [0, 1] (got {threshold})")
        if scale not in ("sigmoid", "probability"):
            raise ValueError(f"scale must be 'sigmoid' or 'probability' (got {scale!r})")
        self.helpfulness, self.safety = helpfulness, safety
        self.threshold, self.scale, self.whiten_logit, self.eps = threshold, scale, whiten_logit, eps
        self.unsafe_prompts = import_callable(unsafe_prompts, "unsafe-prompt flagger") \
            if isinstance(unsafe_prompts, str) else unsafe_prompts
        self.name = f"safety_gated({helpfulness.name}, {safety.name}, threshold={threshold})"

    def modules(self) -> list[torch.nn.Module]:
        return self.helpfulness.modules() + self.safety.modules()

    def _prob(self, scores: torch.Tensor, which: str) -> torch.Tensor:
        if self.scale == "sigmoid":
            return torch.sigmoid(scores)
        if bool(((scores < 0) | (scores > 1)).any()):
            raise ValueError(f"{which} scores must be probabilities in [0, 1] with scale='probability' "
                             f"(got min {float(scores.min()):.4g}, max {float(scores.max()):.4g})")
        return scores

    def gate(self, prompts: Sequence[Any], completions: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(R_c (N,), use_safety (N,) bool): the gated probability and which score was taken."""
        self._check_inputs(prompts, completions)
        p_h = self._prob(self.helpfulness(prompts, completions), "helpfulness")  # (N,)
        p_s = self._prob(self.safety(prompts, completions), "safety")  # (N,)
        use_safety = p_s < self.threshold
        if self.unsafe_prompts is not None:
            flags = list(self.unsafe_prompts(list(prompts)))
            if len(flags) != len(prompts):
                raise ValueError(f"unsafe-prompt flagger returned {len(flags)} flags for {len(prompts)} prompts")
            use_safety |= torch.tensor([bool(f) for f in flags])
        return torch.where(use_safety, p_s, p_h), use_safety

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> torch.Tensor:
        r_c, _ = self.gate(prompts, completions)
        if not self.whiten_logit:
            return r_c
        p = r_c.double().clamp(self.eps, 1 - self.eps)
        logit = torch.log(p) - torch.log1p(-p)  # (N,)
        return masked_whiten(logit, torch.ones_like(logit, dtype=torch.bool)).float()


# --------------------------------------------------------------------------- factory


def _read_spec_file(path: Path) -> Any:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml
        return yaml.safe_load(text)
    return json.loads(text)


def load_reward_source(spec: str | dict | RewardSource, *, device: str | None = None) -> RewardSource:
    """Build a :class:`RewardSource` from a spec (see the module doc)."""
    if isinstance(spec, RewardSource):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        p = Path(os.path.expanduser(s))
        if p.is_dir():
            return ModelReward(p, device=device)
        if p.is_file() and p.suffix in (".yaml", ".yml", ".json"):
            return load_reward_source(_read_spec_file(p), device=device)
        if ":" in s and "/" not in s:
            return CallableReward(s)
        raise ValueError(f"reward source {s!r}: expected a reward-model folder, a .yaml/.json spec "
                         "file or 'package.module:function' (no such folder or file)")
    if not isinstance(spec, dict):
        raise ValueError(f"reward source: expected a string or a mapping (got {type(spec).__name__})")
    spec = dict(spec)
    kind = spec.pop("type", None)
    try:
        if kind == "model":
            return ModelReward(spec.pop("path"), device=spec.pop("device", device), **spec)
        if kind == "callable":
            return CallableReward(spec.pop("function"))
        if kind == "sum":
            return WeightedSum([load_reward_source(s, device=device) for s in spec.pop("sources")],
                               spec.pop("weights", None))
        if kind == "safety_gated":
            return SafetyGated(load_reward_source(spec.pop("helpfulness"), device=device),
                               load_reward_source(spec.pop("safety"), device=device), **spec)
    except KeyError as e:
        raise ValueError(f"reward source of type {kind!r}: missing key {e.args[0]!r}") from None
    except TypeError as e:
        raise ValueError(f"reward source of type {kind!r}: {e}") from None
    raise ValueError(f"reward source: unknown type {kind!r}; expected model, callable, sum or safety_gated")
