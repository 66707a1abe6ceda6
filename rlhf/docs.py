"""Generate docs/configuration.md and the stages' --help text from the config dataclasses: ``python -m rlhf.docs``.

Two generated files: docs/configuration.md (the reference page) and rlhf/_stage_help.json (what
``rlhf <stage> --help`` prints: it reads the text from there instead of importing the recipe,
whose torch and transformers imports take seconds). ``--check`` exits 1 when either differs from
what the classes generate (the test suite runs the same comparison, so a stale file fails CI).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["render", "render_help", "main", "DOC_PATH", "HELP_PATH"]

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
HELP_PATH = Path(__file__).resolve().parent / "_stage_help.json"


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    files = {DOC_PATH: render(), HELP_PATH: render_help()}
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
