"""What keeps garbage out of a run folder: non-finite numbers, silently changed resumes, paths.

* :class:`NonFiniteError` and :func:`check_finite` (rlhf/train/finite.py): a tensor (weights before they are published,
  rewards as a source returns them) holding NaN or inf is an error that names the tensor and
  the first bad position, never something written to disk.
* :data:`SAFE_TO_CHANGE`, :func:`config_changes` and :func:`check_resume_config`: the resume
  fingerprint. A resumed run compares its resolved config with the run folder's ``config.yaml``;
  a changed key that alters the computation is refused with a list ``key: old -> new``; the keys
  declared here (how long to run, logging, checkpoint frequency) may change;
  ``train.resume_changed_config=true`` accepts the rest, and every resume with changes is
  recorded in ``resume_overrides.jsonl``.
* :func:`check_path_component`: a user string (a pipeline stage name) that becomes one folder
  name: no separator, no ``..``, not absolute, so it cannot escape its parent folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from rlhf.train.finite import NonFiniteError, check_finite, check_finite_tensors

__all__ = ["NonFiniteError", "check_finite", "check_finite_tensors", "SAFE_TO_CHANGE", "config_changes",
           "check_resume_config", "override_requested", "check_path_component", "OVERRIDES_FILE"]


# --------------------------------------------------------------------------- resume fingerprint

# Keys that may differ between a run folder's config.yaml and the config that resumes it: they
# change how long the run goes, what is logged and how often state is saved, never what a step
# computes. A key matches when it equals an entry or ends with "." + entry (so "train.max_steps"
# also covers a rounds recipe's "sft.train.max_steps"). train.max_steps moves the end of the run
# (and so the decay horizon of a linear/cosine schedule from the resume point on): extending a
# run is what it is for.
SAFE_TO_CHANGE: tuple[str, ...] = (
    "output_dir", "progress", "train.max_steps", "train.log_every", "train.eval_every",
    "train.save_every", "train.save_total_limit", "train.save_model_in_checkpoints",
    "train.report_to", "train.resume_from", "train.resume_changed_config", "train.max_skipped_steps",
    "num_log_samples", "sample_every",
)

OVERRIDES_FILE = "resume_overrides.jsonl"
_ABSENT = "<absent>"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def is_safe_key(key: str) -> bool:
    return any(key == s or key.endswith("." + s) for s in SAFE_TO_CHANGE)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs, sorted by key."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def override_requested(cfg: Any) -> bool:
    """True when any training section of ``cfg`` sets ``resume_changed_config`` (a stage's
    ``train``, or a rounds recipe's ``sft.train`` / ``dpo.train``)."""
    if getattr(cfg, "resume_changed_config", False) is True:
        return True
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return any(override_requested(getattr(cfg, f.name)) for f in dataclasses.fields(cfg))
    return False


def _fmt(v: Any) -> str:
    return _ABSENT if v == _ABSENT else json.dumps(v, default=str)


def check_resume_config(run_dir: str | Path, old_config: str | Path, cfg: Any, stage: str,
                        resumed_from: str | Path | None = None) -> list[tuple[str, Any, Any]]:
    """Compare the resolved ``cfg`` with ``old_config`` (the run's config.yaml) before resuming.

    Returns the changes. Changes outside :data:`SAFE_TO_CHANGE` raise
    :class:`~rlhf.train.run.RunDirError` listing ``key: old -> new``, unless ``cfg`` requests the
    override (:func:`override_requested`). Any change that is let through is appended to
    ``run_dir/resume_overrides.jsonl`` (so config.yaml, rewritten with the new values, is never
    the only record of what the first part of the run used).
    """
    import yaml

    from rlhf.config import to_yaml
    from rlhf.train.run import RunDirError, append_jsonl_durable

    old_config = Path(old_config)
    if not old_config.is_file():
        return []
    old = yaml.safe_load(old_config.read_text()) or {}
    new = yaml.safe_load(to_yaml(cfg)) or {}
    changes = config_changes(old, new)
    if not changes:
        return []
    unsafe = [c for c in changes if not is_safe_key(c[0])]
    override = override_requested(cfg)
    if unsafe and not override:
        listing = "; ".join(f"{k}: {_fmt(o)} -> {_fmt(n)}" for k, o, n in unsafe)
        raise RunDirError(
            f"{run_dir} holds an unfinished {stage} run whose settings differ from {old_config}: {listing}. "
            f"Resuming would mix two runs (the restored optimizer, schedule and data state follow the old "
            f"settings). Restore those settings, use another output_dir, or accept the change with "
            f"train.resume_changed_config=true (recorded in {OVERRIDES_FILE}). Keys that may always change: "
            f"{', '.join(SAFE_TO_CHANGE)}.")
    append_jsonl_durable(Path(run_dir) / OVERRIDES_FILE, {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stage": stage, "pid": os.getpid(),
        "resumed_from": None if resumed_from is None else str(resumed_from),
        "override": bool(unsafe),
        "changes": [{"key": k, "old": o, "new": n, "safe": is_safe_key(k)} for k, o, n in changes]})
    return changes


# --------------------------------------------------------------------------- paths


def check_path_component(value: Any, what: str) -> str:
    """``value`` as one folder or file name inside a parent folder, else ValueError naming
    ``what``: a non-empty string without path separators, NUL, ``.`` or ``..``, not absolute
    (on any OS: ``/``, ``\\`` and a drive ``C:`` are all refused), not starting with ``~``."""
    s = value if isinstance(value, str) else str(value)
    problems = []
    if not s or not s.strip():
        problems.append("it is empty")
    if "/" in s or "\\" in s or (os.sep in s) or (os.altsep and os.altsep in s):
        problems.append("it holds a path separator")
    if s in (".", ".."):
        problems.append(f"{s!r} names a folder, not a new name")
    if "\0" in s:
        problems.append("it holds a NUL character")
    if s.startswith("~") or (len(s) >= 2 and s[1] == ":"):
        problems.append("it looks like a home folder or drive")
    if problems:
        raise ValueError(f"{what} {s!r} cannot be a folder name ({'; '.join(problems)}): use letters, digits, "
                         f"'-', '_' or '.', without '/', '\\\\' or '..'")
    return s
