"""The Python API: every training stage as a function, for notebooks and scripts.

    import rlhf
    result = rlhf.sft(model="Qwen/Qwen2.5-0.5B-Instruct", data=[{"prompt": ..., "completion": ...}, ...],
                      output_dir="runs/my-sft", train={"lr": 1e-5, "epochs": 1})
    result.model, result.tokenizer, result.summary, result.output_dir

Each function is the command line's stage, run in this process: ``rlhf.sft``, ``rlhf.rm``,
``rlhf.dpo``, ``rlhf.ppo``, ``rlhf.best_of_n``, ``rlhf.raft``, ``rlhf.rest``,
``rlhf.iterative_dpo``, ``rlhf.constitutional``, ``rlhf.hindsight``. Arguments:

* ``model``: a hub id or folder, or a loaded transformers model (saved into
  ``output_dir/inputs/model`` first, so that the run is the CLI run on that folder);
  ``tokenizer``: the same, for the tokenizer (default: the model's).
* ``data`` / ``eval_data``: a path or hub id, a list of dicts, or a ``datasets.Dataset``
  (in-memory data is written to ``output_dir/inputs/*.jsonl``).
* ``reward`` (stages that have one): a spec string as on the command line, a reward-model
  folder, or a Python callable ``fn(prompts, completions) -> list[float]`` (usable in this
  process only: the saved config.yaml names it, but another process cannot import it).
* ``config``: the stage's typed config (``rlhf.recipes.sft.SFTConfig(...)``), a dict, or a
  YAML path; ``recipe``: a shipped recipe name instead (``rlhf recipes`` lists them).
* any other keyword: an override on top, as on the command line, either dotted
  (``**{"train.lr": 1e-5}``) or as a nested dict (``train={"lr": 1e-5}``), or a top-level
  field (``beta=0.1``, ``output_dir="runs/x"``).

Returns a :class:`Result`: the trained model loaded from ``final/`` (a causal LM; a scalar-head
model for ``rm``), its tokenizer, the run's summary dict and the output folder. Stages that
train no model (best-of-n) return ``model=None``. Errors are the CLI's: ``ConfigError`` before
any work, ``DataError`` naming the file, row and field.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

__all__ = ["Result", "run", "STAGE_FUNCTIONS"]

# Stages whose config has a top-level ``reward`` field (a reward source spec).
_REWARD_STAGES = {"ppo", "best-of-n", "raft", "rest", "iterative-dpo"}
# Stages that write no model into final/.
_NO_MODEL = {"best-of-n"}


@dataclass
class Result:
    """What a stage returns in Python: the trained model (in memory) and where the run lives."""

    model: Any
    tokenizer: Any
    summary: dict[str, Any]
    output_dir: Path


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise TypeError(f"{dotted}: {k} is not a section")
    d[keys[-1]] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _save_rows(data: Any, path: Path) -> str:
    """A list of dicts or a datasets.Dataset -> jsonl at ``path``; a path or id is kept as is."""
    if isinstance(data, (str, Path)):
        return str(data)
    from rlhf.train.run import write_jsonl_atomic

    if hasattr(data, "to_list") and hasattr(data, "column_names"):  # datasets.Dataset
        rows = data.to_list()
    elif isinstance(data, (list, tuple)):
        rows = list(data)
    else:
        raise TypeError(f"data: expected a path, a hub id, a list of dicts or a datasets.Dataset "
                        f"(got {type(data).__name__})")
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise TypeError(f"data: row {i} is a {type(r).__name__}, expected a dict")
    return str(write_jsonl_atomic(path, rows))


def _save_model(obj: Any, tokenizer: Any, folder: Path) -> str:
    """A loaded model (and tokenizer object) -> a checkpoint folder; a string is kept as is."""
    if isinstance(obj, (str, Path)):
        return str(obj)
    if not hasattr(obj, "save_pretrained"):
        raise TypeError(f"model: expected a hub id, a folder or a transformers model (got {type(obj).__name__})")
    from rlhf.models.load import unwrap_model

    folder.mkdir(parents=True, exist_ok=True)
    unwrap_model(obj).save_pretrained(folder)
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        tokenizer.save_pretrained(folder)
    return str(folder)


def _register_callable(fn: Callable) -> str:
    """A Python reward function -> ``rlhf.api:_reward_<n>``, importable in this process."""
    module = sys.modules[__name__]
    name = f"_reward_{id(fn):x}"
    setattr(module, name, fn)
    return f"{__name__}:{name}"


def _load_result(stage: str, out: Path, summary: dict[str, Any]) -> Result:
    final = out / "final"
    if stage in _NO_MODEL or not final.is_dir():
        return Result(None, None, summary, out)
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_scalar_model, load_tokenizer

    mcfg = ModelConfig(name_or_path=str(final))
    tok = load_tokenizer(mcfg)
    if stage == "rm":
        model = load_scalar_model(mcfg, tokenizer=tok, for_training=False, init_head=False)
    else:
        model = load_causal_lm(mcfg, for_training=False)
    return Result(model, tok, summary, out)


def run(stage: str, model: Any = None, data: Any = None, *, tokenizer: Any = None, eval_data: Any = None,
        reward: Any = None, config: Any = None, recipe: str | None = None, **overrides: Any) -> Result:
    """Run the training stage ``stage`` (a CLI stage name) in this process; see the module doc."""
    import yaml

    from rlhf.config import ConfigError, load_config, to_dict
    from rlhf.stages import STAGES

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    st = STAGES[stage]
    cls = st.load(st.config)
    if config is not None and recipe is not None:
        raise ConfigError("config", "give a config or a recipe, not both")
    if recipe is not None:
        from rlhf.configs import recipe_path
        config = recipe_path(stage, recipe)
    if config is None:
        base: dict[str, Any] = {}
    elif is_dataclass(config):
        if not isinstance(config, cls):
            raise ConfigError("config", f"expected a {cls.__name__} for {stage} (got {type(config).__name__})")
        base = to_dict(config)
    elif isinstance(config, dict):
        base = dict(config)
    else:
        base = yaml.safe_load(Path(config).read_text()) or {}

    over: dict[str, Any] = {}
    for key, value in overrides.items():
        if "." in key:
            _set(over, key, value)
        else:
            over[key] = value
    body = _merge(base, over)
    out = Path(body.get("output_dir") or cls.__dataclass_fields__["output_dir"].default)
    from rlhf.train.run import RunDirError, is_finished
    if is_finished(out):
        raise RunDirError(f"{out} already holds a finished run (summary.json exists); choose another output_dir")
    inputs = out / "inputs"
    if model is not None:
        _set(body, "model.name_or_path", _save_model(model, tokenizer, inputs / "model"))
    # A tokenizer object given with a model object was saved beside the model above.
    tok_separate = isinstance(tokenizer, (str, Path)) or model is None or isinstance(model, (str, Path))
    if tokenizer is not None and tok_separate:
        tok_path = str(tokenizer) if isinstance(tokenizer, (str, Path)) else _save_model_tokenizer(tokenizer, inputs)
        _set(body, "model.tokenizer", tok_path)
    if data is not None:
        _set(body, "data.train", _save_rows(data, inputs / "train.jsonl"))
    if eval_data is not None:
        _set(body, "data.eval", _save_rows(eval_data, inputs / "eval.jsonl"))
    if reward is not None:
        if stage not in _REWARD_STAGES:
            raise ConfigError("reward", f"the {stage} stage takes no reward")
        if callable(reward) and not hasattr(reward, "save_pretrained"):
            body["reward"] = _register_callable(reward)
        else:
            body["reward"] = _save_model(reward, None, inputs / "reward") if not isinstance(reward, str) else reward
    body["output_dir"] = str(out)
    cfg = load_config(cls, None, [], base=body)
    from rlhf.console import quiet_third_party
    quiet_third_party()
    summary = st.load(st.run)(cfg)
    return _load_result(stage, out, dict(summary or {}))


def _save_model_tokenizer(tokenizer: Any, inputs: Path) -> str:
    folder = inputs / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _stage_function(stage: str) -> Callable[..., Result]:
    def fn(model: Any = None, data: Any = None, **kwargs: Any) -> Result:
        return run(stage, model, data, **kwargs)
    fn.__name__ = fn.__qualname__ = stage.replace("-", "_")
    fn.__doc__ = (f"``rlhf {stage}`` in this process: ``rlhf.{fn.__name__}(model, data, **overrides)``"
                  f" -> Result(model, tokenizer, summary, output_dir). See :mod:`rlhf.api`.")
    return fn


def _stage_names() -> list[str]:
    from rlhf.stages import STAGES
    return list(STAGES)


STAGE_FUNCTIONS: dict[str, Callable[..., Result]] = {s.replace("-", "_"): _stage_function(s) for s in _stage_names()}
