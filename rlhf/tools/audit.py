"""``rlhf audit``: list every entry of a config that runs code or trusts remote code.

    rlhf audit ppo my.yaml [key=value ...]        # a stage's config, with overrides
    rlhf audit ppo --recipe tiny
    rlhf audit grpo my.yaml                       # an alias: as `rlhf grpo my.yaml` runs it
    rlhf audit pipeline my_pipeline.yaml          # every stage of a pipeline

The config is parsed exactly as the stage parses it (``yaml.safe_load``, overrides, types), so
YAML escapes such as ``"sidefx.py:\\x6fk"`` or ``"trust_remote_cod\\x65": true``, which a text
search misses, are read as rlhf reads them. Every string value is checked, not only the keys
known to take code, and reward spec files (.yaml/.json) named by the config are opened and
checked the same way. Reported:

* ``package.module:function`` and ``path/to/file.py:function`` references (importing the module
  or loading the file runs its top-level code);
* ``trust_remote_code: true`` anywhere;
* hub ids that follow an unpinned revision (``model.revision`` pins one).

Nothing is imported, loaded or downloaded. Exit 0 when nothing runs code, 3 when something
does (so a script can refuse), 2 for a config that does not parse.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Finding", "audit_tree", "audit_stage", "audit_pipeline", "main"]

# module:function (dotted identifiers) or a path to a .py file (or any path) : function
_MODULE_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")
_FILE_REF = re.compile(r"^(?P<file>[^:\s]+):(?P<fn>[A-Za-z_]\w*)$")
_SPEC_SUFFIXES = (".yaml", ".yml", ".json")
# keys whose values are data, never a reward spec to open
_DATA_KEYS = re.compile(r"(^|\.)(data|output_dir|resume_from)(\.|$)")


@dataclass(frozen=True)
class Finding:
    key: str  # the dotted key (in a spec file: "reward -> spec.yaml: sources[0]")
    kind: str  # "code", "remote code", "unpinned"
    what: str

    def line(self) -> str:
        return f"{self.key}: {self.kind}: {self.what}"


def _code_ref(value: str) -> str | None:
    """What running ``value`` would do, if it is a code reference; else None."""
    v = value.strip()
    if v.count(":") != 1 or "://" in v:
        return None
    mod, fn = v.split(":")
    if mod.endswith(".py") or "/" in mod or os.sep in mod:
        if _FILE_REF.match(v):
            return f"runs the file {mod} (its top-level code), then calls {fn}()"
        return None
    if _MODULE_REF.match(v):
        return f"imports the module {mod} (its top-level code; found on sys.path, which includes the current " \
               f"folder), then calls {fn}()"
    return None


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"))


def audit_tree(tree: Any, prefix: str = "", seen: set[Path] | None = None) -> list[Finding]:
    """Findings in a parsed config (nested dicts/lists of plain values)."""
    from rlhf.models.load import is_hub_id

    seen = set() if seen is None else seen
    out: list[Finding] = []
    if isinstance(tree, dict):
        if "trust_remote_code" in tree and _is_true(tree["trust_remote_code"]):
            out.append(Finding(_join(prefix, "trust_remote_code"), "remote code",
                               "runs the Python files shipped with the model folder or hub repository"))
        name = tree.get("name_or_path")
        if isinstance(name, str) and is_hub_id(name) and not tree.get("revision"):
            out.append(Finding(_join(prefix, "name_or_path"), "unpinned",
                               f"{name!r} is not a local folder here, so it names a hub repository, which "
                               f"follows its latest revision (whoever can push to it changes what runs here); "
                               f"pin it with {_join(prefix, 'revision')}=<commit sha>"))
        for k, v in tree.items():
            if k == "trust_remote_code":
                continue
            out += audit_tree(v, _join(prefix, str(k)), seen)
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out += audit_tree(v, f"{prefix}[{i}]", seen)
    elif isinstance(tree, str):
        what = _code_ref(tree)
        if what is not None:
            out.append(Finding(prefix, "code", f"{tree!r} {what}"))
        elif tree.endswith(_SPEC_SUFFIXES) and not _DATA_KEYS.search(prefix):
            path = Path(os.path.expanduser(tree))
            if path.is_file() and path.resolve() not in seen:
                seen.add(path.resolve())
                out += audit_tree(_read_spec(path), f"{prefix} -> {tree}:", seen)
    return out


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    return f"{prefix} {key}" if prefix.endswith(":") else f"{prefix}.{key}"


def _read_spec(path: Path) -> Any:
    from rlhf.rewards import _read_spec_file
    return _read_spec_file(path)


def audit_stage(stage: str, argv: list[str]) -> list[Finding]:
    """Findings in ``rlhf <stage> [CONFIG | --recipe NAME] [key=value ...]``'s config, parsed as
    the stage parses it."""
    from rlhf.cli import STAGES, _config_source
    from rlhf.config import load_config, to_dict

    s = STAGES[stage]
    path, rest = _config_source(stage, argv)
    cfg = load_config(s.load(s.config), path, rest)
    return audit_tree(to_dict(cfg))


def audit_pipeline(file: str) -> list[Finding]:
    from rlhf.config import to_dict
    from rlhf.pipeline import load_pipeline

    _, stages = load_pipeline(file)
    out: list[Finding] = []
    for st in stages:
        tree = to_dict(st.config) if st.config is not None else (st.args or {})
        out += audit_tree(tree, f"stages.{st.name}")
    return out


def main(argv: list[str]) -> int:
    from rlhf.cli import ALIASES, STAGES

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    what, rest = argv[0], argv[1:]
    ap = argparse.ArgumentParser(prog="rlhf audit")
    from rlhf.config import ConfigError

    try:
        if what == "pipeline":
            if len(rest) != 1:
                ap.error("rlhf audit pipeline FILE.yaml")
            findings = audit_pipeline(rest[0])
            name = rest[0]
        elif what in STAGES:
            findings = audit_stage(what, rest)
            name = f"rlhf {what} {' '.join(rest)}".strip()
        elif what in ALIASES:  # rlhf grpo ... = rlhf ppo ... advantage=grpo, audited as it runs
            stage, setting = ALIASES[what]
            findings = audit_stage(stage, rest + ([setting] if setting else []))
            name = f"rlhf {what} {' '.join(rest)}".strip()
        else:
            print(f"rlhf audit: expected a stage ({', '.join(STAGES)}), an alias ({', '.join(ALIASES)}) or "
                  f"'pipeline', got {what!r}", file=sys.stderr)
            return 2
    except ConfigError as e:
        print(f"rlhf audit: config error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # PipelineError, RewardError (a spec file that does not parse)
        print(f"rlhf audit: error: {e}", file=sys.stderr)
        return 2
    for f in findings:
        print(f.line())
    runs = [f for f in findings if f.kind != "unpinned"]
    if runs:
        print(f"{name}: {len(runs)} entr{'y runs' if len(runs) == 1 else 'ies run'} code "
              f"(read what they point to before running it)")
        return 3
    print(f"{name}: nothing runs code or trusts remote code"
          + (f" ({len(findings)} unpinned hub id(s))" if findings else ""))
    return 0
