"""Generate docs/configuration.md and the stages' --help text from the config dataclasses: ``python -m rlhf.docs``.

Three generated files: docs/configuration.md (the reference page), rlhf/_stage_help.json (what
``rlhf <stage> --help`` prints: it reads the text from there instead of importing the recipe,
whose torch and transformers imports take seconds) and rlhf/_stage_schema.json (what ``rlhf
<stage>`` checks a config against before that import). ``--check`` exits 1 when either differs from
what the classes generate (the test suite runs the same comparison, so a stale file fails CI).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["render", "render_help", "render_schema", "main", "DOC_PATH", "HELP_PATH", "SCHEMA_PATH"]

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
HELP_PATH = Path(__file__).resolve().parent / "_stage_help.json"
SCHEMA_PATH = Path(__file__).resolve().parent / "_stage_schema.json"


def render() -> str:
    from rlhf.config import reference_markdown
    from rlhf.stages import STAGES

    classes = {name: st.load(st.config) for name, st in STAGES.items()}
    return reference_markdown(classes) + "\n"


def render_help() -> str:
    """``{stage: format_help(config class)}`` as JSON text, for ``rlhf <stage> --help``."""
    from rlhf.config import format_help
    from rlhf.stages import STAGES

    return json.dumps({name: format_help(st.load(st.config)) for name, st in STAGES.items()},
                      indent=1, ensure_ascii=False) + "\n"


def render_schema() -> str:
    """``{stage: schema_of(config class)}`` as JSON text: what ``rlhf <stage>`` checks a config
    against before it imports the recipe (rlhf/config.py, "schema")."""
    import dataclasses
    import hashlib
    import inspect

    from rlhf.config import schema_of
    from rlhf.stages import STAGES

    pkg = Path(__file__).resolve().parent
    files: set[Path] = set()

    def collect(cls: type) -> None:  # the modules defining the classes of the tree (and their Literal aliases)
        files.add(Path(inspect.getfile(cls)).resolve())
        for f in dataclasses.fields(cls):
            for tp in _dataclasses_in(cls, f.name):
                collect(tp)

    out: dict[str, object] = {}
    for name, st in STAGES.items():
        cls = st.load(st.config)
        collect(cls)
        out[name] = schema_of(cls)
    out["_sources"] = {str(p.relative_to(pkg)): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(files)}
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False) + "\n"


def _dataclasses_in(cls: type, field: str) -> list[type]:
    import dataclasses
    import typing

    def walk(tp: object) -> list[type]:
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return [tp]
        return [c for a in typing.get_args(tp) for c in walk(a)]

    return walk(typing.get_type_hints(cls)[field])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    files = {DOC_PATH: render(), HELP_PATH: render_help(), SCHEMA_PATH: render_schema()}
    if "--check" in argv:
        stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
        for p in stale:
            print(f"{p} is stale: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    for p, text in files.items():
        p.write_text(text)
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
