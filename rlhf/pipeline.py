"""``rlhf pipeline FILE.yaml``: several stages in order, each reading earlier stages' outputs.

    output_dir: runs/my-rlhf
    stages:
      - {name: sft, type: sft, config: {model: {name_or_path: my-org/base}, data: {train: sft.jsonl}}}
      - {name: rm,  type: rm,  config: {model: {name_or_path: "${sft}/final"}, data: {train: prefs.jsonl}}}
      - {name: ppo, type: ppo, config: {model: {name_or_path: "${sft}/final"}, reward: "${rm}/final",
                                        data: {train: prompts.jsonl}}}
      - {name: eval, type: eval, args: {reference: "${sft}/final", policies: {ppo: "${ppo}/final"},
                                        prompts: prompts.jsonl, rewards: {proxy: "${rm}/final"}}}
      - {name: report, type: report}

* ``${name}`` anywhere in a string is the output folder of the earlier stage ``name``
  (``output_dir/name``); ``${output_dir}`` is the pipeline's folder.
* Training stages (``sft``, ``rm``, ``dpo``, ``ppo``, ``best-of-n``) take ``config:``, exactly
  what the stage's own YAML file would hold (``output_dir`` is set by the pipeline); every
  stage config is validated before the first stage runs, so a typo in the last stage fails in
  seconds, not after an hour.
* Other stages take ``args:``: ``tiny-model`` (a tiny random-weight model and tokenizer trained
  on a text file), ``label`` (sample pairs from a policy and label them with a reward source,
  optionally through Bradley–Terry noise: rlhf/label.py), ``eval`` (rlhf/eval), ``report``,
  and ``call`` (any ``package.module:function(output_dir=..., **args)`` returning a dict).
* A stage whose output is finished (``summary.json``) is skipped, so a killed pipeline resumes
  where it stopped (a training stage resumes from its last checkpoint). Non-training stages
  write into a temporary folder that is renamed into place when complete.
* ``pipeline.json`` in the output folder records each stage's status and time.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError
from rlhf.train.guards import check_path_component
from rlhf.train.run import (
    acquire_run_lock,
    atomic_dir,
    check_pipeline_folder,
    is_finished,
    release_run_lock,
    remove_debris,
    write_json_atomic,
)

__all__ = ["PipelineError", "load_pipeline", "run_pipeline", "main", "STAGE_TYPES"]

# Any stage name the path check allows may be referenced, dots included (e.g. dpo-beta0.1).
_REF = re.compile(r"\$\{([A-Za-z0-9_.\-]+)\}")


class PipelineError(ValueError):
    """The pipeline file is wrong; the message names the file, the stage and the field."""


@dataclass
class StageSpec:
    name: str
    type: str
    output_dir: Path
    config: Any = None  # a validated stage config (training stages)
    args: dict[str, Any] | None = None


def _training_stages() -> dict[str, Any]:
    from rlhf.stages import STAGES
    return STAGES


def _resolve(value: Any, dirs: dict[str, Path], where: str) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            key = m.group(1)
            if key not in dirs:
                raise PipelineError(f"{where}: ${{{key}}} names no earlier stage (known: {', '.join(dirs)})")
            return str(dirs[key])
        return _REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _resolve(v, dirs, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, dirs, where) for v in value]
    return value


def load_pipeline(spec: dict[str, Any] | str | Path, output_dir: str | Path | None = None
                  ) -> tuple[Path, list[StageSpec]]:
    """Read and check a pipeline (a YAML file or a dict). Returns (output_dir, stages)."""
    from rlhf.config import load_config, read_yaml

    source = "<pipeline>"
    if not isinstance(spec, dict):
        source = str(spec)
        path = Path(spec)
        if not path.is_file():
            raise PipelineError(f"{path}: no such pipeline file")
        spec = read_yaml(path, PipelineError) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise PipelineError(f"{source}: expected a mapping with a non-empty 'stages' list")
    unknown = set(spec) - {"output_dir", "stages", "description"}
    if unknown:
        raise PipelineError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                            f"expected output_dir, stages, description")
    out = Path(output_dir or spec.get("output_dir") or "runs/pipeline")
    dirs: dict[str, Path] = {"output_dir": out}
    stages: list[StageSpec] = []
    training = _training_stages()
    for i, raw in enumerate(spec["stages"], 1):
        where = f"{source}: stages[{i}]"
        if not isinstance(raw, dict) or "name" not in raw or "type" not in raw:
            raise PipelineError(f"{where}: expected a mapping with 'name' and 'type'")
        name, kind = str(raw["name"]), str(raw["type"])
        where = f"{source}: stage {name!r}"
        try:  # the name becomes output_dir/<name>: it must stay inside output_dir
            check_path_component(name, "the stage name")
        except ValueError as e:
            raise PipelineError(f"{source}: stages[{i}]: name: {e}") from None
        if name in dirs:
            raise PipelineError(f"{where}: the name is used twice (or is reserved)")
        extra = set(raw) - {"name", "type", "config", "args"}
        if extra:
            raise PipelineError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; expected config or args")
        stage_dir = out / name
        if kind in training:
            body = _resolve(raw.get("config") or {}, dirs, where)
            if not isinstance(body, dict):
                raise PipelineError(f"{where}: config: expected a mapping")
            body = {**body, "output_dir": str(stage_dir)}
            cls = training[kind].load(training[kind].config)
            try:
                cfg = load_config(cls, None, [], base=body)
            except ConfigError as e:
                raise PipelineError(f"{where}: config.{e}") from None
            stages.append(StageSpec(name, kind, stage_dir, config=cfg))
        elif kind in STAGE_TYPES:
            args = _resolve(raw.get("args") or {}, dirs, where)
            if not isinstance(args, dict):
                raise PipelineError(f"{where}: args: expected a mapping")
            missing = [k for k in REQUIRED_ARGS.get(kind, ()) if k not in args]
            if missing:
                raise PipelineError(f"{where}: args.{missing[0]} is required for a {kind} stage "
                                    f"(needs {', '.join(REQUIRED_ARGS[kind])})")
            stages.append(StageSpec(name, kind, stage_dir, args=args))
        else:
            raise PipelineError(f"{where}: unknown type {kind!r}; expected one of "
                                f"{', '.join(list(training) + list(STAGE_TYPES))}")
        dirs[name] = stage_dir
    return out, stages


# --------------------------------------------------------------------------- non-training stages


def _tiny_model(out: Path, args: dict[str, Any]) -> dict[str, Any]:
    from rlhf.models.tiny import make_tiny_checkpoint, read_texts
    args = dict(args)
    # Each row's prompt and completion as one text, so the tokenizer learns merges across them.
    texts = read_texts(args.pop("texts"), args.pop("fields", ["prompt", "completion"]))
    arch = args.pop("arch", "llama")
    make_tiny_checkpoint(out, arch, texts, **args)
    return {"arch": arch, "texts": len(texts)}


def _label(out: Path, args: dict[str, Any]) -> dict[str, Any]:
    from rlhf.label import label_stage
    return label_stage(out, **args)


def _eval(out: Path, args: dict[str, Any]) -> dict[str, Any]:
    from rlhf.eval.stage import eval_stage
    return eval_stage(out, **args)


def _report(out: Path, args: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from rlhf.report import write_report
    path = write_report(run_dir, out_dir=out, **args)
    return {"report": str(Path(path).name)}


def _call(out: Path, args: dict[str, Any]) -> dict[str, Any]:
    from rlhf.rewards import import_callable
    args = dict(args)
    fn = import_callable(args.pop("function"), what="pipeline stage function")
    result = fn(output_dir=out, **args)
    return dict(result or {})


# Checked when the file is read, so a missing argument fails before the first stage runs.
REQUIRED_ARGS: dict[str, tuple[str, ...]] = {
    "tiny-model": ("texts",), "label": ("policy", "prompts", "judge"),
    "eval": ("reference", "policies", "prompts", "rewards"), "call": ("function",),
}

STAGE_TYPES: dict[str, Callable[..., dict[str, Any]]] = {
    "tiny-model": _tiny_model, "label": _label, "eval": _eval, "report": _report, "call": _call,
}


# --------------------------------------------------------------------------- running


def run_pipeline(spec: dict[str, Any] | str | Path, output_dir: str | Path | None = None,
                 only: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage not yet finished, in order. Returns the pipeline status dict."""
    out, stages = load_pipeline(spec, output_dir)
    if only is not None:
        from rlhf.config import did_you_mean
        names = [s.name for s in stages]
        for name in only:
            if name not in names:
                raise PipelineError(f"--only: no stage named {name!r}{did_you_mean(name, names)} "
                                    f"(stages: {', '.join(names)})")
    check_pipeline_folder(out, [s.output_dir.name for s in stages])  # before anything is deleted or written
    out.mkdir(parents=True, exist_ok=True)
    took = acquire_run_lock(out)  # one pipeline per folder (each training stage also locks its own)
    try:
        return _run_stages(out, stages, only, log)
    finally:
        if took:  # the folder is free again once the pipeline returns (a caller's own lock is kept)
            release_run_lock(out)


def _run_stages(out: Path, stages: list[StageSpec], only: list[str] | None, log: Callable[[str], None]
                ) -> dict[str, Any]:
    remove_debris(out)  # a killed non-training stage's <name>.tmp-<pid>/, a torn pipeline.json write
    status_file = out / "pipeline.json"
    status: dict[str, Any] = {
        "stages": [{"name": s.name, "type": s.type, "output_dir": str(s.output_dir), "status": "pending"}
                   for s in stages]}
    t_all = time.time()
    for k, (st, rec) in enumerate(zip(stages, status["stages"]), 1):
        if only and st.name not in only:
            rec["status"] = "not selected"
            continue
        if is_finished(st.output_dir):
            rec["status"] = "done (skipped: finished earlier)"
            log(f"[pipeline] {k}/{len(stages)} {st.name} ({st.type}): finished earlier, skipped")
            write_json_atomic(status_file, status)
            continue
        log(f"[pipeline] {k}/{len(stages)} {st.name} ({st.type}) -> {st.output_dir}")
        t0 = time.time()
        rec["status"] = "running"
        write_json_atomic(status_file, status)
        if st.config is not None:
            training = _training_stages()
            training[st.type].load(training[st.type].run)(st.config)
        else:
            fn = STAGE_TYPES[st.type]
            with atomic_dir(st.output_dir) as tmp:
                summary = fn(tmp, st.args, out) if st.type == "report" else fn(tmp, st.args)
                write_json_atomic(tmp / "summary.json", {"stage": st.type, **summary,
                                                         "wall_time_s": round(time.time() - t0, 2)})
        rec["status"] = "done"
        rec["wall_time_s"] = round(time.time() - t0, 2)
        write_json_atomic(status_file, status)
    status["wall_time_s"] = round(time.time() - t_all, 2)
    write_json_atomic(status_file, status)
    log(f"[pipeline] {_outcome([r['status'] for r in status['stages']], status['wall_time_s'])}: {out}")
    return status


def _outcome(statuses: list[str], seconds: float) -> str:
    """The pipeline's last line: what ran and what did not (``--only`` or finished earlier)."""
    ran = statuses.count("done")
    earlier = sum(s.startswith("done (skipped") for s in statuses)
    left = statuses.count("not selected")
    if ran == len(statuses):
        return f"all {ran} stage{'s' if ran != 1 else ''} ran, in {seconds:.0f} s"
    parts = [f"{ran} stage{'s' if ran != 1 else ''} ran, in {seconds:.0f} s"]
    if earlier:
        parts.append(f"{earlier} finished earlier (skipped)")
    if left:
        parts.append(f"{left} not selected by --only")
    return "; ".join(parts)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlhf pipeline", description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?", help="pipeline YAML file")
    p.add_argument("--recipe", help="a pipeline shipped with rlhf instead of a file (rlhf recipes pipeline lists them)")
    p.add_argument("--output-dir", help="override the file's output_dir")
    p.add_argument("--only", help="comma-separated stage names to run (others are left alone)")
    a = p.parse_args(argv)
    if (a.file is None) == (a.recipe is None):
        p.error("give a pipeline file or --recipe NAME (one of the two)")
    from rlhf.cli import _run_guarded
    try:
        if a.recipe is not None:
            from rlhf.configs import RecipeNotFound, recipe_path
            try:
                a.file = str(recipe_path("pipeline", a.recipe))
            except RecipeNotFound as e:
                raise PipelineError(str(e)) from None
        # a stage's own errors (full disk, diverged run, bad data) as one line, like `rlhf <stage>`
        return _run_guarded("pipeline", lambda: run_pipeline(a.file, a.output_dir,
                                                              a.only.split(",") if a.only else None))
    except PipelineError as e:
        print(f"rlhf pipeline: {e}", file=sys.stderr)
        return 2
