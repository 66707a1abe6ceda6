"""Reward sources: anything that maps (prompt, completion) pairs to one number each.

One interface for PPO, best-of-N, ``rlhf score`` and the evaluators::

    source = load_reward_source("runs/rm/final")          # a trained reward model folder
    source = load_reward_source("my_pkg.checks:reward")   # a Python callable (verifiable reward)
    source = load_reward_source({"type": "safety_gated", "helpfulness": "runs/rm-help/final",
                                 "safety": "runs/rm-safe/final", "threshold": 0.15})
    rewards = source(prompts, completions)                # (N,) float32 tensor on the CPU

Specs (a string, a dict, or a .yaml/.json file holding a dict):

* a folder or a hub id (``org/name``): :class:`ModelReward` (``{"type": "model", "path": ...,
  "normalize": false, "batch_size": 16, "device": null}``);
* ``package.module:function`` or ``path/to/file.py:function``: :class:`CallableReward`,
  ``function(prompts, completions, **columns) -> list[float]`` (``{"type": "callable",
  "function": ..., "kwargs": {...}}``: kwargs are bound with functools.partial, e.g. a file of
  reference answers). A spec that names Python code RUNS that code, with your permissions:
  use reward files you trust, as you would any script;
* ``{"type": "sum", "sources": [spec, ...], "weights": [w, ...]}``: :class:`WeightedSum`;
* ``{"type": "safety_gated", "helpfulness": spec, "safety": spec, "threshold": 0.15,
  "unsafe_prompts": "module:function" | null, "scale": "sigmoid" | "probability",
  "whiten_logit": false}``: :class:`SafetyGated`, Llama 2's combination (Touvron et al. 2023,
  §3.2.2, eq. 4).

Row columns: ``source(prompts, completions, **columns)`` also takes the other columns of each
prompt's data row, batched like the prompts (``answer=["4", "7", ...]``: TRL's convention).
A Python function receives those its signature names, or all of them if it has ``**kwargs``;
a function of ``(prompts, completions)`` alone still works. See :func:`row_columns`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from rlhf.masking import masked_whiten

__all__ = ["RewardSource", "ModelReward", "CallableReward", "WeightedSum", "SafetyGated", "RewardError",
           "load_reward_source", "import_callable", "row_columns", "accepted_columns", "call_reward",
           "DEFAULT_TIMEOUT_S"]

# A Python reward function that has not returned after this many seconds (per call: one batch of
# completions) stops the run with a message; ``{"type": "callable", ..., "timeout": s}`` sets
# another limit, 0 none.
DEFAULT_TIMEOUT_S = 600.0


class RewardError(ValueError):
    """A reward source that cannot be loaded or whose output is unusable. Its message is one line
    for the user, naming the source (and the file and line of a function that raised); the CLI
    prints it without a traceback, in every stage and in ``rlhf score`` alike."""

# What the rm stage writes beside a reward model (rlhf/recipes/rm.py): the score statistics that
# ``normalize=True`` reads.
REWARD_STATS_FILE = "reward_stats.json"


class RewardSource:
    """Base class: ``source(prompts, completions, **columns) -> (N,) float32 tensor`` (CPU);
    ``columns`` are the prompts' other data-row columns, one list each (see :func:`row_columns`)."""

    name: str = "reward"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: list[Any]) -> torch.Tensor:
        raise NotImplementedError

    def modules(self) -> list[torch.nn.Module]:
        """The models this source runs (none for a Python function): what offloading moves."""
        return []

    @staticmethod
    def _check_inputs(prompts: Sequence[Any], completions: Sequence[Any]) -> None:
        if len(prompts) != len(completions):
            raise RewardError(f"reward source: got {len(prompts)} prompts but {len(completions)} completions")


def _one_line(e: BaseException) -> str:
    """``Type: message (file:line)``: an exception from the user's code as one line, with the
    innermost frame that raised it (the user's line, not rlhf's)."""
    import traceback

    msg = " ".join(str(e).split()) or "(no message)"
    here = os.path.dirname(os.path.abspath(__file__))  # rlhf's own frames are not the user's line
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(here + os.sep)]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames and not isinstance(e, SyntaxError) else ""
    return f"{type(e).__name__}: {msg}{where}"


def _is_file_ref(mod_name: str) -> bool:
    return mod_name.endswith(".py") or "/" in mod_name or os.sep in mod_name


def _import_file(path_str: str, ref: str, what: str) -> Any:
    """A module from a .py file (no PYTHONPATH needed); its own folder is importable from it."""
    path = Path(os.path.expanduser(path_str))
    if not path.is_file():
        raise RewardError(f"{what} {ref!r}: no such file {path_str!r} (relative paths start from the "
                         f"current directory, {os.getcwd()})")
    name = f"rlhf_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RewardError(f"{what} {ref!r}: cannot load {path_str!r} as Python")
    import sys
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses and pickling look the module up by name
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)  # the file may import its neighbours
    try:
        spec.loader.exec_module(mod)  # this RUNS the file: see the module doc
    except Exception as e:
        del sys.modules[name]
        raise RewardError(f"{what} {ref!r}: running {path_str!r} raised {_one_line(e)}") from e
    finally:
        if added:
            sys.path.remove(folder)
    return mod


def import_callable(ref: str, what: str = "reward function") -> Callable:
    """``package.module:attr`` or ``path/to/file.py:attr`` -> the object, with errors that say
    what was expected. Importing a module or loading a file runs its code."""
    if ref.count(":") != 1:
        raise RewardError(f"{what} {ref!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    mod_name, attr = ref.split(":")
    if _is_file_ref(mod_name):
        mod = _import_file(mod_name, ref, what)
        fn = getattr(mod, attr, None)
        if fn is None or not callable(fn):
            raise RewardError(f"{what} {ref!r}: file {mod_name!r} has no callable {attr!r}")
        return fn
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        hint = ""
        if Path(mod_name.replace(".", "/") + ".py").is_file():
            hint = f"; to load the file in this folder, write '{mod_name.replace('.', '/')}.py:{attr}'"
        raise RewardError(f"{what} {ref!r}: cannot import module {mod_name!r} ({e}){hint}") from None
    fn = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        raise RewardError(f"{what} {ref!r}: module {mod_name!r} has no callable {attr!r}")
    return fn


# --------------------------------------------------------------------------- row columns


def row_columns(rows: Sequence[dict[str, Any]], repeat: int = 1) -> dict[str, list[Any]]:
    """Per-prompt column dicts -> one list per column, each entry repeated ``repeat`` times (the
    K samples of a prompt are consecutive: rlhf.advantages' group layout). A column that a row
    lacks is None in its place. ``prompts``/``completions`` cannot be column names (they are the
    positional arguments) and are left out."""
    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in names and k not in ("prompts", "completions"))
    return {k: [r.get(k) for r in rows for _ in range(repeat)] for k in names}


def accepted_columns(fn: Callable) -> set[str] | None:
    """The keyword names ``fn`` takes besides the first two (None: any, it has ``**kwargs``).
    Inspected once per function so that ``fn(prompts, completions)`` keeps working."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: give it nothing extra
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in positional[:2]}


def call_reward(source: Callable, prompts: Sequence[Any], completions: Sequence[Any],
                **columns: list[Any]) -> Any:
    """``source(prompts, completions, **columns)`` with only the columns its ``__call__``
    accepts: a reward source written before row columns existed keeps working."""
    if columns:
        accepts = accepted_columns(source)
        if accepts is not None:
            columns = {k: v for k, v in columns.items() if k in accepts}
    return source(prompts, completions, **columns)


def _check_finite_rewards(name: str, scores: torch.Tensor, prompts: Sequence[Any],
                          completions: Sequence[Any]) -> None:
    """A NaN/inf reward would reach the policy update (or a selection) unnoticed: stop, naming
    the source and the row (its index in this call's prompts/completions)."""
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        from rlhf.train.guards import NonFiniteError
        i = bad[0]
        raise NonFiniteError(f"reward source {name}: reward of row {i} (of {len(scores)}) is {float(scores[i])}"
                             f"{f' ({len(bad)} non-finite in all)' if len(bad) > 1 else ''}; prompt "
                             f"{str(prompts[i])[:80]!r}, completion {str(completions[i])[:80]!r}. A reward "
                             f"model that outputs NaN/inf is broken (diverged training, bf16 overflow); "
                             f"nothing was trained on it")


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

        self.path = Path(path)  # a folder, or a hub id (then there is no reward_stats.json to read)
        self.name = f"model:{path}"
        info_file = self.path / REWARD_STATS_FILE
        self.info: dict[str, Any] = json.loads(info_file.read_text()) if info_file.is_file() else {}
        enc = dict(self.info.get("encoding", {}))
        enc.update(encoding or {})  # explicit settings win (e.g. for a folder trained elsewhere)
        if padding_side is not None:
            enc["padding_side"] = padding_side
        self.data_cfg = DataConfig(**enc)
        self.normalize = normalize
        if normalize and (self.info.get("mean") is None or not self.info.get("std")):
            raise RewardError(f"{self.path}: normalize=True needs reward statistics (mean and std > 0) "
                             f"in {REWARD_STATS_FILE}; train with stats.source set, or normalize=False")
        mcfg = ModelConfig(name_or_path=str(path), dtype=dtype)
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
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: list[Any]) -> torch.Tensor:
        """Scores from the text; row ``columns`` are not model inputs and are ignored."""
        from rlhf.data.collate import PadCollator
        from rlhf.models.load import score_last_token

        self._check_inputs(prompts, completions)
        seqs = self.encode(prompts, completions)
        collate = PadCollator(self.tokenizer.pad_token_id, self.data_cfg.padding_side)
        from rlhf.console import pass_progress

        out = []
        # A pass of many batches (scoring a file, best-of-n) shows rate and ETA; a PPO step's few do not.
        with pass_progress(f"scoring with {self.name}", len(seqs), enabled=len(seqs) > 8 * self.batch_size) as bar:
            for k in range(0, len(seqs), self.batch_size):
                b = {n: t.to(self.device) for n, t in collate(seqs[k:k + self.batch_size]).items()}
                out.append(score_last_token(self.model, b["input_ids"], b["attention_mask"],
                                            b["position_ids"]).float().cpu())
                bar.update(len(seqs[k:k + self.batch_size]))
        scores = torch.cat(out) if out else torch.zeros(0)  # (N,)
        _check_finite_rewards(self.name, scores, prompts, completions)
        if self.normalize:
            assert self.mean is not None and self.std is not None  # checked in __init__
            scores = (scores - self.mean) / self.std
        return scores


class CallableReward(RewardSource):
    """A Python function ``fn(prompts, completions, **columns) -> list[float]`` (e.g. a
    verifiable reward checking ``answer``, a column of the prompt's row).

    The row columns passed are those ``fn`` names as parameters, or all with ``**kwargs``
    (:func:`accepted_columns`, inspected once). Its output is checked: one finite number per
    completion, else a RewardError naming the function and the index.
    """

    def __init__(self, fn: Callable | str, *, timeout: float | None = DEFAULT_TIMEOUT_S):
        self.name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
        self.fn = import_callable(fn) if isinstance(fn, str) else fn
        self.accepts = accepted_columns(self.fn)
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                    or not timeout >= 0):
            raise RewardError(f"reward function {self.name}: timeout must be a number of seconds >= 0 "
                              f"(0: none), got {timeout!r}")
        self.timeout = float(timeout or 0)

    def _call(self, prompts: list[Any], completions: list[Any], kwargs: dict[str, list[Any]]) -> Any:
        """``fn(...)``, any exception it raises turned into a RewardError naming the function and
        the line; with a timeout, run in a daemon thread so that a function that never returns
        stops the run with a message (the thread is left behind; the process exits)."""
        if not self.timeout:
            try:
                return self.fn(prompts, completions, **kwargs)
            except Exception as e:
                raise RewardError(f"reward function {self.name} raised {_one_line(e)}") from e
        import threading

        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = self.fn(prompts, completions, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = e

        worker = threading.Thread(target=target, name=f"reward:{self.name}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            raise RewardError(f"reward function {self.name} did not return within {self.timeout:g} s "
                              f"(for {len(completions)} completions); fix it, or raise the limit with "
                              f"{{type: callable, function: {self.name}, timeout: SECONDS}} (0: no limit)")
        if "error" in box:
            err = box["error"]
            if not isinstance(err, Exception):
                raise err
            raise RewardError(f"reward function {self.name} raised {_one_line(err)}") from err
        return box.get("value")

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: list[Any]) -> torch.Tensor:
        self._check_inputs(prompts, completions)
        for k, v in columns.items():
            if len(v) != len(prompts):
                raise RewardError(f"reward function {self.name}: column {k!r} has {len(v)} values for "
                                  f"{len(prompts)} prompts")
        kwargs = columns if self.accepts is None else {k: v for k, v in columns.items() if k in self.accepts}
        out = self._call(list(prompts), list(completions), kwargs)
        if torch.is_tensor(out):
            out = out.reshape(-1).tolist() if out.dim() <= 1 else out
        if out is None or isinstance(out, (str, bytes, dict)) or not hasattr(out, "__len__"):
            raise RewardError(f"reward function {self.name}: returned {_short(out)}; expected a list of "
                              f"one number per completion ({len(prompts)} here)")
        values = list(out)
        if len(values) != len(prompts):
            raise RewardError(f"reward function {self.name}: returned {len(values)} values for "
                              f"{len(prompts)} completions (expected one number each)")
        for i, v in enumerate(values):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) or (torch.is_tensor(v) and v.numel() == 1)
            if not ok or not math.isfinite(float(v)):
                raise RewardError(f"reward function {self.name}: value {i} is {_short(v)}; expected a finite "
                                  f"number (completion {str(completions[i])[:60]!r})")
        return torch.tensor([float(v) for v in values], dtype=torch.float32)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


class WeightedSum(RewardSource):
    """Σ_i w_i · r_i(prompt, completion) over several sources."""

    def __init__(self, sources: Sequence[RewardSource], weights: Sequence[float] | None = None):
        if not sources:
            raise RewardError("a sum of reward sources needs at least one source")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if not all(math.isfinite(w) for w in weights):
            raise RewardError(f"a sum of reward sources: weights must be finite numbers (got {weights})")
        if len(weights) != len(sources):
            raise RewardError(f"a sum of reward sources: {len(sources)} sources but {len(weights)} weights")
        self.sources, self.weights = list(sources), weights
        self.name = "sum(" + ", ".join(f"{w}*{s.name}" for s, w in zip(self.sources, weights)) + ")"

    def modules(self) -> list[torch.nn.Module]:
        return [m for s in self.sources for m in s.modules()]

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: list[Any]) -> torch.Tensor:
        self._check_inputs(prompts, completions)
        total = torch.zeros(len(prompts), dtype=torch.float32)
        for s, w in zip(self.sources, self.weights):
            total += w * call_reward(s, prompts, completions, **columns)
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
            raise RewardError(f"safety threshold is a probability in [0, 1] (got {threshold})")
        if scale not in ("sigmoid", "probability"):
            raise RewardError(f"scale must be 'sigmoid' or 'probability' (got {scale!r})")
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
            raise RewardError(f"{which} scores must be probabilities in [0, 1] with scale='probability' "
                             f"(got min {float(scores.min()):.4g}, max {float(scores.max()):.4g})")
        return scores

    def gate(self, prompts: Sequence[Any], completions: Sequence[Any],
             **columns: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(R_c (N,), use_safety (N,) bool): the gated probability and which score was taken."""
        self._check_inputs(prompts, completions)
        p_h = self._prob(call_reward(self.helpfulness, prompts, completions, **columns), "helpfulness")  # (N,)
        p_s = self._prob(call_reward(self.safety, prompts, completions, **columns), "safety")  # (N,)
        use_safety = p_s < self.threshold
        if self.unsafe_prompts is not None:
            flags = list(self.unsafe_prompts(list(prompts)))
            if len(flags) != len(prompts):
                raise RewardError(f"unsafe-prompt flagger returned {len(flags)} flags for {len(prompts)} prompts")
            use_safety |= torch.tensor([bool(f) for f in flags])
        return torch.where(use_safety, p_s, p_h), use_safety

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: list[Any]) -> torch.Tensor:
        r_c, _ = self.gate(prompts, completions, **columns)
        if not self.whiten_logit:
            return r_c
        p = r_c.double().clamp(self.eps, 1 - self.eps)
        logit = torch.log(p) - torch.log1p(-p)  # (N,)
        return masked_whiten(logit, torch.ones_like(logit, dtype=torch.bool)).float()


# --------------------------------------------------------------------------- factory


def _read_spec_file(path: Path) -> Any:
    if path.suffix in (".yaml", ".yml"):
        from rlhf.config import read_yaml
        return read_yaml(path, lambda m: RewardError(f"reward spec {m}"))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RewardError(f"reward spec {path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise RewardError(f"reward spec {path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None


def load_reward_source(spec: str | dict | RewardSource, *, device: str | None = None) -> RewardSource:
    """Build a :class:`RewardSource` from a spec (see the module doc). A spec that cannot be
    used raises :class:`RewardError` (one line)."""
    try:
        return _load_reward_source(spec, device=device)
    except ValueError as e:
        if type(e) is ValueError:  # subclasses (RewardError, HubError, DataError) say enough already
            raise RewardError(str(e)) from e
        raise


def _load_reward_source(spec: str | dict | RewardSource, *, device: str | None = None) -> RewardSource:
    if isinstance(spec, RewardSource):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        from rlhf.models.load import is_hub_id

        s = str(spec)
        p = Path(os.path.expanduser(s))
        if p.is_dir() or (p.is_file() and p.suffix.lower() == ".gguf"):  # .gguf: rlhf.models.gguf
            return ModelReward(p, device=device)
        if p.is_file() and p.suffix in (".yaml", ".yml", ".json"):
            return _load_reward_source(_read_spec_file(p), device=device)
        if s.count(":") == 1 and ("/" not in s or _is_file_ref(s.split(":")[0])):
            return CallableReward(s)  # package.module:function or path/to/file.py:function
        if is_hub_id(s):
            return ModelReward(s, device=device)  # fails in one line when the Hub is unreachable
        raise RewardError(f"reward source {s!r}: expected a reward-model folder or hub id, a .yaml/.json "
                         "spec file, 'package.module:function' or 'path/to/file.py:function' (no such "
                         "folder or file)")
    if not isinstance(spec, dict):
        raise RewardError(f"reward source: expected a string or a mapping (got {type(spec).__name__})")
    spec = dict(spec)
    kind = spec.pop("type", None)
    try:
        if kind == "model":
            return ModelReward(spec.pop("path"), device=spec.pop("device", device), **spec)
        if kind == "callable":
            # kwargs bind data the function needs besides (prompts, completions), e.g. the
            # reference answers of a verifiable task (rlhf/verifiers.py).
            fn, kwargs = spec.pop("function"), spec.pop("kwargs", None) or {}
            timeout = spec.pop("timeout", DEFAULT_TIMEOUT_S)
            if spec:
                raise RewardError(f"reward source of type 'callable': unknown key(s) {sorted(spec)}; "
                                  "expected function, kwargs, timeout")
            if kwargs:
                import functools
                name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
                bound = functools.partial(import_callable(fn) if isinstance(fn, str) else fn, **kwargs)
                source = CallableReward(bound, timeout=timeout)
                source.name = name
                return source
            return CallableReward(fn, timeout=timeout)
        if kind == "sum":
            return WeightedSum([load_reward_source(s, device=device) for s in spec.pop("sources")],
                               spec.pop("weights", None))
        if kind == "safety_gated":
            return SafetyGated(load_reward_source(spec.pop("helpfulness"), device=device),
                               load_reward_source(spec.pop("safety"), device=device), **spec)
    except KeyError as e:
        raise RewardError(f"reward source of type {kind!r}: missing key {e.args[0]!r}") from None
    except TypeError as e:
        raise RewardError(f"reward source of type {kind!r}: {e}") from None
    raise RewardError(f"reward source: unknown type {kind!r}; expected model, callable, sum or safety_gated")
